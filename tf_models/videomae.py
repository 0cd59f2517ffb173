"""VideoMAE networks in Keras 3, built from an `ArchConfig`: classifier, masked autoencoder,
headless backbone. Channels-last video [batch, frames, height, width, 3]."""
from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import layers

from .config import ArchConfig, arch_config
from .layers import (Block, DecoderInput, MaskedTokenOrder, PatchEmbed, PositionEmbedding, TokenSlice,
                     VisibleTokens, _is_low_precision, layer_norm)


def _float32_if_low(dtype):
    """Pooling and logits stay float32 under a mixed policy: a mean over 1568 tokens or a
    softmax over 400 classes in bfloat16 keeps two or three digits."""
    return "float32" if _is_low_precision(dtype) else dtype


def _video_input(cfg: ArchConfig, dtype):
    shape = (cfg.num_frames, cfg.image_size, cfg.image_size, cfg.in_channels)
    if dtype is not None and not isinstance(dtype, str):
        dtype = dtype.compute_dtype  # a dtype policy takes inputs in its compute dtype
    elif dtype is not None:
        dtype = keras.dtype_policies.get(dtype).variable_dtype  # mixed policies take float32 video
    return keras.Input(shape, name="video", dtype=dtype or "float32")


def _encoder_tokens(cfg, video, prefix, dtype):
    x = PatchEmbed(cfg.embed_dim, cfg.tubelet_size, cfg.patch_size, name=f"{prefix}patch_embed",
                   dtype=dtype)(video)
    return PositionEmbedding(cfg.num_patches, cfg.embed_dim, cfg.learnable_pos_embed,
                             name=f"{prefix}pos_embed", dtype=dtype)(x)


def _stack(x, cfg, prefix, depth, dim, heads, mlp_dim, dtype, drop_path_rate=0.0, dropout=0.0):
    rates = np.linspace(0, drop_path_rate, depth) if depth else []
    for i, rate in enumerate(rates):
        x = Block(dim, heads, mlp_dim, cfg.layer_scale, float(rate), dropout, cfg.layer_norm_eps,
                  name=f"{prefix}blocks_{i}", dtype=dtype)(x)
    return x


def build_classifier(cfg: ArchConfig, dtype=None, drop_path_rate=0.0, dropout=0.0,
                     head_dropout=0.0, name="videomae_classifier") -> keras.Model:
    """Fine-tuned VideoMAE: video [B, T, H, W, 3] -> logits [B, num_classes].

    `drop_path_rate`, `dropout` and `head_dropout` only act with training=True, for
    fine-tuning; `dtype` takes a dtype or policy ("float64", "mixed_bfloat16": LayerNorm,
    softmax, pooling and logits then stay float32).
    """
    video = _video_input(cfg, dtype)
    x = _encoder_tokens(cfg, video, "", dtype)
    x = _stack(x, cfg, "", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype,
               drop_path_rate, dropout)
    wide = _float32_if_low(dtype)
    if cfg.use_mean_pooling:
        x = layers.GlobalAveragePooling1D(name="pool", dtype=wide)(x)
        x = layer_norm("fc_norm", dtype, cfg.head_norm_eps)(x)
    else:
        x = layer_norm("norm", dtype, cfg.layer_norm_eps)(x)
        x = TokenSlice(0, squeeze=True, name="first_token", dtype=wide)(x)
    x = layers.Dropout(head_dropout, name="head_dropout", dtype=wide)(x)
    logits = layers.Dense(cfg.num_classes, name="head", dtype=wide)(x)
    return keras.Model(video, logits, name=name)


