"""One conversion, end to end: read -> map -> prove parity -> export -> prove the exports.

`convert()` is the Python API behind `vmae-convert`. It returns the parity report (also
written as `<artifact>.parity.json`) and publishes artifacts only when every gate passed.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, frameworks
from .checkpoint import LoadedCheckpoint, config_for, read_checkpoint
from .engine import check_official, load_into
from .errors import ExportError, MappingError, ParityError, VMAEError
from .export import (Staging, check_writable, describe_os_error, save_weights_h5, sha256_file, write_atomic,
                     zip_folder)
from .masking import tube_mask
from .parity import compare, describe_localisation, keras_inputs, localise, make_video, run_reference
from .variants import ArchConfig, artifact_name, get_dataset, get_variant
from .videomae_rules import ENCODER_ONLY_DROPPED, rules_for

GATES = ("tf_vs_pt", "weights_h5", "saved_model", "saved_model_xla")
# In float64 a correct mapping agrees to ~1e-10; a wrong one is off by O(1).
FLOAT64_ATOL = 1e-8


@dataclass
class ConvertOptions:
    variant: str = "S"
    dataset: str = "k400"
    stage: str = "ft"
    checkpoint: str | None = None
    synthetic: bool = False
    seed: int = 0
    output_dir: str = "."
    atol: float = 1e-5
    rtol: float = 1e-5
    batch: int = 1
    encoder_only: bool = False
    pooled: bool = False
    float64: bool = True
    xla: bool = True
    num_classes: int | None = None
    config: ArchConfig | None = None  # explicit architecture (custom/tiny models): skips the zoo table
    name: str | None = None  # artifact base name; default from the zoo naming
    synthetic_dir: str | None = None  # where --synthetic writes its .pth (default: output_dir)
    extra: dict = field(default_factory=dict)


class Phases:
    """Times each step, reports it to `progress`, and keeps the figures for the report."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress or (lambda msg: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.progress(f"{name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.progress(f"{name} done in {self.seconds[name]:.1f}s")


def versions() -> dict:
    out = {"python": platform.python_version(), "vmae-convert": __version__}
    for pkg in ("torch", "tensorflow-cpu", "tensorflow", "keras", "numpy", "timm", "h5py"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def default_name(opts: ConvertOptions) -> str:
    if opts.name:
        return opts.name
    if opts.config is not None:
        return "custom"
    name = artifact_name(opts.variant, opts.dataset, opts.stage)
    return name + "_encoder" if opts.encoder_only else name


def _validate(opts: ConvertOptions) -> None:
    if opts.config is None:
        try:
            get_variant(opts.variant)
            get_dataset(opts.dataset)
        except ValueError as err:
            raise VMAEError(str(err)) from None
    if opts.stage not in ("ft", "pt"):
        raise VMAEError(f"unknown stage {opts.stage!r}; expected ft or pt")
    if opts.encoder_only and opts.stage != "pt":
        raise VMAEError("--encoder-only takes a pre-trained checkpoint: add --stage pt")
    if not opts.synthetic and not opts.checkpoint:
        raise VMAEError("no checkpoint: pass --checkpoint PATH or --synthetic")
    if opts.batch < 1:
        raise VMAEError("--batch must be at least 1")


def _load(opts: ConvertOptions, name: str, phases: Phases) -> tuple[LoadedCheckpoint, Path]:
    if opts.synthetic:
        from .synthetic import write_synthetic_checkpoint
        from .variants import arch_config

        cfg = opts.config or arch_config(opts.variant, opts.dataset, opts.stage)
        path = Path(opts.synthetic_dir or opts.output_dir) / f"synthetic_{name}_seed{opts.seed}.pth"
        with phases("write synthetic checkpoint"):
            write_synthetic_checkpoint(cfg, path, opts.seed)
    else:
        path = Path(opts.checkpoint)
    with phases("load checkpoint"):
        return read_checkpoint(path), path


def check_official_keys(tensors: dict, cfg: ArchConfig) -> None:
    """Missing, unexpected and mis-shaped tensors against the official model for `cfg` (built on
    the meta device: names and shapes, no memory); raises MappingError listing them."""
    torch = frameworks.load_torch()
    from pt_reference import build_reference

    try:
        with torch.device("meta"):
            official = {k: tuple(t.shape) for k, t in build_reference(cfg).state_dict().items()}
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as err:
        raise MappingError(f"cannot build a VideoMAE with {cfg}: {err}") from None
    check_official({k: tuple(v.shape) for k, v in tensors.items()}, official)


@contextlib.contextmanager
def _writing(where, tf):
    """Failures of a write (disk full, ulimit -f, permissions) become one ExportError line;
    tensorflow reports them as OpErrors (OutOfRangeError for ENOSPC/EFBIG), Python as OSErrors."""
    try:
        yield
    except OSError as err:
        raise ExportError(describe_os_error(err, where)) from None
    except tf.errors.OpError as err:
        message = err.message or ""
        for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            if os.strerror(code) in message:
                raise ExportError(describe_os_error(OSError(code, os.strerror(code)), where)) from None
        detail = re.sub(r"\{\{.*?\}\}\s*", "", message).strip().splitlines()
        detail = detail[0][:200] if detail else type(err).__name__
        raise ExportError(f"cannot write {where} ({type(err).__name__}: {detail}): "
                          "check free space and permissions, or choose another --output-dir") from None


def _reference_fn(reference, cfg, opts):
    """What the PyTorch side computes for this conversion, as f(video, mask, dtype)."""
    if not opts.encoder_only:
        return lambda video, mask, dtype: run_reference(reference, video, mask, dtype)

    torch = frameworks.load_torch()

    def encoder(video, mask, dtype):
        x = torch.from_numpy(video.astype(dtype))
        visible = torch.zeros(video.shape[0], cfg.num_patches, dtype=torch.bool)
        with torch.inference_mode():
            tokens = reference.encode(x, visible)[-1]
            return (tokens.mean(1) if opts.pooled else tokens).numpy()

    return encoder


def _build(cfg, opts, dtype=None):
    from tf_models import build_backbone, build_model

    if opts.encoder_only:
        return build_backbone(cfg, pooled=opts.pooled, dtype=dtype)
    return build_model(cfg, dtype=dtype)


def _copy_weights(src, dst) -> None:
    """The weights of `src` into `dst`, a model of the same architecture: same paths, same order."""
    pairs = list(zip(src.weights, dst.weights))
    if len(src.weights) != len(dst.weights) or any(a.path != b.path for a, b in pairs):
        raise VMAEError("internal error: the float64 model's weights differ from the model's")
    for a, b in pairs:
        b.assign(a.value)


def _keras_forward(model, video, mask, dtype="float32") -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(model(keras_inputs(video, mask, dtype), training=False))


def convert(progress: Callable[[str], None] | None = None, check: bool = False, **kwargs) -> dict:
    """Convert one checkpoint; returns the report dict. With check=True a failed gate raises
    ParityError (after the report is written). Keyword arguments are ConvertOptions fields."""
    opts = ConvertOptions(**kwargs)
    _validate(opts)
    phases = Phases(progress)
    started = time.time()
    name = default_name(opts)
    out_dir = Path(opts.output_dir)
    check_writable(out_dir)
    # Everything a user's file can get wrong is checked with torch alone, before tensorflow
    # loads and any model is built: a bad checkpoint is refused in seconds.
    loaded, ckpt_path = _load(opts, name, phases)
    tensors = loaded.tensors
    cfg = opts.config or config_for(tensors, opts.variant, opts.dataset, opts.stage, opts.num_classes)
    check_official_keys(tensors, cfg)
    with phases("import tensorflow"):
        torch, tf, keras = frameworks.load()
    from pt_reference import float64_compute, load_reference
    from tf_models import Float64Compute, export_saved_model

    rules = rules_for(cfg.is_pretrain and "pt" or "ft", opts.encoder_only)
    dropped = []
    if opts.encoder_only:
        dropped = [k for k in tensors if k.startswith(ENCODER_ONLY_DROPPED)]
    mapped = {k: v for k, v in tensors.items() if k not in set(dropped)}

    with phases("build keras model"):
        model = _build(cfg, opts)
    with phases("map weights"):
        assignments = load_into(model, mapped, rules)
    with phases("build pytorch reference"):
        # The checkpoint's own tensors become its weights: no copy, no initial values.
        reference = load_reference(cfg, {k: torch.from_numpy(v) for k, v in tensors.items()})
    reference_fn = _reference_fn(reference, cfg, opts)

    video = make_video(cfg, opts.batch, opts.seed)
    mask = tube_mask(cfg, opts.batch, opts.seed) if cfg.is_pretrain and not opts.encoder_only else None
    checks: dict[str, dict] = {}
    with phases("pytorch forward"):
        pt_out = reference_fn(video, mask, "float32")
    with phases("keras forward"):
        tf_out = _keras_forward(model, video, mask)
    checks["tf_vs_pt"] = compare(tf_out, pt_out, opts.rtol, opts.atol)
    localisation = None
    if not checks["tf_vs_pt"]["passed"] and not opts.encoder_only:
        with phases("localise divergence"):
            localisation = localise(reference, model, video, mask)
        checks["tf_vs_pt"]["detail"] = describe_localisation(localisation)

    # float64 on both sides, from the float32 weights (exact), without a float64 copy of either
    # model: PyTorch casts one weight at a time where it is used, Keras casts in its layers.
    if opts.float64:
        with phases("pytorch forward float64"), float64_compute(reference):
            pt64 = reference_fn(video, mask, "float64")
    # The Keras model holds the weights now. Freeing the checkpoint (its mapped pages too) and
    # the reference (which holds the same tensors) keeps at most two copies of the weights alive.
    del reference, reference_fn, tensors, mapped
    loaded.tensors = {}
    if opts.float64:
        with phases("keras forward float64"):
            model64 = _build(cfg, opts, dtype=Float64Compute())
            _copy_weights(model, model64)
            checks["float64"] = compare(_keras_forward(model64, video, mask, "float64"), pt64, 0.0,
                                        FLOAT64_ATOL)
            checks["float64"]["gate"] = False  # informative: shows mapping exactness without fp32 noise
            del model64, pt64

    artifacts = {}
    if checks["tf_vs_pt"]["passed"]:
        artifacts = _export_and_verify(model, cfg, opts, name, out_dir, video, mask, tf_out, pt_out,
                                       checks, phases, export_saved_model, tf, keras)
    else:
        for gate in GATES[1:]:
            checks[gate] = {"passed": False, "skipped": True, "detail": "not run: the Keras model disagrees"}

    passed = all(checks[g]["passed"] for g in GATES if g in checks)
    report = {
        "artifact": name,
        "passed": passed,
        "variant": opts.variant if opts.config is None else None,
        "dataset": opts.dataset if opts.config is None else None,
        "stage": opts.stage,
        "encoder_only": opts.encoder_only,
        "checkpoint": {
            "path": str(ckpt_path),
            "sha256": sha256_file(ckpt_path),
            "size": ckpt_path.stat().st_size,
            "container": loaded.container,
            "synthetic": opts.synthetic,
            "notes": loaded.notes,
        },
        "config": cfg.to_dict(),
        "tensors_mapped": len(assignments),
        "tensors_dropped": len(dropped),
        "seed": opts.seed,
        "batch": opts.batch,
        "tolerance": {"rtol": opts.rtol, "atol": opts.atol},
        "output_shape": list(pt_out.shape),
        "output_std": float(np.std(pt_out)),
        "checks": checks,
        "localisation": localisation,
        "artifacts": artifacts,
        "timings": phases.seconds,
        "wall_seconds": round(time.time() - started, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / f"{name}.parity.json", json.dumps(report, indent=2).encode())
    if check and not passed:
        raise ParityError(f"{name}: parity failed ({failed_summary(report)}); report in {out_dir / (name + '.parity.json')}")
    return report


def _export_and_verify(model, cfg, opts, name, out_dir, video, mask, tf_out, pt_out, checks, phases,
                       export_saved_model, tf, keras) -> dict:
    h5, folder, zipped = f"{name}.weights.h5", name, f"{name}.zip"
    with Staging(out_dir, name) as st:
        with phases("save weights.h5"), _writing(out_dir / h5, tf):
            save_weights_h5(model, st.path(h5))
        with phases("reload weights.h5"):
            fresh = _build(cfg, opts)
            fresh.load_weights(st.path(h5))
            same = all(np.array_equal(a.numpy(), b.numpy()) and a.path == b.path
                       for a, b in zip(model.weights, fresh.weights)) and len(model.weights) == len(fresh.weights)
            again = _keras_forward(fresh, video, mask)
            checks["weights_h5"] = {**compare(again, pt_out, opts.rtol, opts.atol),
                                    "weights_identical": same,
                                    "predictions_identical": bool(np.array_equal(again, tf_out))}
            checks["weights_h5"]["passed"] &= same and checks["weights_h5"]["predictions_identical"]
            del fresh
        with phases("export savedmodel"), _writing(out_dir / folder, tf):
            export_saved_model(model, st.path(folder))
        with phases("reload savedmodel"):
            loaded = tf.saved_model.load(str(st.path(folder)))
            args = keras_inputs(video, mask)
            args = args if isinstance(args, list) else [args]
            checks["saved_model"] = compare(loaded.serve(*args).numpy(), pt_out, opts.rtol, opts.atol)
        if opts.xla:
            with phases("savedmodel under xla"):
                xla = tf.function(loaded.serve, jit_compile=True)
                checks["saved_model_xla"] = compare(xla(*args).numpy(), pt_out, opts.rtol, opts.atol)
        else:
            checks["saved_model_xla"] = {"passed": True, "skipped": True, "detail": "--no-xla"}
        del loaded
        with phases("zip savedmodel"), _writing(out_dir / zipped, tf):
            zip_folder(st.path(folder), st.path(zipped))
        if not all(checks[g]["passed"] for g in GATES):
            return {}
        published = st.publish([h5, zipped, folder], stale=[out_dir / f"{name}.parity.json"])
    artifacts = {}
    for filename, path in published.items():
        if path.is_dir():
            artifacts[filename] = {"path": str(path), "kind": "savedmodel",
                                   "size": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())}
        else:
            artifacts[filename] = {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}
    return artifacts


def failed_summary(report: dict) -> str:
    bad = [g for g, c in report["checks"].items() if c.get("gate", True) and not c["passed"] and not c.get("skipped")]
    parts = []
    for g in bad:
        c = report["checks"][g]
        fig = f"max abs {c['max_abs']:.3g}" if c.get("max_abs") is not None else c.get("detail", "")
        parts.append(f"{g}: {fig}" + (f", {c['detail']}" if c.get("detail") and c.get("max_abs") is not None else ""))
    return "; ".join(parts) or "see report"
