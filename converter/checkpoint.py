"""Reading official checkpoints safely and telling what they are.

A `.pth` file is a pickle, and a pickle can run code. We only ever call
`torch.load(..., weights_only=True)`, which refuses any object but tensors, plain
containers and an explicit allow-list (argparse.Namespace: the official training script
stores its arguments next to the weights).
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import frameworks
from .errors import CheckpointError, VariantMismatchError
from .variants import (
    ArchConfig,
    arch_config,
    dataset_for_classes,
    get_dataset,
    get_variant,
    variant_for_width,
)

CONTAINER_KEYS = ("model", "module", "state_dict")
STRIPPED_PREFIXES = ("module.", "backbone.")
_FLOAT_UPCAST = ("torch.float16", "torch.bfloat16")


@dataclass
class LoadedCheckpoint:
    """Official tensors as float32 numpy arrays, keyed by official names."""

    tensors: dict[str, np.ndarray]
    source: str
    container: str  # "model", "module", ... or "bare"
    notes: list[str] = field(default_factory=list)


def _torch_load(path: Path):
    torch = frameworks.load_torch()
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip file


def read_checkpoint(path) -> LoadedCheckpoint:
    """Load a checkpoint file without executing anything in it, unwrap its container."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): download it again")
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((l for l in first if "GLOBAL" in l or "Unsupported" in l), first[0] if first else "")
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than weights ({detail.strip()[:160]}); "
            "only plain weight files are accepted"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, UnicodeDecodeError, AttributeError, ImportError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint (truncated, corrupt or another format: {reason})"
        ) from None
    return unwrap(obj, str(path))


def unwrap(obj, source: str = "<state dict>") -> LoadedCheckpoint:
    """Find the state dict in an official container and normalise names and dtypes."""
    torch = frameworks.load_torch()
    container = "bare"
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj, container = obj[key], key
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds no state dict (expected a dict of tensors under 'model' or 'module')")
    notes = []
    tensors: dict[str, np.ndarray] = {}
    prefix = _common_prefix(list(obj))
    if prefix:
        notes.append(f"stripped key prefix '{prefix}'")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: '{key}' is a {type(value).__name__}, not a tensor")
        name = key[len(prefix):]
        if name in tensors:
            raise CheckpointError(f"{source}: '{name}' appears twice after stripping '{prefix}'")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: '{key}' has dtype {value.dtype}, expected floating point weights")
        if str(value.dtype) in _FLOAT_UPCAST:
            notes.append(f"'{name}' stored as {value.dtype}, converted to float32")
        array = value.detach().to(torch.float32).numpy()
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise CheckpointError(f"{source}: '{name}' has {bad} NaN/Inf values; the file is damaged")
        tensors[name] = array
    upcast = [n for n in notes if "converted to float32" in n]
    if len(upcast) > 3:  # one line per tensor is noise; keep the count
        notes = [n for n in notes if n not in upcast] + [
            f"{len(upcast)} tensors stored in half precision, converted to float32"]
    return LoadedCheckpoint(tensors, source, container, notes)


def _common_prefix(keys: list[str]) -> str:
    """DDP's `module.`, the fine-tuning loader's `backbone.`; `encoder.` only for a lone encoder
    (a pre-trained model keeps it: its decoder keys tell the two apart)."""
    for prefix in STRIPPED_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    if keys and all(k.startswith("encoder.") for k in keys):
        return "encoder."
    return ""


_BLOCK = re.compile(r"^(encoder\.|decoder\.)?blocks\.(\d+)\.")


def _depth(tensors, prefix: str) -> int:
    ids = {int(m.group(2)) for k in tensors if (m := _BLOCK.match(k)) and (m.group(1) or "") == prefix}
    return max(ids) + 1 if ids else 0


def describe(tensors: dict[str, np.ndarray]) -> dict:
    """What the tensors say about the model: stage, widths, depths, classes, optional parts."""
    pretrain = "mask_token" in tensors or any(k.startswith("decoder.") for k in tensors)
    enc = "encoder." if pretrain else ""
    conv = tensors.get(f"{enc}patch_embed.proj.weight")
    if conv is None or conv.ndim != 5:
        raise VariantMismatchError(
            f"no {enc}patch_embed.proj.weight Conv3d tensor: this is not a VideoMAE checkpoint")
    info = {
        "stage": "pt" if pretrain else "ft",
        "embed_dim": int(conv.shape[0]),
        "in_channels": int(conv.shape[1]),
        "tubelet_size": int(conv.shape[2]),
        "patch_size": int(conv.shape[3]),
        "depth": _depth(tensors, enc),
    }
    if pretrain:
        token = tensors.get("mask_token")
        info["decoder_embed_dim"] = int(token.shape[-1]) if token is not None else 0
        info["decoder_depth"] = _depth(tensors, "decoder.")
    else:
        head = tensors.get("head.weight")
        info["num_classes"] = int(head.shape[0]) if head is not None and head.ndim == 2 else None
        info["use_mean_pooling"] = "fc_norm.weight" in tensors or "norm.weight" not in tensors
        info["layer_scale"] = any(k.endswith(".gamma_1") for k in tensors)
        info["learnable_pos_embed"] = "pos_embed" in tensors
    return info


