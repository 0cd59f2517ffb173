"""Synthetic checkpoints in the exact official format, every tensor non-zero and random.

A freshly initialised official model has a zero head and zero q/v biases, and a parity
check on such weights passes even when the mapping is wrong. Here every tensor gets
values at the scale of trained weights (std ~0.02, LayerNorm gains ~1, head scaled for
logits of order 1), so each one visibly moves the output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import frameworks
from .variants import ArchConfig


def _fill(name: str, shape: tuple, rng: np.random.Generator, cfg: ArchConfig) -> np.ndarray:
    leaf = name.rsplit(".", 1)[-1]
    noise = rng.standard_normal(shape, dtype=np.float32)  # float32 draws: H has 0.7 G values
    if "norm" in name and leaf == "weight":
        values = 1.0 + 0.1 * noise
    elif leaf in ("gamma_1", "gamma_2"):
        values = 0.5 + 0.1 * noise
    elif name.endswith("head.weight"):
        # Logits (or pixels) of order 1 from unit-scale features.
        values = noise / np.sqrt(shape[-1])
    elif name.endswith("attn.qkv.weight"):
        # q.k logits of order 1, as in trained models: at std 0.02 attention would be almost
        # uniform and q_bias (or a wrong head split) would barely move the output.
        values = noise / np.sqrt(shape[-1])
    elif leaf in ("q_bias", "v_bias"):
        values = 0.1 * noise
    elif leaf == "weight" and len(shape) == 2:
        # Linear layers: std 0.5/sqrt(fan_in), about 0.02 at ViT-B width, activations O(1).
        values = 0.5 * noise / np.sqrt(shape[1])
    else:
        values = (0.05 if leaf == "bias" else 0.02) * noise
    # No exact zeros anywhere: a zero tensor cannot tell a correct mapping from a wrong one.
    values[np.abs(values) < 1e-6] = 1e-3
    return values.astype(np.float32, copy=False)


def synthetic_state_dict(cfg: ArchConfig, seed: int = 0, dtype=None) -> dict:
    """{official key: torch.Tensor} with the official keys and shapes for `cfg` (float32, or `dtype`)."""
    torch = frameworks.load_torch()
    from pt_reference import build_reference

    with torch.device("meta"):  # keys and shapes only: no memory for a throw-away model
        reference = build_reference(cfg)
    rng = np.random.default_rng(seed)
    cast = (lambda t: t) if dtype in (None, torch.float32) else (lambda t: t.to(dtype))
    return {
        name: cast(torch.from_numpy(_fill(name, tuple(t.shape), rng, cfg)))
        for name, t in reference.state_dict().items()
    }


def write_synthetic_checkpoint(cfg: ArchConfig, path, seed: int = 0, dtype: str = "float32") -> Path:
    """torch.save({'model': state_dict}) as the official training scripts do; dtype "float16" as
    VideoMAE V2 releases its fine-tuned models (each tensor cast as it is drawn: ViT-g has 1 G values)."""
    torch = frameworks.load_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = synthetic_state_dict(cfg, seed, getattr(torch, dtype))
    torch.save({"model": state}, tmp)
    del state
    tmp.replace(path)
    return path
