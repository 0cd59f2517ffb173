"""Reading official checkpoints safely and telling what they are.

A `.pth` file is a pickle, and a pickle can run code. We only ever call
`torch.load(..., weights_only=True)`, which refuses any object but tensors, plain
containers and an explicit allow-list (argparse.Namespace: the official training script
stores its arguments next to the weights).
"""
from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import frameworks
from .errors import CheckpointError, MappingError, VariantMismatchError, first_line
from .variants import (
    ArchConfig,
    arch_config,
    dataset_for_classes,
    get_dataset,
    get_variant,
    variant_for_width,
)

CONTAINER_KEYS = ("model", "module", "state_dict")
# DDP's `module.`, torch.compile's `_orig_mod.` (VideoMAE V2's pre-training wraps its model in it),
# the fine-tuning loaders' `backbone.`; they can nest (`module._orig_mod.`).
STRIPPED_PREFIXES = ("module.", "_orig_mod.", "backbone.")


@dataclass
class LoadedCheckpoint:
    """Official tensors as float32 numpy arrays, keyed by official names."""

    tensors: dict[str, np.ndarray]
    source: str
    container: str  # "model", "module", ... or "bare"
    notes: list[str] = field(default_factory=list)


def _torch_load(path: Path, fmt: str):
    torch = frameworks.load_torch()
    with torch.serialization.safe_globals([argparse.Namespace]):
        # weights_only=True passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "zip")
    if fmt == "zip":
        _check_storage_sizes(path, obj, torch)
    return obj


def _check_storage_sizes(path: Path, obj, torch) -> None:
    """With mmap, torch cuts each tensor's bytes out of the mapped file by offset and length
    without comparing them to its record's size (the plain read does): a damaged archive whose
    record is short would give tensors of the neighbouring bytes. The records must hold them all."""
    with zipfile.ZipFile(path) as zf:
        recorded = sum(i.file_size for i in zf.infolist() if re.search(r"(^|/)data/\d+$", i.filename))
    storages, seen, todo = {}, set(), [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided or item.device.type != "cpu":
                continue  # sparse or meta: unwrap refuses them by name
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            todo.extend(item)
        elif isinstance(item, argparse.Namespace):
            todo.extend(vars(item).values())
    needed = sum(storages.values())
    if needed > recorded:
        raise CheckpointError(f"{path} is truncated or corrupt (its tensors need {needed} bytes, its storage "
                              f"records hold {recorded}): {_REDOWNLOAD}")


# torch.save writes a zip (torch >= 1.6) or the legacy stream: five pickles, the first being this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_REDOWNLOAD = "download it again"
_OFFICIAL = "pass the official .pth file"


def _what_bytes(head: bytes) -> str:
    """What a file that is not a torch checkpoint looks like, from its first bytes."""
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:256]:
        return f"an HTML page (the download returned a web page instead of the file): {_REDOWNLOAD}"
    if head.startswith(b"\x80"):
        return ("a plain Python pickle, not written by torch.save; it was not unpickled (that could run code): "
                + _OFFICIAL)
    if head.startswith(b"\x1f\x8b"):
        return "a gzip/tar archive: extract the .pth from it first"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras .h5 weights?): " + _OFFICIAL
    if head.startswith(b"PK\x05\x06"):
        return f"an empty zip archive: {_REDOWNLOAD}"
    if len(head) > 10 and head[8:10] == b'{"':
        return "a safetensors file, which is not supported: " + _OFFICIAL
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"an unknown binary format (starts with {head[:8].hex()}): {_OFFICIAL} or {_REDOWNLOAD}"
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        return f"a text file starting with {text.strip()[:40]!r}: {_OFFICIAL}"
    return f"an unknown format (starts with {head[:8].hex()}): {_OFFICIAL}"