def _what_it_is(info: dict) -> str:
    v = variant_for_width(info["embed_dim"])
    name = f"ViT-{v}" if v else f"an encoder of width {info['embed_dim']}"
    kind = "pre-trained (masked autoencoder)" if info["stage"] == "pt" else "fine-tuned classifier"
    extra = ""
    if info["stage"] == "ft" and info.get("num_classes"):
        ds = dataset_for_classes(info["num_classes"])
        extra = f", {info['num_classes']} classes" + (f" ({ds})" if ds else "")
    return f"{name} {kind} (embed dim {info['embed_dim']}, depth {info['depth']}{extra})"


def config_for(tensors: dict[str, np.ndarray], variant: str, dataset: str, stage: str,
               num_classes: int | None = None, **overrides) -> ArchConfig:
    """The official configuration for the request, checked against what the file holds.

    A file of another variant, stage or dataset is refused with what it actually is, since
    converting it into the requested architecture would either fail late or silently lie.
    """
    info = describe(tensors)
    v = get_variant(variant)
    what = _what_it_is(info)
    if info["stage"] != stage:
        want = "pre-trained (--stage pt)" if stage == "pt" else "fine-tuned (--stage ft)"
        raise VariantMismatchError(f"checkpoint is a {what}, not {want}: pass --stage {info['stage']}")
    if (info["embed_dim"], info["depth"]) != (v.embed_dim, v.depth):
        fits = variant_for_width(info["embed_dim"])
        hint = f": pass --variant {fits}" if fits else ""
        raise VariantMismatchError(f"checkpoint is a {what}, not ViT-{v.name} "
                                   f"(embed dim {v.embed_dim}, depth {v.depth}){hint}")
    cfg = arch_config(v.name, dataset, stage, **overrides)
    if stage == "pt":
        if (info["decoder_embed_dim"], info["decoder_depth"]) != (cfg.decoder_embed_dim, cfg.decoder_depth):
            # Depth is a training-script argument upstream; trust the file when the width agrees.
            if info["decoder_embed_dim"] != cfg.decoder_embed_dim:
                raise VariantMismatchError(
                    f"checkpoint decoder has width {info['decoder_embed_dim']}, ViT-{v.name} "
                    f"pre-training uses {cfg.decoder_embed_dim}: not an official ViT-{v.name} checkpoint")
            cfg = cfg.with_(decoder_depth=info["decoder_depth"])
        return cfg
    found = info["num_classes"]
    expected = num_classes or get_dataset(dataset).num_classes
    if found is not None and found != expected:
        ds = dataset_for_classes(found)
        hint = f": the file looks like a {ds} model, pass --dataset {ds}" if ds else ": pass --num-classes"
        if num_classes is None:
            raise VariantMismatchError(
                f"checkpoint head has {found} classes, dataset {dataset} has {expected}{hint}")
        raise VariantMismatchError(f"checkpoint head has {found} classes, --num-classes is {expected}")
    return cfg.with_(num_classes=expected, use_mean_pooling=info["use_mean_pooling"],
                     layer_scale=info["layer_scale"], learnable_pos_embed=info["learnable_pos_embed"])


def config_from_tensors(tensors: dict[str, np.ndarray], num_heads: int, decoder_num_heads: int = 0,
                        num_frames: int = 16, image_size: int = 224, mask_ratio: float = 0.9) -> ArchConfig:
    """A configuration read off the tensors alone (custom or tiny models): heads must be given."""
    info = describe(tensors)
    common = dict(embed_dim=info["embed_dim"], depth=info["depth"], num_heads=num_heads,
                  in_channels=info["in_channels"], tubelet_size=info["tubelet_size"],
                  patch_size=info["patch_size"], num_frames=num_frames, image_size=image_size,
                  mask_ratio=mask_ratio)
    if info["stage"] == "pt":
        return ArchConfig(**common, num_classes=0, decoder_embed_dim=info["decoder_embed_dim"],
                          decoder_depth=info["decoder_depth"], decoder_num_heads=decoder_num_heads)
    return ArchConfig(**common, num_classes=info["num_classes"] or 0,
                      use_mean_pooling=info["use_mean_pooling"], layer_scale=info["layer_scale"],
                      learnable_pos_embed=info["learnable_pos_embed"])
