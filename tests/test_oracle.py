"""Evidence that does not come from this project's own code.

1. The variant table, pinned to the official code's numbers (typed from MCG-NJU/VideoMAE, commit
   14ef8d856287c94ef1f985fe30f958eb4ec2c55d): a wrong width, depth or head count in
   `converter/variants.py` would otherwise build a wrong `pt_reference` and a wrong Keras model that
   agree with each other.
2. `pt_reference` against Hugging Face transformers' VideoMAE on the same official-format weights
   (`scripts/oracle_check.py` maps the names and lists what transformers does differently): an error
   shared by our two implementations (sinusoid table, GELU, eps, pooling or mask order) fails here.
"""
from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_FT, TINY_PT

import pt_reference.videomae as ref_module
from converter.masking import tube_mask
from converter.parity import make_video, run_reference
from converter.synthetic import synthetic_state_dict
from converter.variants import LAYER_NORM_EPS, VARIANTS, arch_config
from pt_reference import build_reference

spec = importlib.util.spec_from_file_location("oracle_check", REPO / "scripts" / "oracle_check.py")
oracle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle)

# modeling_finetune.py: vit_{small,base,large,huge}_patch16_224(embed_dim, depth, num_heads, mlp_ratio=4,
# qkv_bias=True, norm_layer=LayerNorm(eps=1e-6)). modeling_pretrain.py: pretrain_videomae_*_patch16_224
# (the same encoders; decoder_embed_dim, decoder_num_heads). The decoder depth is not in those functions:
# run_mae_pretraining.py defaults --decoder_depth to 4, and the pretrain.sh scripts of the released
# checkpoints pass 4 for S and B, 12 for L and H (scripts/kinetics/videomae_vit_{large,huge}_*/pretrain.sh).
UPSTREAM = {
    #     embed depth heads  dec_embed dec_heads dec_depth
    "S": (384, 12, 6, 192, 3, 4),
    "B": (768, 12, 12, 384, 6, 4),
    "L": (1024, 24, 16, 512, 8, 12),
    "H": (1280, 32, 16, 640, 8, 12),
}
UPSTREAM_MLP_RATIO = 4
UPSTREAM_LAYER_NORM_EPS = 1e-6


@pytest.mark.parametrize("variant", list(UPSTREAM))
@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_variant_table_is_the_official_one(variant, stage):
    embed, depth, heads, dec_embed, dec_heads, dec_depth = UPSTREAM[variant]
    cfg = arch_config(variant, "k400", stage)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio) == (embed, depth, heads, UPSTREAM_MLP_RATIO)
    assert cfg.mlp_dim == embed * UPSTREAM_MLP_RATIO
    if stage == "pt":
        assert (cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_depth) == (dec_embed, dec_heads, dec_depth)
        assert cfg.decoder_mlp_dim == dec_embed * UPSTREAM_MLP_RATIO
    assert set(VARIANTS) == set(UPSTREAM)
    assert LAYER_NORM_EPS == UPSTREAM_LAYER_NORM_EPS


def _ours_and_theirs(cfg, seed=0):
    official = synthetic_state_dict(cfg, seed)
    ours = build_reference(cfg)
    ours.load_state_dict(official, strict=True)
    return ours, oracle.build_hf(cfg, official)


def _outputs(cfg, ours, theirs, dtype="float64", seed=0):
    video = make_video(cfg, 2, seed)
    mask = tube_mask(cfg, 2, seed) if cfg.is_pretrain else None
    tdtype = getattr(torch, dtype)
    ours.to(tdtype)
    theirs.to(tdtype)
    return run_reference(ours, video, mask, dtype), oracle.hf_forward(theirs, video, mask, tdtype)


ORACLE_CONFIGS = {
    "ft": TINY_FT,
    "ft_first_token": TINY_FT.with_(use_mean_pooling=False),
    "pt": TINY_PT,
    # a 3-frame-group clip of another shape: a wrong token order or table size cannot line up by luck
    "pt_deeper": TINY_PT.with_(depth=3, num_frames=6, image_size=48, decoder_depth=3),
}