def _sniff(path: Path) -> str:
    """'zip' or 'legacy' for the two formats torch.save writes; a CheckpointError for anything else.

    Only the zip directory and the opcodes of legacy pickles are read here (pickletools parses,
    it never builds objects), which turns what torch would report as an obscure internal error
    into what the file is."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise CheckpointError(f"{path} is truncated or corrupt (its zip directory is missing or damaged, "
                                  f"the download was probably cut short): {_REDOWNLOAD}") from None
        if any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names):
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict: "
                                  "save model.state_dict() with torch.save and pass that file")
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            inner = [n for n in names if n.endswith((".pth", ".pt", ".bin", ".ckpt"))]
            hint = f": extract {inner[0]} from it first" if inner else f": {_OFFICIAL}"
            listed = ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")
            raise CheckpointError(f"{path} is a zip archive of other files ({listed}), "
                                  f"not a PyTorch checkpoint{hint}")
        return "zip"
    try:
        ops = list(pickletools.genops(io.BytesIO(head)))
        is_legacy = any(op.name.startswith("LONG") and arg == _LEGACY_MAGIC for op, arg, _ in ops[:3])
    except Exception:
        is_legacy = False
    if not is_legacy:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint but {_what_bytes(head)}")
    with open(path, "rb") as f:  # magic, protocol, sys info, the object, storage keys
        try:
            for _ in range(5):
                for _op in pickletools.genops(f):
                    pass
        except Exception as err:
            raise CheckpointError(f"{path} is truncated or corrupt (its pickled header ends early or is "
                                  f"damaged: {first_line(err)}): {_REDOWNLOAD}") from None
    return "legacy"


def read_checkpoint(path) -> LoadedCheckpoint:
    """Load a checkpoint file without executing anything in it, unwrap its container."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): {_REDOWNLOAD}")
    try:
        fmt = _sniff(path)
        obj = _torch_load(path, fmt)
    except CheckpointError:
        raise
    except OSError as err:  # the file itself: permissions, an I/O error
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except pickle.UnpicklingError as err:
        # The weights-only unpickler refused an import or an opcode: code, or objects that are not weights.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it would import {found.group(1)} when unpickled" if found else (
            f"its pickle holds more than plain weights ({first_line(err, 80)})")
        raise CheckpointError(f"refusing to load {path}: {what}; nothing in it was run. Only plain weight "
                              f"files are loaded: use the official checkpoint") from None
    except Exception as err:  # torch on a damaged file: RuntimeError, EOFError, KeyError, IndexError, ...
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint (truncated or corrupt: "
                              f"{first_line(err)}): {_REDOWNLOAD}") from None
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
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"{source}: state dict key {bad_keys[0]!r} is not a string "
                              f"({len(bad_keys)} such keys): not a state dict of named tensors")
    prefix = _common_prefix(list(obj))
    if prefix:
        notes.append(f"stripped key prefix '{prefix}'")
    converted: dict[str, list[str]] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: '{key}' is a {type(value).__name__}, not a tensor")
        name = key[len(prefix):]
        if name in tensors:
            raise CheckpointError(f"{source}: '{name}' appears twice after stripping '{prefix}'")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: '{key}' has dtype {value.dtype}, expected floating point weights")
        if value.layout != torch.strided:
            raise CheckpointError(f"{source}: '{key}' is a {value.layout} tensor, expected dense weights")
        if value.device.type != "cpu":  # map_location="cpu" moves real devices: this one holds no data
            raise CheckpointError(f"{source}: '{key}' is a {value.device.type} tensor without data, "
                                  "expected stored weights")
        # float32, the usual case, is checked once, by numpy: torch.isfinite(...).all() takes ~9x
        # as long (2 s of a ViT-B load). Other dtypes, and any failure, get the detailed check.
        quick = value.dtype == torch.float32 and bool(np.isfinite(value.detach().numpy()).all())
        if not quick and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            raise CheckpointError(f"{source}: '{name}' has {nan} NaN and {inf} Inf values of {value.numel()}; "
                                  "refusing a damaged or diverged checkpoint: use another file")
        if value.dtype != torch.float32:
            converted.setdefault(str(value.dtype).replace("torch.", ""), []).append(name)
        array = value.detach().to(torch.float32).numpy()
        if not quick and not np.isfinite(array).all():
            raise CheckpointError(f"{source}: '{name}' has {value.dtype} values beyond the float32 range; "
                                  "refusing to convert them to infinity")
        tensors[name] = array
    for dtype, names in converted.items():  # one line per dtype: a line per tensor is noise
        listed = ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")
        notes.append(f"{len(names)} tensors stored as {dtype} ({listed}), converted to float32")
    return LoadedCheckpoint(tensors, source, container, notes)


