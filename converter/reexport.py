"""Weights back out: a Keras `.weights.h5` (e.g. fine-tuned in Keras) -> an official `.pth` or a
transformers folder, through the same rule tables run backwards, proven by parity.

The architecture comes from the conversion's `<name>.parity.json` (its `config`, and for
transformers input its `architecture` and `labels`). The written files are read back by the
family's own reader and run by that family's PyTorch reference (pt_reference for official,
transformers for hf) on the parity clip; they must agree with the Keras model at the gate,
or nothing is left under the output name.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from . import families, frameworks
from .errors import CheckpointError, ExportError, ParityError
from .families import hf, official
from .masking import tube_mask
from .parity import compare, keras_inputs, make_video, run_reference

TARGETS = (official.NAME, hf.NAME)


def read_report(path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
        report["config"]  # noqa: B018 - the one field an export cannot do without
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}; pass the .parity.json the conversion "
                              "wrote (--report)") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not a vmae-convert parity report (no 'config')") from None
    return report


def _architecture(report: dict, cfg) -> str:
    if report.get("architecture"):
        return report["architecture"]
    if report.get("encoder_only"):
        return hf.BACKBONE
    return hf.architecture_of(cfg)


def export_weights(weights, to: str, output, report_path=None, seed: int = 0, batch: int = 2,
                   rtol: float = 1e-5, atol: float = 1e-5) -> dict:
    """Write `output` (a .pth file for official, a folder for hf); returns the parity check."""
    from .variants import ArchConfig

    weights, output = Path(weights), Path(output)
    if to not in TARGETS:
        raise CheckpointError(f"unknown target {to!r}; expected one of {', '.join(TARGETS)}")
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist or is not a file")
    report_path = Path(report_path or weights.with_name(weights.name.replace(".weights.h5", ".parity.json")))
    report = read_report(report_path)
    if output.exists():
        raise ExportError(f"{output} exists; choose another --output (nothing is overwritten)")
    cfg = ArchConfig(**report["config"])
    architecture = _architecture(report, cfg)
    if to == official.NAME and architecture == hf.BACKBONE:
        raise CheckpointError("a headless backbone has no official checkpoint form: export it --to hf")

    frameworks.load()  # torch before tensorflow
    from tf_models import build_backbone, build_model

    from .engine import export_state_dict

    model = build_backbone(cfg) if architecture == hf.BACKBONE else build_model(cfg)
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{weights} does not fit the model of {report_path.name}: "
                              f"{str(err).splitlines()[0][:200]}") from None
    video = make_video(cfg, batch, seed)
    mask = tube_mask(cfg, batch, seed) if cfg.is_pretrain and architecture != hf.BACKBONE else None
    expected = np.asarray(model(keras_inputs(video, mask), training=False))

    if to == official.NAME:
        tensors = export_state_dict(model, official.rules(cfg))
    else:
        tensors = export_state_dict(model, hf.rules_for(architecture, reading=False))
    staged = output.with_name(f".{output.name}.partial")
    _remove(staged)
    try:
        families.get(to).write(tensors, staged, cfg, report.get("labels"), architecture)
        check = _prove(to, staged, cfg, architecture, video, mask, expected, rtol, atol)
        if not check["passed"]:
            why = f"; {check['numerics']}" if check.get("numerics") else ""
            raise ParityError(f"the written {to} weights disagree with the Keras model (max abs "
                              f"{check['max_abs']:.3g} > {atol:g} + {rtol:g} * |x|){why}; nothing was written")
        staged.rename(output)
    finally:
        _remove(staged)
    return {**check, "output": str(output)}


def _prove(to, staged: Path, cfg, architecture, video, mask, expected, rtol, atol) -> dict:
    """Read the files back as a user would and run the family's PyTorch reference on them."""
    details = {"architecture": architecture}
    if to == official.NAME:
        from .checkpoint import read_checkpoint

        reference = official.reference(cfg, read_checkpoint(staged).tensors, details)
    else:
        ckpt = hf.read(staged)
        arch, _ = hf.arch_config(ckpt)
        reference = hf.reference(arch, ckpt.tensors, {**details, "config_json": ckpt.config}, "transformers")
        details["reference"] = f"transformers {hf.transformers_version()} {architecture}"
        if arch.head_norm_eps != cfg.head_norm_eps or arch.layer_norm_eps != cfg.layer_norm_eps:
            details["detail"] = (f": transformers computes LayerNorm eps {arch.layer_norm_eps:g} / fc_norm and "
                                 f"decoder.norm {arch.head_norm_eps:g}, this model {cfg.layer_norm_eps:g} / "
                                 f"{cfg.head_norm_eps:g}")
    if architecture == hf.BACKBONE:
        import torch

        with torch.inference_mode():
            got = reference.encode(torch.from_numpy(video))[-1].numpy()
    else:
        got = run_reference(reference, video, mask)
    check = compare(expected, got, rtol, atol)
    # Said whether or not the gate passed: transformers cannot express the official 1e-6 eps of
    # fc_norm/decoder.norm, so such an export is close, not exact.
    return {**check, "reference": details["reference"], **({"numerics": details["detail"][2:]}
                                                           if "detail" in details else {})}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
