"""Extra SavedModel endpoints for serving: raw uint8 frames in, and what the model is.

- `serve_frames(frames)`: uint8 RGB `[batch, T, H, W, 3]` (frames already sampled, resized and
  cropped, see `tf_models.preprocessing`); normalises inside exactly as
  `preprocessing.normalise` does (float32 `x / 255`, minus the ImageNet mean, over the std),
  then runs the model: a client sends pixels, a quarter of the bytes of float32 inputs, and
  cannot get the normalisation wrong.
- `labels()`: the class names, string `[num_classes]`, logit order.
- `metadata()`: JSON string scalar (dataset, clip shape, mean/std), what `vmae-predict`
  needs to prepare a video for this model without being told.

Only classifiers (one video input) get `serve_frames`; pre-trained models take a mask too.
"""
from __future__ import annotations

import json

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD


def normalise_frames(frames):
    """uint8 -> normalised float32, the TensorFlow twin of `preprocessing.normalise`."""
    import tensorflow as tf

    x = tf.cast(frames, tf.float32) / tf.constant(255.0, tf.float32)
    return (x - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def frames_endpoint(model):
    """(callable, input signature) of the uint8 endpoint for a one-input classifier."""
    import tensorflow as tf

    shape = (None,) + tuple(model.inputs[0].shape[1:])
    spec = tf.TensorSpec(shape, tf.uint8, name="frames")
    return (lambda frames: model(normalise_frames(frames), training=False)), [spec]


def metadata(model, dataset: str | None, labels: list[str] | None) -> dict:
    _, frames, height, width, channels = model.inputs[0].shape
    return {"format": "vmae-convert", "model": model.name, "dataset": dataset, "num_frames": frames, "image_size": height,
            "channels": channels, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "num_classes": len(labels) if labels else None, "labels": labels}


def add_serving_endpoints(archive, model, dataset: str | None = None, labels: list[str] | None = None) -> None:
    """Adds `serve_frames`, `labels` and `metadata` to a keras.export.ExportArchive (classifiers)."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        return
    fn, signature = frames_endpoint(model)
    archive.add_endpoint("serve_frames", fn, input_signature=signature)
    names = tf.constant(list(labels or []), tf.string)
    archive.add_endpoint("labels", lambda: names, input_signature=[])
    info = tf.constant(json.dumps(metadata(model, dataset, labels)))
    archive.add_endpoint("metadata", lambda: info, input_signature=[])