def _common_prefix(keys: list[str]) -> str:
    """The wrappers' prefixes every key shares, outermost first (STRIPPED_PREFIXES); then `encoder.`
    only for a lone encoder (a pre-trained model keeps it: its decoder keys tell the two apart)."""
    found = ""
    while keys:
        rest = [k[len(found):] for k in keys]
        step = next((p for p in STRIPPED_PREFIXES if all(k.startswith(p) for k in rest)), None)
        if step is None:
            break
        found += step
    rest = [k[len(found):] for k in keys]
    if rest and all(k.startswith("encoder.") for k in rest):
        found += "encoder."
    return found


_BLOCK = re.compile(r"^(encoder\.|decoder\.)?blocks\.(\d+)\.")


def _depth(tensors, prefix: str) -> int:
    ids = {int(m.group(2)) for k in tensors if (m := _BLOCK.match(k)) and (m.group(1) or "") == prefix}
    return max(ids) + 1 if ids else 0


def describe(tensors: dict[str, np.ndarray]) -> dict:
    """What the tensors say about the model: stage, widths, depths, classes, optional parts."""
    pretrain = "encoder.patch_embed.proj.weight" in tensors or (
        "patch_embed.proj.weight" not in tensors
        and ("mask_token" in tensors or any(k.startswith("decoder.") for k in tensors)))
    enc = "encoder." if pretrain else ""
    conv = tensors.get(f"{enc}patch_embed.proj.weight")
    if conv is None or conv.ndim != 5 or min(conv.shape) < 1:
        found = "" if conv is None else f" (found shape {list(conv.shape)})"
        raise VariantMismatchError(
            f"no {enc}patch_embed.proj.weight Conv3d tensor{found}: this is not a VideoMAE checkpoint")
    info = {
        "stage": "pt" if pretrain else "ft",
        "embed_dim": int(conv.shape[0]),
        "in_channels": int(conv.shape[1]),
        "tubelet_size": int(conv.shape[2]),
        "patch_size": int(conv.shape[3]),
        "depth": _depth(tensors, enc),
        "layer_scale": any(k.endswith(".gamma_1") for k in tensors),
    }
    if pretrain:
        token = tensors.get("mask_token")
        info["decoder_embed_dim"] = int(token.shape[-1]) if token is not None and token.ndim else 0
        info["decoder_depth"] = _depth(tensors, "decoder.")
    else:
        head = tensors.get("head.weight")
        info["num_classes"] = int(head.shape[0]) if head is not None and head.ndim == 2 else None
        info["use_mean_pooling"] = "fc_norm.weight" in tensors or "norm.weight" not in tensors
        info["learnable_pos_embed"] = "pos_embed" in tensors
    return info


def _what_it_is(info: dict, generation: str = "v1") -> str:
    v = variant_for_width(info["embed_dim"], generation)
    name = f"ViT-{v}" if v else f"an encoder of width {info['embed_dim']}"
    kind = "pre-trained (masked autoencoder)" if info["stage"] == "pt" else "fine-tuned classifier"
    extra = ""
    if info["stage"] == "ft" and info.get("num_classes"):
        ds = dataset_for_classes(info["num_classes"])
        extra = f", {info['num_classes']} classes" + (f" ({ds})" if ds else "")
    return f"{name} {kind} (embed dim {info['embed_dim']}, depth {info['depth']}{extra})"