@pytest.mark.parametrize("name", list(ORACLE_CONFIGS))
def test_reference_agrees_with_transformers(name):
    """float64: the two compute the same function (only summation order differs); float32: within the gate."""
    cfg = ORACLE_CONFIGS[name]
    ours, theirs = _ours_and_theirs(cfg)
    a, b = _outputs(cfg, ours, theirs, "float64")
    assert a.shape == b.shape and np.abs(b).max() > 0.1
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    a, b = _outputs(cfg, ours, theirs, "float32")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _swapped_sinusoid(num_tokens, dim):
    return np.ascontiguousarray(_REAL_SINUSOID(num_tokens, dim)[:, ::-1])  # channel order reversed


_REAL_SINUSOID = ref_module.sinusoid_table
_REAL_MLP = ref_module.Mlp


def _tanh_gelu_mlp(dim, hidden, act_layer=None):
    return _REAL_MLP(dim, hidden, act_layer=functools.partial(torch.nn.GELU, approximate="tanh"))


def _norm_before_mean(self, x):
    return self.head(self.fc_norm(self.norm(x)).mean(1))


def _masked_positions_reversed(self, x_vis, mask):
    # (Putting the mask tokens before the visible ones is no error: attention does not see order,
    # only the positions added to the tokens. Giving the hidden tokens their positions in another
    # order is one: each row then reconstructs another patch.)
    x_vis = self.encoder_to_decoder(x_vis)
    b, _, c = x_vis.shape
    pos = self.decoder_pos_table.expand(b, -1, -1).type_as(x_vis)
    pos_vis, pos_masked = pos[~mask].reshape(b, -1, c), pos[mask].reshape(b, -1, c).flip(1)
    x = torch.cat([x_vis + pos_vis, self.mask_token + pos_masked], dim=1)
    for blk in self.decoder.blocks:
        x = blk(x)
    return [self.decoder.head(self.decoder.norm(x[:, -pos_masked.shape[1]:]))]


# Each is an error the Keras model could share with pt_reference (both read the same table and facts).
SHARED_ERRORS = {
    # torch's default LayerNorm eps instead of the official 1e-6; the reference reads it from the config
    "eps": (TINY_FT, "cfg.layer_norm_eps", 1e-5),
    "sinusoid": (TINY_PT, "sinusoid_table", _swapped_sinusoid),
    "gelu": (TINY_FT, "Mlp", _tanh_gelu_mlp),
    "pooling_order": (TINY_FT, "VideoMAEClassifier.head_from_tokens", _norm_before_mean),
    "mask_order": (TINY_PT, "VideoMAEPretrain.decode", _masked_positions_reversed),
}


@pytest.mark.parametrize("error", list(SHARED_ERRORS))
def test_transformers_catches_an_error_our_two_implementations_share(error, monkeypatch):
    cfg, target, value = SHARED_ERRORS[error]
    official = synthetic_state_dict(cfg, 0)  # keys and shapes do not depend on any of these errors
    owner, _, attr = target.rpartition(".")
    if owner == "cfg":
        ours = build_reference(cfg.with_(**{attr: value}))
    else:
        monkeypatch.setattr(getattr(ref_module, owner) if owner else ref_module, attr, value)
        ours = build_reference(cfg)
    ours.load_state_dict(official, strict=True)
    a, b = _outputs(cfg, ours, oracle.build_hf(cfg, official), "float64")
    assert a.shape == b.shape
    # The oracle's float64 gate is 1e-12 (test_reference_agrees_with_transformers); an error counts as
    # caught when it stands far above that and above float32 noise.
    assert np.abs(a - b).max() > 1e-7, f"{error}: transformers agrees with a wrong reference"


def test_transformers_default_eps_is_visible_in_float64():
    """Why the oracle sets fc_norm / decoder.norm to 1e-6: left at transformers' 1e-5, float64 sees it."""
    for cfg, module in ((TINY_FT, "fc_norm"), (TINY_PT, "decoder.norm")):
        ours, theirs = _ours_and_theirs(cfg)
        theirs.get_submodule(module).eps = 1e-5
        a, b = _outputs(cfg, ours, theirs, "float64")
        assert np.abs(a - b).max() > 1e-9, module


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["S", "B"])
@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_full_size_reference_agrees_with_transformers(variant, stage):
    fig = oracle.oracle_figures(arch_config(variant, "k400", stage))
    assert fig["float64"]["max_abs"] < 1e-9, fig
    assert fig["float32"]["max_abs"] < 1e-4, fig
