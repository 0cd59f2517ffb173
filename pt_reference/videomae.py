"""PyTorch VideoMAE with the official module names, so `state_dict()` keys and shapes are
exactly those of the MCG-NJU checkpoints and `load_state_dict(official, strict=True)` works.

The forward follows the official one step for step (q is scaled before q @ k^T, the qkv
bias is cat(q_bias, 0, v_bias), the sinusoid table is built in float64 and stored in
float32), because the point of this module is to be the thing we compare against.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.nn.utils import parametrize

from converter.variants import LAYER_NORM_EPS, ArchConfig


def sinusoid_table(num_tokens: int, dim: int) -> np.ndarray:
    """Fixed position table [num_tokens, dim], float32: sin on even channels, cos on odd."""
    pos = np.arange(num_tokens, dtype=np.float64)[:, None]
    rate = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
    angles = pos / rate
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return angles.astype(np.float32)


def _layer_norm(dim: int, eps: float = LAYER_NORM_EPS) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ArchConfig, dim: int):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x):  # [B, C, T, H, W] -> [B, N, dim], tokens in (t, h, w) order
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, use_sdpa: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.use_sdpa = use_sdpa
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_dim, layer_scale=False, drop_path=0.0, use_sdpa=False,
                 eps=LAYER_NORM_EPS):
        super().__init__()
        self.norm1 = _layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads, use_sdpa)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(dim, eps)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.GELU)
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), 0.1))
            self.gamma_2 = nn.Parameter(torch.full((dim,), 0.1))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x):
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def _blocks(cfg: ArchConfig, dim, depth, heads, mlp_dim, drop_path_rate=0.0, use_sdpa=False):
    rates = np.linspace(0, drop_path_rate, depth) if depth else []
    return nn.ModuleList(
        Block(dim, heads, mlp_dim, cfg.layer_scale, float(r), use_sdpa, cfg.layer_norm_eps) for r in rates
    )


class VideoMAEClassifier(nn.Module):
    """The official fine-tuned model (`vit_*_patch16_224` of modeling_finetune)."""

    def __init__(self, cfg: ArchConfig, drop_path_rate: float = 0.0, use_sdpa: bool = False):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, dim)
        table = torch.from_numpy(sinusoid_table(cfg.num_patches, dim))[None]
        if cfg.learnable_pos_embed:
            self.pos_embed = nn.Parameter(table.clone())
        else:
            self.register_buffer("pos_table", table, persistent=False)
            self.pos_embed = None
        self.blocks = _blocks(cfg, dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, drop_path_rate, use_sdpa)
        self.norm = nn.Identity() if cfg.use_mean_pooling else _layer_norm(dim, cfg.layer_norm_eps)
        self.fc_norm = _layer_norm(dim, cfg.head_norm_eps) if cfg.use_mean_pooling else None
        self.head = nn.Linear(dim, cfg.num_classes)

    def hidden_states(self, x) -> list[torch.Tensor]:
        """Tokens after the embedding and after each block: where parity is localised."""
        x = self.patch_embed(x)
        pos = self.pos_embed if self.pos_embed is not None else self.pos_table
        x = x + pos.type_as(x)
        states = [x]
        for blk in self.blocks:
            x = blk(x)
            states.append(x)
        return states

    def head_from_tokens(self, x):
        x = self.norm(x)
        x = self.fc_norm(x.mean(1)) if self.fc_norm is not None else x[:, 0]
        return self.head(x)

    def forward(self, x):  # x: [B, C, T, H, W]
        return self.head_from_tokens(self.hidden_states(x)[-1])


class PretrainEncoder(nn.Module):
    def __init__(self, cfg: ArchConfig, use_sdpa=False):
        super().__init__()
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, dim)
        self.register_buffer(
            "pos_table", torch.from_numpy(sinusoid_table(cfg.num_patches, dim))[None], persistent=False
        )
        self.blocks = _blocks(cfg, dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, use_sdpa=use_sdpa)
        self.norm = _layer_norm(dim, cfg.layer_norm_eps)


class PretrainDecoder(nn.Module):
    def __init__(self, cfg: ArchConfig, use_sdpa=False):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.blocks = _blocks(
            cfg, dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_mlp_dim, use_sdpa=use_sdpa
        )
        self.norm = _layer_norm(dim, cfg.head_norm_eps)
        self.head = nn.Linear(dim, cfg.patch_pixels)


class VideoMAEPretrain(nn.Module):
    """The official masked autoencoder (`pretrain_videomae_*_patch16_224` of modeling_pretrain)."""

    def __init__(self, cfg: ArchConfig, use_sdpa: bool = False):
        super().__init__()
        self.cfg = cfg
        self.encoder = PretrainEncoder(cfg, use_sdpa)
        self.decoder = PretrainDecoder(cfg, use_sdpa)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_table",
            torch.from_numpy(sinusoid_table(cfg.num_patches, cfg.decoder_embed_dim))[None],
            persistent=False,
        )

    def encode(self, x, mask) -> list[torch.Tensor]:
        """Visible tokens after the embedding and after each encoder block (the last one normed)."""
        enc = self.encoder
        x = enc.patch_embed(x)
        x = x + enc.pos_table.type_as(x)
        b, _, c = x.shape
        x = x[~mask].reshape(b, -1, c)  # visible tokens, original order kept
        states = [x]
        for blk in enc.blocks:
            x = blk(x)
            states.append(x)
        states.append(enc.norm(x))
        return states

    def decode(self, x_vis, mask) -> list[torch.Tensor]:
        """Decoder tokens after its input assembly and after each block; last entry is the output."""
        x_vis = self.encoder_to_decoder(x_vis)
        b, _, c = x_vis.shape
        pos = self.decoder_pos_table.expand(b, -1, -1).type_as(x_vis)
        pos_vis = pos[~mask].reshape(b, -1, c)
        pos_masked = pos[mask].reshape(b, -1, c)
        x = torch.cat([x_vis + pos_vis, self.mask_token + pos_masked], dim=1)
        states = [x]
        for blk in self.decoder.blocks:
            x = blk(x)
            states.append(x)
        n_masked = pos_masked.shape[1]
        states.append(self.decoder.head(self.decoder.norm(x[:, -n_masked:])))
        return states

    def forward(self, x, mask):  # x: [B, C, T, H, W]; mask: [B, N] bool, True = masked
        return self.decode(self.encode(x, mask)[-1], mask)[-1]


def build_reference(cfg: ArchConfig, **kwargs) -> nn.Module:
    model = VideoMAEPretrain(cfg, **kwargs) if cfg.is_pretrain else VideoMAEClassifier(cfg, **kwargs)
    return model.eval()


def load_reference(cfg: ArchConfig, state_dict: dict, **kwargs) -> nn.Module:
    """`build_reference` + `load_state_dict(state_dict, strict=True)`, holding the given tensors
    themselves as weights: built on the meta device, so no time and memory go into initial
    values that would be overwritten, and nothing is copied (the tensors of a memory-mapped
    checkpoint stay the file's pages)."""
    with torch.device("meta"):
        model = build_reference(cfg, **kwargs)
    model.load_state_dict(state_dict, strict=True, assign=True)
    # The fixed sinusoid tables are made from numpy, so they are real; anything else that is in
    # no state dict would still be a shape without data.
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise RuntimeError(f"reference tensors with no data after loading: {empty}")
    return model


class _Float64(nn.Module):
    def forward(self, weight):
        return weight.double()


@contextlib.contextmanager
def float64_compute(model: nn.Module):
    """Within the block, `model` computes in float64 (give it float64 inputs) while its weights
    stay float32: each weight is read through `.double()` where it is used, so one float64 weight
    exists at a time instead of a float64 copy of the model. Exact: a float32 value is a float64
    number, so this computes what `model.double()` computes."""
    owners = [(m, name) for m in model.modules() for name, _ in m.named_parameters(recurse=False)]
    for m, name in owners:
        parametrize.register_parametrization(m, name, _Float64(), unsafe=True)
    try:
        yield model
    finally:
        for m, name in owners:
            parametrize.remove_parametrizations(m, name, leave_parametrized=False)