def config_for(tensors: dict[str, np.ndarray], variant: str, dataset: str, stage: str,
               num_classes: int | None = None, generation: str = "v1", **overrides) -> ArchConfig:
    """The official configuration for the request, checked against what the file holds.

    A file of another variant, stage or dataset is refused with what it actually is, since
    converting it into the requested architecture would either fail late or silently lie.
    """
    info = describe(tensors)
    v = get_variant(variant, generation)
    what = _what_it_is(info, generation)
    if info["stage"] != stage:
        want = "pre-trained (--stage pt)" if stage == "pt" else "fine-tuned (--stage ft)"
        raise VariantMismatchError(f"checkpoint is a {what}, not {want}: pass --stage {info['stage']}")
    # Same width, other depth: blocks are missing or extra, which the key check lists by name.
    if info["embed_dim"] != v.embed_dim:
        fits = variant_for_width(info["embed_dim"], generation)
        hint = f": pass --variant {fits}" if fits else ""
        raise VariantMismatchError(f"checkpoint is a {what}, not ViT-{v.name} "
                                   f"(embed dim {v.embed_dim}, depth {v.depth}){hint}")
    cfg = arch_config(v.name, dataset, stage, generation, **overrides)
    if stage == "pt":
        if (info["decoder_embed_dim"], info["decoder_depth"]) != (cfg.decoder_embed_dim, cfg.decoder_depth):
            # Depth is a training-script argument upstream; trust the file when the width agrees.
            # No mask_token or no decoder blocks at all: keep the official shape, the key check names them.
            if info["decoder_embed_dim"] and info["decoder_embed_dim"] != cfg.decoder_embed_dim:
                raise VariantMismatchError(
                    f"checkpoint decoder has width {info['decoder_embed_dim']}, ViT-{v.name} "
                    f"pre-training uses {cfg.decoder_embed_dim}: not an official ViT-{v.name} checkpoint")
            if info["decoder_depth"]:
                cfg = cfg.with_(decoder_depth=info["decoder_depth"])
        return cfg.with_(layer_scale=info["layer_scale"])
    found = info["num_classes"]
    expected = num_classes or get_dataset(dataset).num_classes
    if found is not None and found != expected:
        ds = dataset_for_classes(found)
        if num_classes is not None:
            raise VariantMismatchError(f"checkpoint head has {found} classes, --num-classes is {expected}")
        if ds is not None:  # another zoo dataset's head: almost surely the wrong --dataset
            raise VariantMismatchError(f"checkpoint head has {found} classes, dataset {dataset} has "
                                       f"{expected}: the file looks like a {ds} model, pass --dataset {ds}")
        expected = found  # a head fine-tuned on the user's own classes: read it from the file
    return cfg.with_(num_classes=expected, use_mean_pooling=info["use_mean_pooling"],
                     layer_scale=info["layer_scale"], learnable_pos_embed=info["learnable_pos_embed"])


MAX_DEPTH = 256  # ViT-H has 32 blocks; a larger index is a damaged or foreign key, not a model


def _check_buildable(info: dict, num_heads: int, decoder_num_heads: int, num_frames: int, image_size: int):
    """Refuse tensors that describe no VideoMAE one could build, before anything is built."""
    problems = []
    if not 1 <= info["depth"] <= MAX_DEPTH:
        problems.append(f"{info['depth']} encoder blocks (expected 1 to {MAX_DEPTH})")
    if num_heads < 1 or info["embed_dim"] % num_heads:
        problems.append(f"width {info['embed_dim']} does not split into {num_heads} heads")
    if image_size % info["patch_size"] or num_frames % info["tubelet_size"]:
        problems.append(f"patches of {info['tubelet_size']}x{info['patch_size']}x{info['patch_size']} "
                        f"do not tile {num_frames}x{image_size}x{image_size} clips")
    if info["stage"] == "pt":
        dim, depth = info["decoder_embed_dim"], info["decoder_depth"]
        if not dim or not 1 <= depth <= MAX_DEPTH:
            problems.append(f"a decoder of width {dim} with {depth} blocks (mask_token or decoder.blocks missing)")
        elif decoder_num_heads < 1 or dim % decoder_num_heads:
            problems.append(f"decoder width {dim} does not split into {decoder_num_heads} heads")
    elif not info["num_classes"]:
        problems.append("no head.weight [classes, width] tensor")
    if problems:
        raise MappingError("checkpoint does not describe a VideoMAE that can be built: " + "; ".join(problems))


def config_from_tensors(tensors: dict[str, np.ndarray], num_heads: int, decoder_num_heads: int = 0,
                        num_frames: int = 16, image_size: int = 224, mask_ratio: float = 0.9) -> ArchConfig:
    """A configuration read off the tensors alone (custom or tiny models): heads must be given."""
    info = describe(tensors)
    _check_buildable(info, num_heads, decoder_num_heads, num_frames, image_size)
    common = dict(embed_dim=info["embed_dim"], depth=info["depth"], num_heads=num_heads,
                  in_channels=info["in_channels"], tubelet_size=info["tubelet_size"],
                  patch_size=info["patch_size"], num_frames=num_frames, image_size=image_size,
                  mask_ratio=mask_ratio)
    if info["stage"] == "pt":
        return ArchConfig(**common, num_classes=0, decoder_embed_dim=info["decoder_embed_dim"],
                          decoder_depth=info["decoder_depth"], decoder_num_heads=decoder_num_heads,
                          layer_scale=info["layer_scale"])
    return ArchConfig(**common, num_classes=info["num_classes"] or 0,
                      use_mean_pooling=info["use_mean_pooling"], layer_scale=info["layer_scale"],
                      learnable_pos_embed=info["learnable_pos_embed"])
