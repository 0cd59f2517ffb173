"""`vmae-predict`: classify video files with a converted VideoMAE, by name of class.

    vmae-predict clip.mp4 --model out/TFVideoMAE_B_K400_16x224_FT          # SavedModel folder
    vmae-predict a.mp4 b.webm --model out/TFVideoMAE_B_K400_16x224_FT.weights.h5 --views 1 --top 5 --json

The artifact says which dataset it was trained on (its test protocol) and its class names:
the SavedModel through its `metadata` endpoint, a `.weights.h5` or `.keras` file through the
`.parity.json` report written beside it. Videos are prepared by `tf_models.preprocessing`
(the official test protocol); the views' softmax is averaged as the official evaluation does.

No torch and no `converter` here: this runs where only TensorFlow is installed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from . import preprocessing
from .preprocessing import VideoError

# Views per model call: 15 ViT-B views at once hold ~15x one view's activations.
VIEW_BATCH = 3


class ModelError(ValueError):
    """A --model that is not a VideoMAE classifier artifact this tool can load."""


class OptionError(ValueError):
    """An option value this tool cannot use (one `error:` line, as every other bad input)."""


@dataclass
class Classifier:
    """A loaded artifact: logits of float32 clips [V, T, S, S, 3], and what it needs to know."""

    logits: Callable[[np.ndarray], np.ndarray]
    labels: list[str] | None
    dataset: str | None
    num_frames: int
    image_size: int
    num_classes: int


def _report_beside(path: Path, suffix: str) -> dict | None:
    """The `<name>.parity.json` written by vmae-convert next to `<name><suffix>`."""
    report = path.with_name(path.name.removesuffix(suffix) + ".parity.json")
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {report}: {err}") from None


def _arch_config(config: dict):
    from .config import ArchConfig

    return ArchConfig(**config)


def _check_classifier(shape, num_classes, where) -> None:
    if len(shape) != 5 or shape[-1] != 3 or not num_classes:
        raise ModelError(f"{where} is not a VideoMAE classifier (input {list(shape)}, {num_classes} outputs): "
                         "vmae-predict takes a fine-tuned model converted by vmae-convert")


def _load_saved_model(path: Path) -> Classifier:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # tensorflow raises many kinds for a folder that is not a SavedModel
        raise ModelError(f"{path} is not a readable SavedModel ({type(err).__name__})") from None
    if not hasattr(loaded, "serve"):
        raise ModelError(f"{path} has no `serve` endpoint: not a vmae-convert SavedModel")
    inputs = loaded.serve.concrete_functions[0].structured_input_signature[0]
    outputs = loaded.serve.concrete_functions[0].structured_outputs
    shape = inputs[0].shape.as_list() if len(inputs) == 1 else []
    num_classes = outputs.shape[-1] if hasattr(outputs, "shape") and len(outputs.shape) == 2 else None
    _check_classifier(shape, num_classes, path)
    if hasattr(loaded, "metadata"):
        meta = json.loads(loaded.metadata().numpy())
        if meta.get("model") == "videomae_backbone":  # a pooled backbone also outputs [batch, n]
            raise ModelError(f"{path} is a headless VideoMAE backbone (--encoder-only): it has no classes to predict")
    else:  # exported before the metadata endpoint: the report beside it knows
        report = _report_beside(path, "") or {}
        meta = {"dataset": report.get("dataset"), "labels": report.get("labels")}
    return Classifier(lambda x: loaded.serve(tf.constant(x)).numpy(), meta.get("labels"), meta.get("dataset"),
                      shape[1], shape[2], num_classes)


def _from_keras(model, report: dict | None, path: Path) -> Classifier:
    shape = list(model.inputs[0].shape) if len(model.inputs) == 1 else []
    num_classes = model.outputs[0].shape[-1] if len(model.outputs[0].shape) == 2 else None
    _check_classifier(shape, num_classes, path)
    report = report or {}
    return Classifier(lambda x: np.asarray(model(x, training=False)), report.get("labels"), report.get("dataset"),
                      shape[1], shape[2], num_classes)


def _load_weights_h5(path: Path) -> Classifier:
    report = _report_beside(path, ".weights.h5")
    if report is None or "config" not in report:
        raise ModelError(f"{path} holds weights only: its architecture is read from "
                         f"{path.name.removesuffix('.weights.h5')}.parity.json, which is not beside it")
    from .videomae import build_model

    config = report["config"]
    if config.get("decoder_depth"):
        _check_classifier([], None, path)
    model = build_model(_arch_config(config))
    try:
        model.load_weights(str(path))
    except Exception as err:  # h5py/keras raise several kinds for a damaged or foreign file
        raise ModelError(f"cannot load {path} into the architecture of its report: {str(err)[:200]}") from None
    return _from_keras(model, report, path)


def _load_keras(path: Path) -> Classifier:
    import keras

    from . import videomae  # noqa: F401  (registers the custom layers for deserialisation)

    try:
        model = keras.saving.load_model(str(path))
    except Exception as err:
        raise ModelError(f"cannot load {path} as a Keras model: {str(err)[:200]}") from None
    return _from_keras(model, _report_beside(path, ".keras"), path)


def load_classifier(path) -> Classifier:
    """A SavedModel folder, a `.weights.h5` (with its `.parity.json`) or a `.keras` file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no such model: {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        return _load_saved_model(path)
    if path.name.endswith(".weights.h5"):
        return _load_weights_h5(path)
    if path.suffix == ".keras":
        return _load_keras(path)
    raise ModelError(f"{path}: expected a SavedModel folder, a .weights.h5 or a .keras file")


def parse_views(text: str, dataset: str) -> tuple[int, int]:
    """'1' (one centred clip, centre crop), 'full' (the dataset's official protocol) or 'CxS'."""
    protocol = preprocessing.protocol_for(dataset)
    if text == "full":
        return protocol.clips, protocol.crops
    if text == "1":
        return 1, 1
    try:
        clips, crops = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise OptionError(f"--views {text}: expected 1, full or CLIPSxCROPS (e.g. 5x3)") from None
    if clips < 1 or crops < 1:
        raise OptionError(f"--views {text}: at least one clip and one crop")
    if protocol.sampling == "segments" and clips > 2:
        raise OptionError(f"--views {text}: {dataset} samples segments, which give 1 or 2 clips (official: 2x3)")
    return clips, crops


def classify(video, classifier: Classifier, dataset: str, views: tuple[int, int],
             progress: Callable[[str], None]) -> np.ndarray:
    """Mean softmax over the views of one video file, [num_classes]."""
    name = Path(video).name
    frames = preprocessing.load_video(video, classifier.image_size,
                                      lambda n: progress(f"{name}: {n} frames decoded"))
    clips = preprocessing.sample_views(frames, preprocessing.protocol_for(dataset), *views,
                                       classifier.num_frames, classifier.image_size)
    del frames
    clips = preprocessing.normalise(clips)
    logits = []
    for start in range(0, len(clips), VIEW_BATCH):
        progress(f"{name}: views {start + 1}-{min(start + VIEW_BATCH, len(clips))} of {len(clips)}")
        logits.append(classifier.logits(clips[start:start + VIEW_BATCH]))
    return preprocessing.average_softmax(np.concatenate(logits))


def top_k(probabilities: np.ndarray, labels: list[str] | None, k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else f"class {i}",
             "probability": float(probabilities[i])} for i in order]


