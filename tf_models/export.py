"""TensorFlow artifacts of a Keras VideoMAE: a SavedModel (endpoint `serve`) and a LiteRT
flatbuffer. Needs tensorflow whatever the Keras backend; imported only when used."""
from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

# A flatbuffer addresses its buffers with 32-bit offsets: LiteRT refuses models past 2 GiB.
TFLITE_LIMIT_BYTES = 2**31


class TFLiteTooLarge(ValueError):
    """The model's weights alone exceed what a LiteRT flatbuffer can hold."""


def _signature(model: keras.Model, batch=None):
    import tensorflow as tf

    return [tf.TensorSpec((batch,) + tuple(t.shape[1:]), t.dtype, name="video" if i == 0 else "mask")
            for i, t in enumerate(model.inputs)]


def _checked_mask(model: keras.Model, mask):
    """The mask with a graph-side check that every row hides exactly the trained number of
    tokens: the model's shapes are fixed by that number, and another count would otherwise
    give a result of the wrong size, silently."""
    import tensorflow as tf

    num_tokens = model.inputs[1].shape[1]
    num_masked = model.outputs[0].shape[1]
    counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    check = tf.debugging.assert_equal(
        counts, tf.constant(num_masked, tf.int32),
        message=f"each mask row must hide exactly {num_masked} of {num_tokens} tokens (tube masking, "
                "converter.masking.tube_mask); this row hides")
    with tf.control_dependencies([check]):
        return tf.identity(mask)


def export_saved_model(model: keras.Model, path, dataset=None, labels=None, batch=None, serving=True,
                       check_mask=True) -> None:
    """TensorFlow SavedModel with an endpoint `serve` taking the model's inputs as positional
    arguments (video, or video and mask), batch size free unless `batch` is given. With
    `serving`, one-input models also get `serve_frames` (uint8), `labels` and `metadata`
    (`tf_models.serving`); `dataset` names the test protocol `vmae-predict` applies."""
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoint's variables are tracked by add_endpoint anyway, and
    # with track() Keras 3.15 also saves every KerasVariable beside its tf.Variable, doubling
    # the SavedModel (2.3 GB instead of 1.2 GB for ViT-L).
    specs = _signature(model, batch)
    if len(specs) == 1:
        archive.add_endpoint("serve", lambda video: model(video, training=False), input_signature=specs)
    else:
        def serve(video, mask):
            return model([video, _checked_mask(model, mask) if check_mask else mask], training=False)

        archive.add_endpoint("serve", serve, input_signature=specs)
    if serving:
        from .serving import add_serving_endpoints

        add_serving_endpoints(archive, model, dataset, labels)
    archive.write_out(str(path), verbose=False)


def tflite_bytes(model: keras.Model) -> bytes:
    """A LiteRT flatbuffer of the model at batch 1, from its SavedModel, builtin ops only (no
    Flex delegate needed: the erf GELU becomes LiteRT's builtin GELU, approximate=False). A masked autoencoder's mask
    count is not checked inside: LiteRT has no assert op.

    Raises TFLiteTooLarge before converting when the float32 weights alone pass 2 GiB."""
    import tensorflow as tf

    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    if weight_bytes >= TFLITE_LIMIT_BYTES:
        raise TFLiteTooLarge(
            f"its float32 weights take {weight_bytes / 2**30:.2f} GiB, past the 2 GiB limit of a LiteRT "
            "flatbuffer")
    with tempfile.TemporaryDirectory(prefix="vmae-tflite-") as tmp:
        export_saved_model(model, tmp, batch=1, serving=False, check_mask=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def export_tflite(model: keras.Model, path) -> None:
    Path(path).write_bytes(tflite_bytes(model))


def run_tflite(path_or_bytes, **inputs):
    """Run a LiteRT flatbuffer with ai-edge-litert's interpreter (the one LiteRT ships);
    inputs by name (`video`, and `mask` for a masked autoencoder), batch 1."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes))
    else:
        interpreter = Interpreter(model_path=str(path_or_bytes))
    out = interpreter.get_signature_runner()(**inputs)
    # A copy: the interpreter's output buffers die with it.
    return np.array(next(iter(out.values())))