def build_pretrain(cfg: ArchConfig, dtype=None, name="videomae_pretrain") -> keras.Model:
    """Masked autoencoder: (video [B, T, H, W, 3], mask [B, N] bool, True = masked)
    -> reconstruction [B, num_masked, 3 * tubelet * patch**2] of the masked tokens.

    Every mask must hide exactly `cfg.num_masked` tokens (tube masking does); the exported
    SavedModel checks it, the Keras model trusts it.
    """
    if not cfg.is_pretrain:
        raise ValueError("build_pretrain needs a configuration with a decoder (stage 'pt')")
    video = _video_input(cfg, dtype)
    mask = keras.Input((cfg.num_patches,), name="mask", dtype="bool")
    tokens = _encoder_tokens(cfg, video, "encoder_", dtype)
    order = MaskedTokenOrder(cfg.num_patches, name="mask_order")(mask)
    x = VisibleTokens(cfg.num_visible, name="visible_tokens", dtype=dtype)(tokens, order)
    x = _stack(x, cfg, "encoder_", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype)
    x = layer_norm("encoder_norm", dtype, cfg.layer_norm_eps)(x)
    x = layers.Dense(cfg.decoder_embed_dim, use_bias=False, name="encoder_to_decoder", dtype=dtype)(x)
    x = DecoderInput(cfg.num_patches, cfg.decoder_embed_dim, cfg.num_visible, name="decoder_input",
                     dtype=dtype)(x, order)
    x = _stack(x, cfg, "decoder_", cfg.decoder_depth, cfg.decoder_embed_dim, cfg.decoder_num_heads,
               cfg.decoder_mlp_dim, dtype)
    x = TokenSlice(cfg.num_visible, name="masked_tokens", dtype=dtype)(x)
    x = layer_norm("decoder_norm", dtype, cfg.head_norm_eps)(x)
    out = layers.Dense(cfg.patch_pixels, name="decoder_head", dtype=_float32_if_low(dtype))(x)
    return keras.Model([video, mask], out, name=name)


def build_backbone(cfg: ArchConfig, pooled=False, dtype=None, drop_path_rate=0.0, dropout=0.0,
                   name="videomae_backbone") -> keras.Model:
    """Headless encoder of a pre-trained model, every token visible: video -> features
    [B, N, dim] after the encoder norm, or their mean [B, dim] with pooled=True.

    Layer names match the classifier's (`blocks_i`, ...), plus `norm`, so it is the start
    of a fine-tuning model: add pooling/a head on top. `cfg.final_norm=False` leaves `norm`
    out, as a transformers VideoMAEModel saved with use_mean_pooling has none.
    """
    video = _video_input(cfg, dtype)
    x = _encoder_tokens(cfg, video, "", dtype)
    x = _stack(x, cfg, "", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype,
               drop_path_rate, dropout)
    if cfg.final_norm:
        x = layer_norm("norm", dtype, cfg.layer_norm_eps)(x)
    if pooled:
        x = layers.GlobalAveragePooling1D(name="pool", dtype=_float32_if_low(dtype))(x)
    return keras.Model(video, x, name=name)


def build_model(cfg: ArchConfig, dtype=None, **kwargs) -> keras.Model:
    return build_pretrain(cfg, dtype, **kwargs) if cfg.is_pretrain else build_classifier(cfg, dtype, **kwargs)


def build_zoo_model(variant: str, dataset: str = "k400", stage: str = "ft", dtype=None, **overrides) -> keras.Model:
    """The release architecture by name, e.g. build_zoo_model("B", "ssv2"), or at another clip
    shape: build_zoo_model("B", "k400", num_frames=8, image_size=160); VideoMAE V2 by a name only
    it has, build_zoo_model("G", "ssv2"), or generation="v2"."""
    return build_model(arch_config(variant, dataset, stage, **overrides), dtype=dtype)


def hidden_state_model(model: keras.Model, with_output: bool = False) -> keras.Model:
    """Same inputs, outputs = tokens after the embedding and after every block, in order (and
    the model's own output last, with_output=True): one forward gives the per-block error
    profile and the result, and locates the first block where a conversion diverges."""
    names = [l.name for l in model.layers
             if l.name.endswith("pos_embed") or "blocks_" in l.name or l.name == "decoder_input"]
    outputs = [model.get_layer(n).output for n in names] + (list(model.outputs) if with_output else [])
    return keras.Model(model.inputs, outputs)


class Float64Compute(keras.DTypePolicy):
    """Computes in float64 from float32 weights: the float64 twin of a float32 model at the
    memory of a float32 one. Exact, since every float32 weight is also a float64 number."""

    def __init__(self, name="float64_from_float32"):
        super().__init__(name)

    def _parse_name(self, name):
        return "float64", "float32"  # (compute, variables)


@contextlib.contextmanager
def float64_compute(model: keras.Model):
    """Within the block, `model` computes in float64 (give it float64 inputs) from its float32
    weights, cast where they are used: the float64 twin of a model without a second copy of
    its weights. Exact, as every float32 value is a float64 number, so this computes what the
    same network built with dtype="float64" and holding the same values computes."""
    layers_ = list(model._flatten_layers())  # the model and every layer in it, nested ones too
    saved = [layer.dtype_policy for layer in layers_]
    try:
        for layer in layers_:
            layer.dtype_policy = Float64Compute()
        yield model
    finally:
        for layer, policy in zip(layers_, saved):
            layer.dtype_policy = policy