def run(videos, model, views_text, top, as_json, dataset_override, quiet) -> int:
    progress = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    progress(f"loading {model}")
    classifier = load_classifier(model)
    dataset = dataset_override or classifier.dataset
    if dataset is None:
        raise ModelError(f"{model} does not say which dataset it was trained on: pass --dataset")
    views = parse_views(views_text, dataset)
    if classifier.labels is not None and len(classifier.labels) != classifier.num_classes:
        raise ModelError(f"{model} carries {len(classifier.labels)} labels for {classifier.num_classes} outputs")
    results, failed = [], 0
    for video in videos:
        try:
            probabilities = classify(video, classifier, dataset, views, progress)
        except VideoError as err:
            click.echo(f"error: {err}", err=True)
            failed += 1
            continue
        results.append({"video": str(video), "views": views[0] * views[1], "dataset": dataset,
                        "top": top_k(probabilities, classifier.labels, top)})
        if not as_json:
            click.echo(_format(results[-1]))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    return 2 if failed else 0


def _format(result: dict) -> str:
    lines = [f"{result['video']} ({result['views']} view{'s' if result['views'] > 1 else ''}, {result['dataset']})"]
    width = max(len(t["label"]) for t in result["top"])
    for rank, t in enumerate(result["top"], 1):
        lines.append(f"  {rank}. {t['label']:<{width}}  [{t['index']:>3}]  {t['probability']:.4f}")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("videos", nargs=-1, required=True)
@click.option("--model", "-m", required=True,
              help="A vmae-convert artifact: SavedModel folder, .weights.h5 (its .parity.json beside it) or .keras.")
@click.option("--views", default="full", show_default=True,
              help="full: the dataset's official test views (K400/UCF101 5 clips x 3 crops, SSv2 2 x 3), "
                   "softmax averaged; 1: one clip centred in the video, centre crop; or CLIPSxCROPS.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="How many classes to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout: per video, the top classes with index and probability.")
@click.option("--dataset", default=None, type=click.Choice(sorted(preprocessing.PROTOCOLS)),
              help="Override the dataset (test protocol) the artifact declares.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--debug", is_flag=True,
              help="Tracebacks instead of one error line, and what native libraries write to stderr "
                   "(tensorflow's start-up lines), hidden otherwise.")
def main(videos, model, views, top, as_json, dataset, quiet, debug):
    """Classify VIDEOS (mp4, webm, any format FFmpeg reads) with a converted VideoMAE."""
    try:
        code = run(videos, model, views, top, as_json, dataset, quiet)
    except (ModelError, VideoError, OptionError) as err:
        if debug:
            raise
        click.echo("error: " + " ".join(str(err).split()), err=True)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":  # `python -m tf_models.predict`: tensorflow's start-up lines are not hidden
    main()
