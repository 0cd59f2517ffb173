"""Parity: does the Keras model compute what the PyTorch reference computes?

The gate is `np.testing.assert_allclose(tf, pt, rtol, atol)` semantics: every element
within atol + rtol * |pt|. When it fails, `localise` compares hidden states block by
block and names the first one that diverges, so a mapping bug is located, not only seen.
"""
from __future__ import annotations

import numpy as np

from . import frameworks
from .variants import ArchConfig

# A mapping bug moves hidden states by O(1) relative to their scale; float32 rounding
# across dozens of blocks stays far below this.
DIVERGENCE = 1e-3


def compare(actual, desired, rtol: float, atol: float) -> dict:
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if actual.shape != desired.shape:
        return {"passed": False, "max_abs": None, "max_rel": None,
                "detail": f"shape {list(actual.shape)} vs reference {list(desired.shape)}"}
    diff = np.abs(actual - desired)
    nonzero = np.abs(desired) > 0
    max_rel = float((diff[nonzero] / np.abs(desired[nonzero])).max()) if nonzero.any() else 0.0
    passed = bool(np.all(diff <= atol + rtol * np.abs(desired)) and np.isfinite(actual).all())
    return {"passed": passed, "max_abs": float(diff.max()) if diff.size else 0.0, "max_rel": max_rel}


def make_video(cfg: ArchConfig, batch: int, seed: int) -> np.ndarray:
    """A normalised-looking clip, PyTorch layout [B, C, T, H, W]."""
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.in_channels, cfg.num_frames, cfg.image_size, cfg.image_size)
    return rng.standard_normal(shape).astype(np.float32)


def channels_last(video: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(video.transpose(0, 2, 3, 4, 1))


def keras_inputs(video: np.ndarray, mask, dtype="float32"):
    x = channels_last(video).astype(dtype)
    return x if mask is None else [x, mask]


def run_reference(reference, video: np.ndarray, mask=None, dtype="float32") -> np.ndarray:
    torch = frameworks.load_torch()
    x = torch.from_numpy(video.astype(dtype))
    with torch.inference_mode():
        out = reference(x) if mask is None else reference(x, torch.from_numpy(mask))
    return out.numpy()


def reference_stages(reference, video: np.ndarray, mask=None, dtype="float32") -> list[tuple[str, np.ndarray]]:
    """PyTorch's tokens after the embedding and after every block, then ("output", its result),
    all from one forward: the same stages, in the same order, as `keras_stages`."""
    torch = frameworks.load_torch()
    x = torch.from_numpy(video.astype(dtype))
    with torch.inference_mode():
        if mask is None:
            states = reference.hidden_states(x)
            names = ["embedding"] + [f"blocks.{i}" for i in range(len(states) - 1)]
            # pt_reference finishes from its last tokens; another reference runs its own forward
            head = getattr(reference, "head_from_tokens", None)
            out = head(states[-1]) if head is not None else reference(x)
            named = list(zip(names, states)) + [("output", out)]
        else:
            m = torch.from_numpy(mask)
            enc = reference.encoder
            embedding = enc.patch_embed(x) + enc.pos_table.type_as(x)  # all tokens, before masking
            encoded = reference.encode(x, m)
            decoded = reference.decode(encoded[-1], m)
            named = [("encoder.embedding", embedding)]
            named += [(f"encoder.blocks.{i}", s) for i, s in enumerate(encoded[1:-1])]
            named += [("decoder input", decoded[0])]
            named += [(f"decoder.blocks.{i}", s) for i, s in enumerate(decoded[1:-1])]
            named += [("output", decoded[-1])]
        return [(n, s.numpy()) for n, s in named]


def keras_stages(model, video: np.ndarray, mask=None, dtype="float32", staged=None) -> list[np.ndarray]:
    """The Keras side of `reference_stages`, from one forward; `staged` is
    `hidden_state_model(model, with_output=True)` when the caller already built it."""
    import keras

    from tf_models import hidden_state_model

    staged = staged or hidden_state_model(model, with_output=True)
    inputs = keras_inputs(video, mask, dtype)
    outs = staged(inputs if isinstance(inputs, list) else [inputs], training=False)
    return [keras.ops.convert_to_numpy(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]


def _max_abs(got: np.ndarray, expected: np.ndarray) -> float | None:
    if got.shape != expected.shape:
        return None
    return float(np.abs(got.astype(np.float64) - expected).max())


def locate(expected: list[tuple[str, np.ndarray]], got: list[np.ndarray]) -> dict:
    """Per-stage comparison of hidden states; `first_divergent` is the first stage whose error
    exceeds DIVERGENCE relative to the reference's scale (None: the stack agrees, look at the head)."""
    stages, first = [], None
    for (name, ref), out in zip(expected, got):
        max_abs = _max_abs(out, ref)
        relative = None if max_abs is None else max_abs / max(float(np.abs(ref).max()), 1e-12)
        stages.append({"stage": name, "max_abs": max_abs, "relative": relative})
        if first is None and (relative is None or relative > DIVERGENCE):
            first = name
    return {"first_divergent": first, "stages": stages}


def localise(reference, model, video: np.ndarray, mask=None, dtype="float32") -> dict:
    """`locate` on fresh forwards of both models (hidden states only, the output left out)."""
    return locate(reference_stages(reference, video, mask, dtype)[:-1], keras_stages(model, video, mask, dtype)[:-1])


def profile_of(stages32: tuple, stages64: tuple | None) -> dict:
    """Max abs difference after each stage, float32 and float64, from (expected, got) pairs of
    stage lists: float32 rounding grows with depth, a mapping error does not shrink in float64,
    and the plot of both shows which one a drift is."""
    expected, got = stages32
    profile = {"stages": [name for name, _ in expected],
               "float32": [_max_abs(g, e) for (_, e), g in zip(expected, got)]}
    if stages64 is not None:
        expected64, got64 = stages64
        profile["float64"] = [_max_abs(g, e) for (_, e), g in zip(expected64, got64)]
    return profile


def describe_localisation(loc: dict) -> str:
    if not loc:
        return ""
    first = loc["first_divergent"]
    if first is None:
        return "all hidden states agree: the divergence is in the head (final norm / pooling / head)"
    before = [s["stage"] for s in loc["stages"]]
    i = before.index(first)
    agree = f"; {before[0]}..{before[i - 1]} agree" if i > 0 else ""
    return f"first divergence at {first}{agree}"
