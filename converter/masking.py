"""Tube masking as in VideoMAE pre-training: one random spatial mask per sample, repeated
over every frame pair, hiding int(ratio * patches_per_frame) patches in each.

Pure numpy so the very same mask array can be fed to PyTorch and to Keras.
"""
from __future__ import annotations

import numpy as np

from .variants import ArchConfig


def tube_mask(cfg: ArchConfig, batch: int = 1, seed: int | None = 0) -> np.ndarray:
    """Boolean mask [batch, num_patches]; True = masked (hidden from the encoder)."""
    t, h, w = cfg.grid
    per_frame = h * w
    hidden = int(cfg.mask_ratio * per_frame)
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, t, per_frame), dtype=bool)
    for b in range(batch):
        masks[b, :, rng.permutation(per_frame)[:hidden]] = True
    return masks.reshape(batch, t * per_frame)


def check_mask(mask: np.ndarray, cfg: ArchConfig) -> None:
    """The Keras model splits tokens at a static index, so every row must hide exactly
    cfg.num_masked tokens."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[1] != cfg.num_patches:
        raise ValueError(f"mask must be [batch, {cfg.num_patches}], got {list(mask.shape)}")
    counts = mask.sum(axis=1)
    if not (counts == cfg.num_masked).all():
        raise ValueError(f"every mask row must hide exactly {cfg.num_masked} tokens, got {sorted(set(counts.tolist()))}")
