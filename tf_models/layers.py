"""VideoMAE's layers in Keras 3 (keras.layers / keras.ops only, so every backend runs them).

Layer names follow the official module names, so a weight path reads like the key it came
from: `blocks.3.attn.qkv.weight` lives at `blocks_3/attn/qkv/kernel`. Every layer is
registered under the `vmae` package on import, which is what `keras.saving.load_model`
needs to rebuild a `.keras` file.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .config import LAYER_NORM_EPS

PACKAGE = "vmae"
_LOW_PRECISION = ("float16", "bfloat16")


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


def layer_norm(name, dtype=None, eps=LAYER_NORM_EPS):
    """LayerNorm at the checkpoint's eps (upstream's 1e-6 by default). Under a float16/bfloat16
    policy it still computes in float32: the variance of 768 numbers in bfloat16 loses most of
    its digits."""
    if _is_low_precision(dtype):
        dtype = "float32"
    return layers.LayerNormalization(epsilon=eps, name=name, dtype=dtype)


def _is_low_precision(dtype) -> bool:
    if dtype is None:
        return False
    compute = getattr(dtype, "compute_dtype", None) or keras.dtype_policies.get(dtype).compute_dtype
    return compute in _LOW_PRECISION


def _shape(shape) -> tuple:
    """Keras hands `build` a list after deserialisation and a tuple otherwise."""
    return tuple(shape)


@keras.saving.register_keras_serializable(PACKAGE)
class PatchEmbed(layers.Layer):
    """Non-overlapping tubelets -> tokens [B, N, dim] in (t, h, w) order."""

    def __init__(self, dim, tubelet_size, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.tubelet_size, self.patch_size = dim, tubelet_size, patch_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = layers.Conv3D(dim, kernel, strides=kernel, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj.build(_shape(input_shape))

    def call(self, video):
        x = self.proj(video)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.dim))

    def compute_output_shape(self, input_shape):
        b, t, h, w, _ = _shape(input_shape)
        n = None if None in (t, h, w) else (t // self.tubelet_size) * (h // self.patch_size) * (w // self.patch_size)
        return (b, n, self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "tubelet_size": self.tubelet_size,
                "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(PACKAGE)
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
            return x + ops.cast(self.pos_embed, x.dtype)
        return x + ops.cast(self._table[None], x.dtype)

    def compute_output_shape(self, input_shape):
        return _shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "dim": self.dim,
                "learnable": self.learnable}


@keras.saving.register_keras_serializable(PACKAGE)
class Attention(layers.Layer):
    """Multi-head self-attention with upstream's bias layout: q and v biases, no k bias.

    Heads are computed one at a time in a loop unrolled at trace time. One head's [B, N, N]
    scores stay in cache where all heads' at once (12 x 1568 x 1568 floats in ViT-B, 118 MB)
    go to memory and back on every pass: about 1.5x faster on a 2-core CPU. Unrolled, not
    `ops.map`: a map becomes TensorList ops that LiteRT cannot lower and jax cannot trace
    over variables, while a static loop is plain ops on every backend.
    """

    def __init__(self, dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = layers.Dense(3 * dim, use_bias=False, name="qkv", dtype=self.dtype_policy)
        self.proj = layers.Dense(dim, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = _shape(input_shape)
        self.q_bias = self.add_weight(name="q_bias", shape=(self.dim,), initializer="zeros")
        self.v_bias = self.add_weight(name="v_bias", shape=(self.dim,), initializer="zeros")
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def call(self, x):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        dtype = self.compute_dtype
        q_bias, v_bias = ops.cast(self.q_bias, dtype), ops.cast(self.v_bias, dtype)
        bias = ops.concatenate([q_bias, ops.zeros((self.dim,), dtype=dtype), v_bias])
        qkv = ops.reshape(self.qkv(x) + bias, (b, n, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 3, 0, 1, 4))  # [3, heads, B, N, head_dim]
        heads = [self._head(qkv[0, h], qkv[1, h], qkv[2, h]) for h in range(self.num_heads)]
        out = ops.stack(heads, axis=2)  # [B, N, heads, head_dim]
        return self.proj(ops.reshape(out, (b, n, self.dim)))

    def _head(self, q, k, v):
        """softmax(q * scale @ k^T) @ v for one head, [B, N, head_dim]."""
        scores = ops.matmul(q * ops.cast(self.scale, q.dtype), ops.transpose(k, (0, 2, 1)))
        low = keras.backend.standardize_dtype(scores.dtype) in _LOW_PRECISION  # torch.bfloat16 is no string
        if low:  # a softmax over 1568 keys sums in float32, as mixed precision training expects
            scores = ops.cast(scores, "float32")
        weights = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
        total = ops.sum(weights, axis=-1, keepdims=True)
        if low:
            weights, total = ops.cast(weights, v.dtype), ops.cast(total, v.dtype)
        # Normalising after @ v divides [N, head_dim] values instead of [N, N]: one pass over the
        # scores less; it moves the result by float32 rounding only (~1e-7 relative).
        return ops.matmul(weights, v) / total

    def compute_output_shape(self, input_shape):
        return _shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(PACKAGE)
class MLP(layers.Layer):
    def __init__(self, dim, hidden_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden_dim, self.dropout = dim, hidden_dim, dropout
        self.fc1 = layers.Dense(hidden_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = layers.Dense(dim, name="fc2", dtype=self.dtype_policy)
        self.drop = layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = _shape(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim,))

    def call(self, x, training=None):
        x = exact_gelu(self.fc1(x))
        return self.drop(self.fc2(self.drop(x, training=training)), training=training)

    def compute_output_shape(self, input_shape):
        return _shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(PACKAGE)
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

    def compute_output_shape(self, input_shape):
        return _shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class Block(layers.Layer):
    """Pre-norm transformer block, with optional layer scale (`gamma_1`, `gamma_2`)."""

    def __init__(self, dim, num_heads, mlp_dim, layer_scale=False, drop_path=0.0, dropout=0.0,
                 norm_eps=LAYER_NORM_EPS, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_dim, self.norm_eps = dim, num_heads, mlp_dim, norm_eps
        self.layer_scale, self.drop_path_rate, self.dropout = layer_scale, drop_path, dropout
        policy = self.dtype_policy
        self.norm1 = layer_norm("norm1", policy, norm_eps)
        self.attn = Attention(dim, num_heads, name="attn", dtype=policy)
        self.norm2 = layer_norm("norm2", policy, norm_eps)
        self.mlp = MLP(dim, mlp_dim, dropout, name="mlp", dtype=policy)
        self.drop_path = DropPath(drop_path, dtype=policy)

    def build(self, input_shape):
        input_shape = _shape(input_shape)
        for sub in (self.norm1, self.attn, self.norm2, self.mlp):
            sub.build(input_shape)
        if self.layer_scale:
            self.gamma_1 = self.add_weight(name="gamma_1", shape=(self.dim,), initializer="ones")
            self.gamma_2 = self.add_weight(name="gamma_2", shape=(self.dim,), initializer="ones")

    def call(self, x, training=None):
        dtype = self.compute_dtype
        a = self.attn(ops.cast(self.norm1(x), dtype))
        if self.layer_scale:
            a = ops.cast(self.gamma_1, dtype) * a
        x = x + self.drop_path(a, training=training)
        m = self.mlp(ops.cast(self.norm2(x), dtype), training=training)
        if self.layer_scale:
            m = ops.cast(self.gamma_2, dtype) * m
        return x + self.drop_path(m, training=training)

    def compute_output_shape(self, input_shape):
        # Tokens in, tokens out. Saying so spares Keras a symbolic trace of every block when a
        # model is built (most of the build time of a ViT-B).
        return _shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "layer_scale": self.layer_scale,
                "drop_path": self.drop_path_rate, "dropout": self.dropout, "norm_eps": self.norm_eps}


@keras.saving.register_keras_serializable(PACKAGE)
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


@keras.saving.register_keras_serializable(PACKAGE)
class VisibleTokens(layers.Layer):
    """The first `num_visible` tokens in `order`: the encoder's input under a mask."""

    def __init__(self, num_visible, **kwargs):
        super().__init__(**kwargs)
        self.num_visible = num_visible

    def call(self, tokens, order):
        return ops.take_along_axis(tokens, order[:, : self.num_visible, None], axis=1)

    def compute_output_shape(self, tokens_shape, order_shape):
        b, _, dim = _shape(tokens_shape)
        return (b, self.num_visible, dim)

    def get_config(self):
        return {**super().get_config(), "num_visible": self.num_visible}


