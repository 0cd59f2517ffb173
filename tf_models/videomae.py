"""VideoMAE in Keras 3 (keras.layers / keras.ops only, so any backend can run it).

Layer names follow the official module names, so a weight path reads like the key it came
from: `blocks.3.attn.qkv.weight` lives at `blocks_3/attn/qkv/kernel`.
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import layers, ops

from converter.variants import LAYER_NORM_EPS, ArchConfig, arch_config

_SERIAL = "vmae"


def sinusoid_table(num_tokens: int, dim: int) -> np.ndarray:
    """Fixed position table [num_tokens, dim]: built in float64, stored in float32 as upstream."""
    pos = np.arange(num_tokens, dtype=np.float64)[:, None]
    angles = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return angles.astype(np.float32)


def exact_gelu(x):
    """GELU with erf, written as PyTorch writes it. tf.nn.gelu(approximate=False) is off by
    ~5e-9 in float64, which would hide a float64 parity of ~1e-12 behind its own error."""
    return x * 0.5 * (1.0 + ops.erf(x * 0.7071067811865476))


def _layer_norm(name, dtype):
    return layers.LayerNormalization(epsilon=LAYER_NORM_EPS, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(_SERIAL)
class PatchEmbed(layers.Layer):
    """Non-overlapping tubelets -> tokens [B, N, dim] in (t, h, w) order."""

    def __init__(self, dim, tubelet_size, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.tubelet_size, self.patch_size = dim, tubelet_size, patch_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = layers.Conv3D(dim, kernel, strides=kernel, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj.build(input_shape)

    def call(self, video):
        x = self.proj(video)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.dim))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "tubelet_size": self.tubelet_size,
                "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(_SERIAL)
class PositionEmbedding(layers.Layer):
    """Adds the sinusoid table (a constant, as upstream) or a learnable `pos_embed` weight."""

    def __init__(self, num_tokens, dim, learnable=False, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens, self.dim, self.learnable = num_tokens, dim, learnable
        self._table = sinusoid_table(num_tokens, dim)

    def build(self, input_shape):
        if self.learnable:
            self.pos_embed = self.add_weight(
                name="pos_embed", shape=(1, self.num_tokens, self.dim),
                initializer=keras.initializers.Constant(self._table[None]),
            )

    def call(self, x):
        if self.learnable:
            return x + self.pos_embed
        return x + ops.cast(self._table[None], x.dtype)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "dim": self.dim,
                "learnable": self.learnable}


@keras.saving.register_keras_serializable(_SERIAL)
class Attention(layers.Layer):
    """Multi-head self-attention with upstream's bias layout: q and v biases, no k bias."""

    def __init__(self, dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = layers.Dense(3 * dim, use_bias=False, name="qkv", dtype=self.dtype_policy)
        self.proj = layers.Dense(dim, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.q_bias = self.add_weight(name="q_bias", shape=(self.dim,), initializer="zeros")
        self.v_bias = self.add_weight(name="v_bias", shape=(self.dim,), initializer="zeros")
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def call(self, x):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        bias = ops.concatenate([self.q_bias, ops.zeros_like(self.v_bias), self.v_bias])
        qkv = ops.reshape(self.qkv(x) + bias, (b, n, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 3, 0, 1, 4))  # [3, heads, B, N, head_dim]
        # One head at a time (a loop, not a batch): one head's [B, N, N] scores stay in cache,
        # where all heads' at once (12 x 1568 x 1568 floats in ViT-B, 118 MB) go to memory and
        # back on every pass; about twice as fast on CPU, same arithmetic per element.
        out = ops.map(lambda qkv_h: self._head(*qkv_h), (qkv[0], qkv[1], qkv[2]))
        out = ops.reshape(ops.transpose(out, (1, 2, 0, 3)), (b, n, self.dim))
        return self.proj(out)

    def _head(self, q, k, v):
        """softmax(q * scale @ k^T) @ v for one head, [B, N, head_dim]."""
        scores = ops.matmul(q * self.scale, ops.transpose(k, (0, 2, 1)))
        weights = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
        # Normalising after @ v divides [N, head_dim] values instead of [N, N]: one pass over the
        # scores less; it moves the result by float32 rounding only (~1e-7 relative).
        return ops.matmul(weights, v) / ops.sum(weights, axis=-1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(_SERIAL)
class MLP(layers.Layer):
    def __init__(self, dim, hidden_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden_dim, self.dropout = dim, hidden_dim, dropout
        self.fc1 = layers.Dense(hidden_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = layers.Dense(dim, name="fc2", dtype=self.dtype_policy)
        self.drop = layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim,))

    def call(self, x, training=None):
        x = exact_gelu(self.fc1(x))
        return self.drop(self.fc2(self.drop(x, training=training)), training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(_SERIAL)
class DropPath(layers.Layer):
    """Stochastic depth for fine-tuning: drops a sample's whole residual branch."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate <= 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / keep * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(_SERIAL)
class Block(layers.Layer):
    """Pre-norm transformer block, with optional layer scale (`gamma_1`, `gamma_2`)."""

    def __init__(self, dim, num_heads, mlp_dim, layer_scale=False, drop_path=0.0, dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_dim = dim, num_heads, mlp_dim
        self.layer_scale, self.drop_path_rate, self.dropout = layer_scale, drop_path, dropout
        policy = self.dtype_policy
        self.norm1 = _layer_norm("norm1", policy)
        self.attn = Attention(dim, num_heads, name="attn", dtype=policy)
        self.norm2 = _layer_norm("norm2", policy)
        self.mlp = MLP(dim, mlp_dim, dropout, name="mlp", dtype=policy)
        self.drop_path = DropPath(drop_path, dtype=policy)

    def build(self, input_shape):
        for sub in (self.norm1, self.attn, self.norm2, self.mlp):
            sub.build(input_shape)
        if self.layer_scale:
            self.gamma_1 = self.add_weight(name="gamma_1", shape=(self.dim,), initializer="ones")
            self.gamma_2 = self.add_weight(name="gamma_2", shape=(self.dim,), initializer="ones")

    def call(self, x, training=None):
        a = self.attn(self.norm1(x))
        if self.layer_scale:
            a = self.gamma_1 * a
        x = x + self.drop_path(a, training=training)
        m = self.mlp(self.norm2(x), training=training)
        if self.layer_scale:
            m = self.gamma_2 * m
        return x + self.drop_path(m, training=training)

    def compute_output_shape(self, input_shape):
        # Tokens in, tokens out. Saying so spares Keras a symbolic trace of every block when a
        # model is built (most of the build time of a ViT-B, more with the per-head loop).
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "layer_scale": self.layer_scale,
                "drop_path": self.drop_path_rate, "dropout": self.dropout}


@keras.saving.register_keras_serializable(_SERIAL)
class MaskedTokenOrder(layers.Layer):
    """Token indices [B, N]: visible ones first, then masked ones, each in original order.

    Tube masking hides the same number of tokens in every sample, so the split point is a
    static `num_visible` and everything downstream has static shapes (XLA-friendly), unlike
    boolean masking whose output shape depends on the data.
    """

    def __init__(self, num_tokens, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens

    def call(self, mask):
        # Unique sort keys: masked tokens move behind all visible ones, ties are impossible.
        keys = ops.cast(mask, "int32") * self.num_tokens + ops.arange(self.num_tokens, dtype="int32")
        return ops.argsort(keys, axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens}


@keras.saving.register_keras_serializable(_SERIAL)
class DecoderInput(layers.Layer):
    """[x_vis + pos_vis, mask_token + pos_masked]: the decoder sees every token again."""

    def __init__(self, num_tokens, dim, num_visible, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens, self.dim, self.num_visible = num_tokens, dim, num_visible
        self._table = sinusoid_table(num_tokens, dim)

    def build(self, input_shape):
        self.mask_token = self.add_weight(name="mask_token", shape=(1, 1, self.dim),
                                          initializer="zeros")

    def call(self, x_vis, order):
        pos = ops.take(ops.cast(self._table, x_vis.dtype), order, axis=0)  # [B, N, dim]
        pos_vis, pos_masked = pos[:, : self.num_visible], pos[:, self.num_visible :]
        return ops.concatenate([x_vis + pos_vis, self.mask_token + pos_masked], axis=1)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "dim": self.dim,
                "num_visible": self.num_visible}


class Float64Compute(keras.DTypePolicy):
    """Computes in float64 from float32 weights: the float64 twin of a float32 model at the
    memory of a float32 one. Exact, since every float32 weight is also a float64 number, so it
    computes what a model with float64 weights holding the same values computes."""

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


def _video_input(cfg: ArchConfig, dtype):
    shape = (cfg.num_frames, cfg.image_size, cfg.image_size, cfg.in_channels)
    dtype = getattr(dtype, "compute_dtype", dtype)  # a dtype policy takes inputs in its compute dtype
    return keras.Input(shape, name="video", dtype=dtype or "float32")


def _encoder_tokens(cfg, video, prefix, dtype):
    x = PatchEmbed(cfg.embed_dim, cfg.tubelet_size, cfg.patch_size, name=f"{prefix}patch_embed",
                   dtype=dtype)(video)
    return PositionEmbedding(cfg.num_patches, cfg.embed_dim, cfg.learnable_pos_embed,
                             name=f"{prefix}pos_embed", dtype=dtype)(x)


def _stack(x, cfg, prefix, depth, dim, heads, mlp_dim, dtype, drop_path_rate=0.0, dropout=0.0):
    rates = np.linspace(0, drop_path_rate, depth) if depth else []
    for i, rate in enumerate(rates):
        x = Block(dim, heads, mlp_dim, cfg.layer_scale, float(rate), dropout,
                  name=f"{prefix}blocks_{i}", dtype=dtype)(x)
    return x


def build_classifier(cfg: ArchConfig, dtype=None, drop_path_rate=0.0, dropout=0.0,
                     head_dropout=0.0, name="videomae_classifier") -> keras.Model:
    """Fine-tuned VideoMAE: video [B, T, H, W, 3] -> logits [B, num_classes].

    `drop_path_rate`, `dropout` and `head_dropout` only act with training=True, for
    fine-tuning in TensorFlow; `dtype="float64"` builds the same network in double precision.
    """
    video = _video_input(cfg, dtype)
    x = _encoder_tokens(cfg, video, "", dtype)
    x = _stack(x, cfg, "", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype,
               drop_path_rate, dropout)
    if cfg.use_mean_pooling:
        x = layers.GlobalAveragePooling1D(name="pool", dtype=dtype)(x)
        x = _layer_norm("fc_norm", dtype)(x)
    else:
        x = _layer_norm("norm", dtype)(x)[:, 0]
    x = layers.Dropout(head_dropout, name="head_dropout", dtype=dtype)(x)
    logits = layers.Dense(cfg.num_classes, name="head", dtype=dtype)(x)
    return keras.Model(video, logits, name=name)


def build_pretrain(cfg: ArchConfig, dtype=None, name="videomae_pretrain") -> keras.Model:
    """Masked autoencoder: (video [B, T, H, W, 3], mask [B, N] bool, True = masked)
    -> reconstruction [B, num_masked, 3 * tubelet * patch**2] of the masked tokens.

    Every mask must hide exactly `cfg.num_masked` tokens (tube masking does).
    """
    if not cfg.is_pretrain:
        raise ValueError("build_pretrain needs a configuration with a decoder (stage 'pt')")
    video = _video_input(cfg, dtype)
    mask = keras.Input((cfg.num_patches,), name="mask", dtype="bool")
    tokens = _encoder_tokens(cfg, video, "encoder_", dtype)
    order = MaskedTokenOrder(cfg.num_patches, name="mask_order")(mask)
    x = ops.take_along_axis(tokens, order[:, : cfg.num_visible, None], axis=1)
    x = _stack(x, cfg, "encoder_", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype)
    x = _layer_norm("encoder_norm", dtype)(x)
    x = layers.Dense(cfg.decoder_embed_dim, use_bias=False, name="encoder_to_decoder", dtype=dtype)(x)
    x = DecoderInput(cfg.num_patches, cfg.decoder_embed_dim, cfg.num_visible, name="decoder_input",
                     dtype=dtype)(x, order)
    x = _stack(x, cfg, "decoder_", cfg.decoder_depth, cfg.decoder_embed_dim, cfg.decoder_num_heads,
               cfg.decoder_mlp_dim, dtype)
    x = _layer_norm("decoder_norm", dtype)(x[:, cfg.num_visible :])
    out = layers.Dense(cfg.patch_pixels, name="decoder_head", dtype=dtype)(x)
    return keras.Model([video, mask], out, name=name)


def build_backbone(cfg: ArchConfig, pooled=False, dtype=None, drop_path_rate=0.0, dropout=0.0,
                   name="videomae_backbone") -> keras.Model:
    """Headless encoder of a pre-trained model, every token visible: video -> features
    [B, N, dim] after the encoder norm, or their mean [B, dim] with pooled=True.

    Layer names match the classifier's (`blocks_i`, ...), plus `norm`, so it is the start
    of a fine-tuning model in TensorFlow: add pooling/a head on top.
    """
    video = _video_input(cfg, dtype)
    x = _encoder_tokens(cfg, video, "", dtype)
    x = _stack(x, cfg, "", cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, dtype,
               drop_path_rate, dropout)
    x = _layer_norm("norm", dtype)(x)
    if pooled:
        x = layers.GlobalAveragePooling1D(name="pool", dtype=dtype)(x)
    return keras.Model(video, x, name=name)


def build_model(cfg: ArchConfig, dtype=None, **kwargs) -> keras.Model:
    return build_pretrain(cfg, dtype, **kwargs) if cfg.is_pretrain else build_classifier(cfg, dtype, **kwargs)


def build_zoo_model(variant: str, dataset: str = "k400", stage: str = "ft", **overrides) -> keras.Model:
    """The release architecture by name, e.g. build_zoo_model("B", "ssv2")."""
    return build_model(arch_config(variant, dataset, stage, **overrides))


def hidden_state_model(model: keras.Model) -> keras.Model:
    """Same inputs, outputs = tokens after the embedding and after every block, in order;
    used to find the first block where a conversion diverges from the reference."""
    names = [l.name for l in model.layers
             if l.name.endswith("pos_embed") or "blocks_" in l.name or l.name == "decoder_input"]
    return keras.Model(model.inputs, [model.get_layer(n).output for n in names])


def export_saved_model(model: keras.Model, path, dataset=None, labels=None) -> None:
    """TensorFlow SavedModel with one endpoint `serve` taking the model's inputs as
    positional arguments (video, or video and mask), batch size free; classifiers also get
    `serve_frames` (uint8), `labels` and `metadata` (tf_models.serving)."""
    import tensorflow as tf

    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0])
             for t in model.inputs]
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoint's variables are tracked by add_endpoint anyway, and
    # with track() Keras 3.15 also saves every KerasVariable beside its tf.Variable, doubling
    # the SavedModel (2.3 GB instead of 1.2 GB for ViT-L).
    if len(specs) == 1:
        archive.add_endpoint("serve", lambda video: model(video, training=False), input_signature=specs)
    else:
        archive.add_endpoint("serve", lambda video, mask: model([video, mask], training=False),
                             input_signature=specs)
    from .serving import add_serving_endpoints  # issue 13: raw-frames endpoint, labels, metadata

    add_serving_endpoints(archive, model, dataset, labels)
    archive.write_out(str(path), verbose=False)
