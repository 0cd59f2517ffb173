"""One conversion, end to end: read -> map -> prove parity -> export -> prove the exports.

`convert()` is the Python API behind `vmae-convert`. It returns the parity report (also
written as `<artifact>.parity.json`) and publishes artifacts only when every gate passed.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import gc
import json
import math
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

from . import __version__, families, frameworks, interrupts
from .checkpoint import LoadedCheckpoint, config_for, describe, read_checkpoint
from .engine import check_official, load_into
from .errors import ExportError, MappingError, ParityError, VMAEError, first_line
from .export import (Staging, check_writable, describe_os_error, save_weights_h5, sha256_file, tree_size,
                     write_atomic, zip_folder)
from .masking import tube_mask
from .parity import (compare, describe_localisation, keras_inputs, keras_stages, locate, make_video, profile_of,
                     reference_stages, run_reference)
from .clip_shape import adapt_tensors, with_clip_shape
from .variants import (ArchConfig, arch_config, artifact_name, file_generation, generation_for, get_dataset,
                       get_generation)

GATES = ("tf_vs_pt", "weights_h5", "keras", "saved_model", "saved_model_xla", "saved_model_uint8", "tflite")
# tf_models.export's TFLITE_LIMIT_BYTES, here without importing keras before torch has loaded.
TFLITE_LIMIT_BYTES = 2**31
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
    num_frames: int | None = None  # clip shape to export at (default: the checkpoint's, 16x224)
    image_size: int | None = None
    tflite: bool = False  # also write and gate <name>.tflite (LiteRT, batch 1)
    labels: list[str] | None = None  # class names of a custom head (zoo datasets: tf_models.labels)
    config_file: str | None = None  # config.json of a transformers weight file given alone
    # The --variant/--dataset/--stage a user gave for a file that states its own architecture
    # (config.json): checked against it, not used to build.
    expect: dict = field(default_factory=dict)
    reference: str = "auto"  # transformers input: "transformers", "pt_reference" or whichever is installed
    family: str | None = None  # official, hf or v2; None: from the file, the variant/dataset and the shapes
    remap_head: str | None = None  # k400/k600/k700: a K710 head read as that dataset's (VideoMAE V2's label maps)
    extra: dict = field(default_factory=dict)


class Phases:
    """Times each step, reports it to `progress`, and keeps the figures for the report."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress or (lambda msg: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        interrupts.check()  # each boundary is a point where a lost signal still stops the run
        self.progress(f"{name} ...")
        start = time.perf_counter()
        yield
        interrupts.check()
        _trim_heap()  # a phase's freed activations must not stay resident into the next one
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.progress(f"{name} done in {self.seconds[name]:.1f}s")


try:  # glibc keeps freed memory in its heap, counted as resident, until asked to give it back
    _libc = ctypes.CDLL("libc.so.6")
    _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError):  # not glibc: nothing to tune
    _malloc_trim = _mallopt = None
_M_MMAP_THRESHOLD = -3


def _tune_heap() -> None:
    """Buffers of 16 MB and more (float64 attention scores, a ViT-H's MLP activations) get
    mappings of their own, returned to the OS when freed. By default glibc raises that
    threshold to the largest buffer freed so far, so such buffers pile up in its heap instead:
    0.1-0.2 GiB more resident memory at the peak, for no speed."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, 16 << 20)


def _trim_heap() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def _release() -> None:
    """Really free what was just deleted: Keras models and TensorFlow functions are full of
    reference cycles, so `del model` frees nothing until the cycle collector runs (~0.5 s)."""
    gc.collect()
    _trim_heap()


def versions() -> dict:
    out = {"python": platform.python_version(), "vmae-convert": __version__}
    for pkg in ("torch", "tensorflow-cpu", "tensorflow", "keras", "numpy", "timm", "h5py", "transformers",
                "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def default_name(opts: ConvertOptions) -> str:
    if opts.name:
        return opts.name
    if _family(opts) is families.hf:
        return families.hf.default_name(opts.checkpoint)
    if opts.config is not None:
        return "custom"
    generation = _generation(opts)
    trained = arch_config(opts.variant, opts.dataset, opts.stage, generation)
    name = artifact_name(opts.variant, opts.dataset, opts.stage, opts.num_frames or trained.num_frames,
                         opts.image_size or trained.image_size, generation)
    if opts.encoder_only:
        # pooled features are another model than the token backbone: never the same file
        return name + ("_encoder_pooled" if opts.pooled else "_encoder")
    if opts.remap_head:
        label = get_dataset(opts.dataset).label
        return name.replace(f"_{label}_", f"_{label}to{opts.remap_head.upper()}_", 1)
    return name


def name_for_classes(name: str, cfg: ArchConfig, opts: ConvertOptions) -> str:
    """The official release name is the dataset's own head: a head fine-tuned on other classes
    (read from the file, or --num-classes) gets `_<n>cls` appended, so it never passes for it."""
    if opts.name or opts.config is not None or cfg.is_pretrain or _family(opts).GENERATION is None:
        return name
    if opts.remap_head or cfg.num_classes == get_dataset(opts.dataset).num_classes:
        return name  # a remapped head is the target dataset's by construction (remap_head checks 710 rows)
    return f"{name}_{cfg.num_classes}cls"


def failed_report_path(out_dir: Path, name: str) -> Path:
    """Where a failed run's report goes. `<name>.parity.json` vouches for the published files beside
    it: while an earlier run's artifacts are there, a failed re-run reports under another name."""
    if (out_dir / f"{name}.weights.h5").exists() or (out_dir / name).exists():
        return out_dir / f"{name}.failed.parity.json"
    return out_dir / f"{name}.parity.json"