@keras.saving.register_keras_serializable(PACKAGE)
class TokenSlice(layers.Layer):
    """tokens[:, start:stop]; start=0, stop=1 with squeeze is the first-token pooling."""

    def __init__(self, start=0, stop=None, squeeze=False, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop, self.squeeze = start, stop, squeeze

    def call(self, x):
        if self.squeeze:
            return x[:, self.start]
        return x[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        b, n, dim = _shape(input_shape)
        if self.squeeze:
            return (b, dim)
        stop = n if self.stop is None else self.stop
        return (b, None if n is None else len(range(n)[self.start : stop]), dim)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop, "squeeze": self.squeeze}


@keras.saving.register_keras_serializable(PACKAGE)
class DecoderInput(layers.Layer):
    """[x_vis + pos_vis, mask_token + pos_masked]: the decoder sees every token again."""

    def __init__(self, num_tokens, dim, num_visible, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens, self.dim, self.num_visible = num_tokens, dim, num_visible
        self._table = sinusoid_table(num_tokens, dim)

    def build(self, x_vis_shape, order_shape=None):
        self.mask_token = self.add_weight(name="mask_token", shape=(1, 1, self.dim),
                                          initializer="zeros")

    def call(self, x_vis, order):
        pos = ops.take(ops.cast(self._table, x_vis.dtype), order, axis=0)  # [B, N, dim]
        pos_vis, pos_masked = pos[:, : self.num_visible], pos[:, self.num_visible :]
        mask_token = ops.cast(self.mask_token, x_vis.dtype)
        return ops.concatenate([x_vis + pos_vis, mask_token + pos_masked], axis=1)

    def compute_output_shape(self, x_vis_shape, order_shape):
        return (_shape(x_vis_shape)[0], self.num_tokens, self.dim)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "dim": self.dim,
                "num_visible": self.num_visible}
