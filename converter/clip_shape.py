"""Converting for another clip shape than the checkpoint was trained on (--frames, --image-size).

The fixed sinusoid tables are rebuilt for the new token grid by both models, as the official
code does when a model is built at that size. A learnable `pos_embed` is interpolated the way
the official fine-tuning script does it (MCG-NJU/VideoMAE `run_class_finetuning.py`, `main()`,
"interpolate position embedding"): per temporal slice, bicubic over the spatial grid
(`torch.nn.functional.interpolate`, align_corners=False). That code keeps the number of
temporal slices, so a learnable table cannot change frame count here either.
"""
from __future__ import annotations

import numpy as np

from . import frameworks
from .errors import VMAEError
from .variants import ArchConfig


def with_clip_shape(cfg: ArchConfig, num_frames: int | None, image_size: int | None) -> ArchConfig:
    """`cfg` at the requested clip shape; one VMAEError line when the shape does not tile."""
    changes = {k: v for k, v in (("num_frames", num_frames), ("image_size", image_size)) if v is not None}
    if not changes:
        return cfg
    try:
        return cfg.with_(**changes)
    except ValueError as err:
        raise VMAEError(f"--frames/--image-size: {err}") from None


def interpolate_pos_embed(pos_embed: np.ndarray, temporal: int, new_size: int) -> np.ndarray:
    """[1, temporal * s * s, dim] -> [1, temporal * new_size**2, dim], bicubic per temporal slice."""
    torch = frameworks.load_torch()
    _, length, dim = pos_embed.shape
    old_size = int(round((length // temporal) ** 0.5))
    if temporal * old_size * old_size != length:
        raise VMAEError(f"pos_embed has {length} tokens, not {temporal} temporal slices of a square grid")
    if old_size == new_size:
        return pos_embed
    grid = torch.from_numpy(np.ascontiguousarray(pos_embed)).reshape(temporal, old_size, old_size, dim)
    grid = grid.permute(0, 3, 1, 2)  # [T, dim, H, W]: interpolate's channels-first layout
    grid = torch.nn.functional.interpolate(grid, size=(new_size, new_size), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, temporal * new_size * new_size, dim).numpy()


def adapt_tensors(tensors: dict, trained: ArchConfig, target: ArchConfig) -> tuple[dict, list[str]]:
    """Checkpoint tensors for a model at `target`'s clip shape; returns (tensors, notes)."""
    keys = [k for k in tensors if k.split(".")[-1] == "pos_embed"]
    if not keys or (trained.num_frames, trained.image_size) == (target.num_frames, target.image_size):
        return tensors, []
    if trained.grid[0] != target.grid[0]:
        raise VMAEError(f"this checkpoint has a learnable pos_embed for {trained.num_frames} frames; the official "
                        "fine-tuning code interpolates it over space only: keep --frames at "
                        f"{trained.num_frames} (--image-size may change)")
    out = dict(tensors)
    for key in keys:
        out[key] = interpolate_pos_embed(tensors[key], target.grid[0], target.grid[1])
    note = (f"learnable pos_embed interpolated from {trained.grid[1]}x{trained.grid[2]} to "
            f"{target.grid[1]}x{target.grid[2]} patches per frame pair (bicubic, as run_class_finetuning.py)")
    return out, [note]