def _finite_non_negative(value, option: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise VMAEError(f"{option} must be a finite number >= 0, got {value}")


def _family(opts: ConvertOptions):
    """--family when given; else the file's format, where a variant or dataset only VideoMAE V2
    has (ViT-g, K710, Hybrid...) makes an official-format file V2's."""
    if opts.family:
        return families.get(opts.family)
    implied = generation_for(opts.variant, opts.dataset, opts.stage)
    if opts.synthetic or not opts.checkpoint:
        return families.v2 if implied == "v2" else families.official
    family = families.detect(opts.checkpoint, opts.config_file)
    return families.v2 if family is families.official and implied == "v2" else family


def _generation(opts: ConvertOptions) -> str:
    """The variant table this run reads: v1 or v2 (a family stating its own architecture: v1's names)."""
    return _family(opts).GENERATION or "v1"


def _follow_file_generation(opts: ConvertOptions, tensors: dict, notes: list[str]) -> None:
    """A V2 file given as v1, or the other way round, is converted as what its shapes prove it is
    (ViT-g/14, the 512-wide V2 ViT-H decoder): mis-shaped by the asked table, right by the other.
    Only an explicit --family that the file contradicts is refused."""
    found, why = file_generation(describe(tensors))
    asked = _generation(opts)
    if found is None or found == asked:
        return
    title = get_generation(found).title
    if opts.family:
        raise VMAEError(f"--family {opts.family}: the checkpoint is {title}'s ({why}); "
                        f"pass --family {'v2' if found == 'v2' else 'official'} or leave --family out")
    opts.family = "v2" if found == "v2" else "official"
    g = get_generation(found)
    if opts.stage == "pt" and opts.dataset not in g.pretrain_datasets and len(g.pretrain_datasets) == 1:
        opts.dataset = g.pretrain_datasets[0]  # V2 pre-trained on UnlabeledHybrid only
    notes.append(f"a {title} checkpoint ({why}): converted with {title}'s variant table")


def _validate(opts: ConvertOptions) -> None:
    if opts.family is not None and opts.family not in families.FAMILIES:
        raise VMAEError(f"unknown --family {opts.family!r}; expected one of {', '.join(families.FAMILIES)}")
    if opts.config is None:
        try:  # the variant, then the dataset, then whether this generation has that pair
            arch_config(opts.variant, opts.dataset, opts.stage, _generation(opts))
        except ValueError as err:
            raise VMAEError(str(err)) from None
    if opts.stage not in ("ft", "pt"):
        raise VMAEError(f"unknown stage {opts.stage!r}; expected ft or pt")
    if opts.encoder_only and opts.stage != "pt":
        raise VMAEError("--encoder-only takes a pre-trained checkpoint: add --stage pt")
    if opts.pooled and not opts.encoder_only:
        raise VMAEError("--pooled applies to --encoder-only exports only: add --encoder-only (and --stage pt)")
    if not opts.synthetic and not opts.checkpoint:
        raise VMAEError("no checkpoint: pass --checkpoint PATH or --synthetic")
    if opts.synthetic and opts.checkpoint:
        raise VMAEError("--checkpoint and --synthetic exclude each other: --synthetic converts generated "
                        "weights, not the file; drop one")
    if opts.batch < 1:
        raise VMAEError("--batch must be at least 1")
    _finite_non_negative(opts.atol, "--atol")
    _finite_non_negative(opts.rtol, "--rtol")
    if not isinstance(opts.seed, int) or opts.seed < 0:
        raise VMAEError(f"--seed must be an integer >= 0, got {opts.seed}")
    if opts.remap_head is not None:
        _remap_index(opts)
        if opts.stage != "ft" or opts.encoder_only:
            raise VMAEError("--remap-head reads a fine-tuned K710 head (--stage ft) as another dataset's")
    if opts.num_classes is not None and (opts.num_classes < 1 or opts.stage != "ft"):
        raise VMAEError("--num-classes takes a number >= 1, for a fine-tuned head (--stage ft)")
    trained = opts.config or arch_config(opts.variant, opts.dataset, opts.stage, _generation(opts))
    target = with_clip_shape(trained, opts.num_frames, opts.image_size)
    if opts.tflite and target.num_params * 4 >= TFLITE_LIMIT_BYTES:
        raise VMAEError(f"--tflite: this model's float32 weights take {target.num_params * 4 / 2**30:.2f} GiB, past "
                        "the 2 GiB limit of a LiteRT flatbuffer; convert without --tflite (the SavedModel, .keras "
                        "and .weights.h5 have no such limit)")


def _remap_index(opts: ConvertOptions) -> list[int]:
    from .variants import labels  # by file: tensorflow must not load before the PyTorch forwards

    try:
        return labels.k710_index(opts.remap_head)
    except ValueError as err:
        raise VMAEError(f"--remap-head: {err}") from None


def remap_head(tensors: dict, cfg: ArchConfig, opts: ConvertOptions, notes: list[str]) -> tuple[dict, ArchConfig]:
    """A K710 head as a Kinetics-400/600/700 head, the way VideoMAE V2 evaluates it: the rows of
    the target's classes, `head[index]`. Both the reference and the Keras model get these rows, and
    the report says so."""
    index = _remap_index(opts)
    if cfg.num_classes != 710 or "head.weight" not in tensors:
        raise VMAEError(f"--remap-head takes a K710 head of 710 classes; this checkpoint's has {cfg.num_classes}")
    tensors = {**tensors, "head.weight": tensors["head.weight"][index], "head.bias": tensors["head.bias"][index]}
    notes.append(f"head remapped from K710 to {opts.remap_head.upper()}: rows of VideoMAE V2's "
                 f"misc/label_710to{opts.remap_head[1:]}.json ({len(index)} classes)")
    return tensors, cfg.with_(num_classes=len(index))


def _load(opts: ConvertOptions, name: str, phases: Phases) -> tuple[LoadedCheckpoint, Path]:
    with phases("import torch"):
        frameworks.load_torch()
    if opts.synthetic:
        from .synthetic import write_synthetic_checkpoint

        classes = {"num_classes": opts.num_classes} if opts.num_classes else {}
        cfg = opts.config or arch_config(opts.variant, opts.dataset, opts.stage, _generation(opts), **classes)
        path = Path(opts.synthetic_dir or opts.output_dir) / f"synthetic_{name}_seed{opts.seed}.pth"
        # V2's released fine-tuned and distilled files are float16: the synthetic one is too, so
        # the upcast on reading is exercised by every V2 run.
        dtype = "float16" if _generation(opts) == "v2" and not cfg.is_pretrain else "float32"
        with phases("write synthetic checkpoint"):
            write_synthetic_checkpoint(cfg, path, opts.seed, dtype)
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
        raise MappingError(f"the checkpoint describes no VideoMAE that can be built (width {cfg.embed_dim}, "
                           f"depth {cfg.depth}, {cfg.num_heads} heads): {first_line(err, 200)}") from None
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
    """What the PyTorch side computes for this conversion, as f(video, mask, dtype) -> stages:
    [(stage, tokens), ..., ("output", result)], from one forward for `pt_reference`; the output
    alone for a backbone, or for a reference whose hidden states are not comparable block by block
    (transformers' pre-training model)."""
    if not opts.encoder_only and getattr(reference, "localisable", True):
        return lambda video, mask, dtype: reference_stages(reference, video, mask, dtype)
    if not opts.encoder_only:
        return lambda video, mask, dtype: [("output", run_reference(reference, video, mask, dtype))]

    torch = frameworks.load_torch()

    def encoder(video, mask, dtype):
        x = torch.from_numpy(video.astype(dtype))
        visible = torch.zeros(video.shape[0], cfg.num_patches, dtype=torch.bool)
        with torch.inference_mode():
            tokens = reference.encode(x, visible)[-1]
            return [("output", (tokens.mean(1) if opts.pooled else tokens).numpy())]

    return encoder


def _build(cfg, opts, dtype=None):
    from tf_models import build_backbone, build_model

    if opts.encoder_only:
        return build_backbone(cfg, pooled=opts.pooled, dtype=dtype)
    return build_model(cfg, dtype=dtype)


def class_names(cfg: ArchConfig, opts: ConvertOptions) -> list[str] | None:
    """The names of the logits, shipped in every artifact; None for models without a head."""
    if cfg.is_pretrain or opts.encoder_only or not cfg.num_classes:
        return None
    if opts.remap_head:
        from tf_models import labels

        return labels.load(opts.remap_head)
    if opts.labels is not None:
        if len(opts.labels) != cfg.num_classes:
            raise VMAEError(f"{len(opts.labels)} labels given for a head of {cfg.num_classes} classes")
        return list(opts.labels)
    from tf_models import labels

    with contextlib.suppress(ValueError):
        names = labels.load(opts.dataset)
        if len(names) == cfg.num_classes:
            return names
    return None


def _keras_forward(model, video, mask, dtype="float32") -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(model(keras_inputs(video, mask, dtype), training=False))


def convert(progress: Callable[[str], None] | None = None, check: bool = False, **kwargs) -> dict:
    """Convert one checkpoint; returns the report dict. With check=True a failed gate raises
    ParityError (after the report is written). Keyword arguments are ConvertOptions fields."""
    opts = ConvertOptions(**kwargs)
    _validate(opts)
    _tune_heap()
    phases = Phases(progress)
    started = time.time()
    name = default_name(opts)
    out_dir = Path(opts.output_dir)
    check_writable(out_dir)
    # Everything a user's file can get wrong is checked with torch alone, before tensorflow
    # loads and any model is built: a bad checkpoint is refused in seconds.
    family, details = _family(opts), {}
    if family.GENERATION:  # the architecture comes from the shapes and a variant table
        loaded, ckpt_path = _load(opts, name, phases)
        tensors = loaded.tensors
        if opts.config is None:
            _follow_file_generation(opts, tensors, loaded.notes)
            family = _family(opts)
            name = default_name(opts)
        trained = opts.config or config_for(tensors, opts.variant, opts.dataset, opts.stage, opts.num_classes,
                                            family.GENERATION)
        check_official_keys(tensors, trained)
        if opts.remap_head:
            tensors, trained = remap_head(tensors, trained, opts, loaded.notes)
    else:  # a family whose files state their architecture; the engine's accounting checks the keys
        with phases("import torch"):
            frameworks.load_torch()
        with phases("load checkpoint"):
            loaded, ckpt_path, trained, details = family.load(opts)
        tensors = loaded.tensors
        opts.encoder_only = opts.encoder_only or details["architecture"] == families.hf.BACKBONE
    cfg = with_clip_shape(trained, opts.num_frames, opts.image_size)
    tensors, shape_notes = adapt_tensors(tensors, trained, cfg)
    loaded.notes.extend(shape_notes)
    names = class_names(cfg, opts)
    name = name_for_classes(name, cfg, opts)
    torch = frameworks.load_torch()
    from pt_reference import float64_compute as pt_float64

    with phases("build pytorch reference"):
        # The checkpoint's own tensors become its weights: no copy, no initial values.
        reference = family.reference(cfg, tensors, details, opts.reference)
    reference_fn = _reference_fn(reference, cfg, opts)
    video = make_video(cfg, opts.batch, opts.seed)
    mask = tube_mask(cfg, opts.batch, opts.seed) if cfg.is_pretrain and not opts.encoder_only else None
    # PyTorch runs first, before tensorflow is imported: the peak of its forwards (float64
    # attention) then never adds up with tensorflow's own memory or the Keras model's weights.
    # Each forward keeps every block's tokens too: the error profile and, on a failure, the
    # localisation come from these same forwards, not from extra ones.
    with phases("pytorch forward"):
        pt_stages = reference_fn(video, mask, "float32")
    pt_out = pt_stages[-1][1]
    if opts.float64:
        # float64 from the float32 weights (exact), each cast where it is used: no float64 copy.
        with phases("pytorch forward float64"), pt_float64(reference):
            pt64_stages = reference_fn(video, mask, "float64")
    # The PyTorch side is done (its outputs and hidden states are kept). The reference holds the
    # checkpoint's tensors: once it is gone, mapping moves each tensor into the Keras model
    # instead of copying it, so the two never hold all the weights at once.
    del reference, reference_fn
    _release()

    with phases("import tensorflow"):
        torch, tf, _ = frameworks.load()
    from tf_models import export_saved_model, float64_compute as keras_float64, hidden_state_model

    rules = family.rules(cfg, opts.encoder_only, details.get("architecture"))
    dropped = family.dropped(tensors, opts.encoder_only)
    mapped = {k: v for k, v in tensors.items() if k not in set(dropped)}
    del tensors
    loaded.tensors = {}  # `mapped` is now the only holder: each tensor is freed once assigned
    with phases("build keras model"):
        model = _build(cfg, opts)
    with phases("map weights"):
        assignments = load_into(model, mapped, rules, consume=True)
        del mapped

    checks: dict[str, dict] = {}
    staged = hidden_state_model(model, with_output=True) if len(pt_stages) > 1 else model
    with phases("keras forward"):
        tf_stages = keras_stages(model, video, mask, staged=staged)
    tf_out = tf_stages[-1]
    checks["tf_vs_pt"] = compare(tf_out, pt_out, opts.rtol, opts.atol)
    localisation = None
    if not checks["tf_vs_pt"]["passed"] and len(pt_stages) > 1:
        localisation = locate(pt_stages[:-1], tf_stages[:-1])
        checks["tf_vs_pt"]["detail"] = describe_localisation(localisation)

    _release()  # the keras forward's activations
    if opts.float64:
        # The same model, its layers computing in float64 for the block: no second model to build,
        # no second copy of the weights.
        with phases("keras forward float64"), keras_float64(staged):
            tf64_stages = keras_stages(model, video, mask, "float64", staged=staged)
        checks["float64"] = compare(tf64_stages[-1], pt64_stages[-1][1], 0.0, FLOAT64_ATOL)
        checks["float64"]["gate"] = False  # informative: shows mapping exactness without fp32 noise
        if rounding_only(checks, localisation):
            checks["tf_vs_pt"]["detail"] = describe_rounding(checks, opts)
    profile = None
    if opts.float64 and len(pt_stages) > 1:
        profile = profile_of((pt_stages, tf_stages), (pt64_stages, tf64_stages))
    del staged, pt_stages, tf_stages
    if opts.float64:
        del pt64_stages, tf64_stages

    def make_report(artifacts: dict) -> dict:
        return {
            "artifact": name,
            "passed": all(checks[g]["passed"] for g in GATES if g in checks),
            "variant": opts.variant if opts.config is None else None,
            "dataset": opts.dataset if opts.config is None else None,
            "stage": opts.stage,
            "encoder_only": opts.encoder_only,
            "pooled": opts.pooled,
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
            "error_profile": profile,
            "labels": names,
            "artifacts": artifacts,
            "timings": phases.seconds,
            "wall_seconds": round(time.time() - started, 3),
            **family.report_fields(cfg, details),
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }

    report = None
    if checks["tf_vs_pt"]["passed"]:
        handed_over = [model]  # the export drops the model once written: the reloads take its place
        del model
        export = lambda m, path: export_saved_model(m, path, opts.dataset, names)  # dataset: its test protocol
        report = _export_and_verify(handed_over, cfg, opts, name, out_dir, video, mask, tf_out, pt_out,
                                    checks, phases, export, tf, make_report)
    else:
        for gate in GATES[1:]:
            if gate != "tflite" or opts.tflite:
                checks[gate] = {"passed": False, "skipped": True, "detail": "not run: the Keras model disagrees"}
    if report is None:  # a failed gate: the report alone, nothing published
        report = make_report({})
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(failed_report_path(out_dir, name), json.dumps(report, indent=2).encode())
    passed = report["passed"]
    if check and not passed:
        raise ParityError(f"{name}: parity failed ({failed_summary(report)}); report in "
                          f"{failed_report_path(out_dir, name)}")
    return report


def _export_and_verify(handed_over, cfg, opts, name, out_dir, video, mask, tf_out, pt_out, checks, phases,
                       export_saved_model, tf, make_report) -> dict | None:
    """Export into a staging folder, prove each export there, and when every gate passed publish
    the exports with their report; returns that report, or None when a gate failed (nothing
    published)."""
    model = handed_over.pop()
    h5, keras_file, folder, zipped = f"{name}.weights.h5", f"{name}.keras", name, f"{name}.zip"
    tflite = f"{name}.tflite" if opts.tflite else None
    with Staging(out_dir, name) as st:
        # Every file is written from the one model first; then the model goes, and each file is
        # loaded back alone: never two copies of the weights (ViT-g: 4 GB each) at once.
        with phases("save weights.h5"), _writing(out_dir / h5, tf):
            save_weights_h5(model, st.path(h5))
            written = weights_fingerprint(model)
        with phases("save .keras"), _writing(out_dir / keras_file, tf):
            model.save(st.path(keras_file))
        if tflite:
            _export_and_check_tflite(model, st.path(tflite), out_dir / tflite, video, mask, pt_out, checks, opts,
                                     phases, tf)
        with phases("export savedmodel"), _writing(out_dir / folder, tf):
            export_saved_model(model, st.path(folder))
            del model
            _release()  # the model and the export's traced graph: the files are all that is checked now
        with phases("reload weights.h5"):
            fresh = _build(cfg, opts)
            fresh.load_weights(st.path(h5))
            same = weights_fingerprint(fresh) == written
        with phases("weights.h5 forward"):
            again = _keras_forward(fresh, video, mask)
            checks["weights_h5"] = {**compare(again, pt_out, opts.rtol, opts.atol),
                                    "weights_identical": same,
                                    "predictions_identical": bool(np.array_equal(again, tf_out))}
            checks["weights_h5"]["passed"] &= same and checks["weights_h5"]["predictions_identical"]
            del fresh
            _release()
        with phases("reload .keras"):
            import keras

            with _weights_read_from_disk(cfg):  # the layers registered on import tf_models
                reloaded = keras.saving.load_model(st.path(keras_file))
        with phases(".keras forward"):
            checks["keras"] = compare(_keras_forward(reloaded, video, mask), pt_out, opts.rtol, opts.atol)
            del reloaded
            _release()
        with phases("reload savedmodel"):
            loaded = tf.saved_model.load(str(st.path(folder)))
        with phases("savedmodel forward"):
            args = keras_inputs(video, mask)
            args = args if isinstance(args, list) else [args]
            checks["saved_model"] = compare(loaded.serve(*args).numpy(), pt_out, opts.rtol, opts.atol)
        if opts.xla:
            with phases("savedmodel forward under xla"):
                xla = tf.function(loaded.serve, jit_compile=True)
                checks["saved_model_xla"] = compare(xla(*args).numpy(), pt_out, opts.rtol, opts.atol)
        else:
            checks["saved_model_xla"] = {"passed": True, "skipped": True, "detail": "--no-xla"}
        with phases("savedmodel uint8 forward"):
            checks["saved_model_uint8"] = _check_uint8_endpoint(loaded, cfg, opts)
        del loaded
        _release()
        with phases("zip savedmodel"), _writing(out_dir / zipped, tf):
            zip_folder(st.path(folder), st.path(zipped))
        if not all(checks[g]["passed"] for g in GATES if g in checks):
            return None
        files = [h5, keras_file, zipped, folder] + ([tflite] if tflite else [])
        report = make_report({f: _describe_artifact(st.path(f), out_dir / f) for f in files})
        report_file = f"{name}.parity.json"
        with _writing(out_dir / report_file, tf):
            st.path(report_file).write_bytes(json.dumps(report, indent=2).encode())
        interrupts.check()
        # The commit: a few renames, the report last. A signal now waits for it to end, so a
        # run is either stopped with nothing published or finished with its report.
        with interrupts.held():
            st.publish([*files, report_file], stale=[out_dir / report_file, out_dir / f"{name}.failed.parity.json"])
    return report


def weights_fingerprint(model) -> list[tuple[str, str, tuple, str]]:
    """(path, dtype, shape, sha256 of the bytes) of every weight, in order: compares a reloaded
    model with the one that was saved after that one is gone."""
    import hashlib

    out = []
    for w in model.weights:
        value = np.ascontiguousarray(w.numpy())
        out.append((w.path, str(value.dtype), value.shape, hashlib.sha256(value.data).hexdigest()))
    return out


# Past this many bytes of weights, a .keras check reload reads them from disk (see below).
KERAS_IN_MEMORY_LIMIT = 2**30


@contextlib.contextmanager
def _weights_read_from_disk(cfg: ArchConfig):
    """keras.saving.load_model reads a .keras archive's weights file into memory (a second copy
    of all the weights) whenever half the free RAM would hold it; its other path extracts that
    file beside the archive and reads it from disk. For models past 1 GiB the check reload takes
    that path: the same loader and file, one copy of the weights less (ViT-g: 4 GB)."""
    try:
        from keras.src.saving import saving_lib
    except ImportError:  # another Keras layout: its default path, whatever it costs
        saving_lib = None
    if saving_lib is None or not hasattr(saving_lib, "is_memory_sufficient") or \
            cfg.num_params * 4 <= KERAS_IN_MEMORY_LIMIT:
        yield
        return
    original = saving_lib.is_memory_sufficient
    saving_lib.is_memory_sufficient = lambda model: False
    try:
        yield
    finally:
        saving_lib.is_memory_sufficient = original


def _export_and_check_tflite(model, staged: Path, final: Path, video, mask, pt_out, checks, opts, phases, tf):
    """The LiteRT flatbuffer (batch 1), run clip by clip with LiteRT's own interpreter."""
    from tf_models.export import export_tflite, run_tflite

    with phases("export tflite"), _writing(final, tf):
        export_tflite(model, staged)
    with phases("tflite forward"):
        clips = keras_inputs(video, mask)
        clips = clips if isinstance(clips, list) else [clips]
        names = ["video", "mask"][: len(clips)]
        outs = [run_tflite(staged, **{n: c[i : i + 1] for n, c in zip(names, clips)}) for i in range(len(video))]
        checks["tflite"] = compare(np.concatenate(outs), pt_out, opts.rtol, opts.atol)


def _check_uint8_endpoint(loaded, cfg, opts) -> dict:
    """`serve_frames(uint8)` against `serve(normalise(uint8))` on seeded random pixels."""
    if not hasattr(loaded, "serve_frames"):
        return {"passed": True, "skipped": True, "detail": "no raw-frames endpoint (the model takes a mask)"}
    from tf_models.preprocessing import normalise

    shape = (opts.batch, cfg.num_frames, cfg.image_size, cfg.image_size, cfg.in_channels)
    frames = np.random.default_rng(opts.seed).integers(0, 256, size=shape, dtype=np.uint8)
    return compare(loaded.serve_frames(frames).numpy(), loaded.serve(normalise(frames)).numpy(),
                   opts.rtol, opts.atol)


def rounding_only(checks: dict, localisation: dict | None) -> bool:
    """float32 failed, yet float64 shows the mapping exact and no hidden state diverges: the
    tolerance asked for is below what float32 arithmetic gives, and nothing is mis-mapped."""
    return (not checks["tf_vs_pt"]["passed"] and checks.get("float64", {}).get("passed", False)
            and (localisation is None or localisation["first_divergent"] is None))


def describe_rounding(checks: dict, opts: ConvertOptions) -> str:
    return (f"float32 rounding, not a mapping error: in float64 the two agree to "
            f"{checks['float64']['max_abs']:.1e}; float32 differs by {checks['tf_vs_pt']['max_abs']:.1e}, "
            f"more than --atol {opts.atol:g} / --rtol {opts.rtol:g} allow")


def _describe_artifact(staged: Path, final: Path) -> dict:
    if staged.is_dir():
        return {"path": str(final), "kind": "savedmodel", "size": tree_size(staged)}
    return {"path": str(final), "size": staged.stat().st_size, "sha256": sha256_file(staged)}


def failed_summary(report: dict) -> str:
    bad = [g for g, c in report["checks"].items() if c.get("gate", True) and not c["passed"] and not c.get("skipped")]
    parts = []
    for g in bad:
        c = report["checks"][g]
        fig = f"max abs {c['max_abs']:.3g}" if c.get("max_abs") is not None else c.get("detail", "")
        parts.append(f"{g}: {fig}" + (f", {c['detail']}" if c.get("detail") and c.get("max_abs") is not None else ""))
    return "; ".join(parts) or "see report"
