"""The converted model as Keras 3 users live with it: every backend, `.keras`, LiteRT, other clip
shapes, a light import, fine-tuning, and a CLI whose stderr holds only its own lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import NATIVE_NOISE, NOISY_TENSORFLOW, REPO, TINY_FT, TINY_FT_OPTIONAL, TINY_PT, run_cli

from converter.clip_shape import interpolate_pos_embed
from converter.errors import VMAEError
from converter.masking import tube_mask
from converter.parity import make_video, run_reference
from converter.pipeline import ConvertOptions, convert, default_name

sys.path.insert(0, str(REPO / "scripts"))
from backend_parity import run_worker, save_reference_output  # noqa: E402

BACKENDS = ["tensorflow", "jax", "torch"]


def _tiny_conversion(tmp_path, cfg, name, **kw):
    stage = "pt" if cfg.is_pretrain else "ft"
    report = convert(config=cfg, stage=stage, synthetic=True, output_dir=tmp_path, name=name, batch=2,
                     xla=False, **kw)
    assert report["passed"], report["checks"]
    return report


@pytest.fixture(scope="module", params=["ft_optional", "pt"])
def converted(request, tmp_path_factory):
    cfg = {"ft_optional": TINY_FT_OPTIONAL, "pt": TINY_PT}[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    _tiny_conversion(folder, cfg, "tiny")
    return folder, cfg, save_reference_output(folder, "tiny", cfg, batch=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifacts_match_pytorch_on_every_backend_and_import_light(converted, backend):
    folder, cfg, parity_npz = converted
    out = run_worker(backend, folder / "tiny", parity_npz, cfg.to_dict())
    assert "error" not in out, out
    assert out["backend"] == backend
    assert out["loaded"] == [], f"import tf_models on {backend} loaded {out['loaded']}"
    assert out["weights_h5_passed"] and out["keras_passed"], out


def test_tflite_artifact_is_gated_and_runs_in_litert(tmp_path):
    from tf_models.export import run_tflite

    report = _tiny_conversion(tmp_path, TINY_PT, "tiny", tflite=True)
    assert report["checks"]["tflite"]["passed"] and report["checks"]["tflite"]["max_abs"] < 1e-5
    assert report["artifacts"]["tiny.tflite"]["size"] == (tmp_path / "tiny.tflite").stat().st_size
    # LiteRT alone, on another clip than the gate's: the same numbers as the PyTorch reference.
    import torch
    from converter.checkpoint import read_checkpoint
    from pt_reference import load_reference

    tensors = read_checkpoint(tmp_path / "synthetic_tiny_seed0.pth").tensors
    reference = load_reference(TINY_PT, {k: torch.from_numpy(v) for k, v in tensors.items()})
    video, mask = make_video(TINY_PT, 1, 7), tube_mask(TINY_PT, 1, 7)
    got = run_tflite(tmp_path / "tiny.tflite", video=video.transpose(0, 2, 3, 4, 1).copy(), mask=mask)
    np.testing.assert_allclose(got, run_reference(reference, video, mask), rtol=1e-5, atol=1e-5)
    # What the README says runs where: builtin ops only (a Flex op is a CUSTOM op named Flex...),
    # and the erf GELU kept exact as LiteRT's builtin GELU, not its tanh approximation.
    ops_used = _tflite_ops(tmp_path / "tiny.tflite")
    assert "CUSTOM" not in ops_used and ops_used["GELU"] == [False] * TINY_PT.depth + [False] * TINY_PT.decoder_depth


def _tflite_ops(path) -> dict:
    """Builtin op name -> list of its `approximate` options (GELU) or Nones, read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    found: dict = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            found.setdefault(name, []).append(getattr(op.builtinOptions, "approximate", None))
    return found


def test_tflite_past_the_flatbuffer_limit_is_refused_before_any_work(tmp_path):
    with pytest.raises(VMAEError, match="past the 2 GiB limit of a LiteRT flatbuffer; convert without --tflite"):
        convert(variant="H", synthetic=True, tflite=True, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tflite_limit_is_the_flatbuffer_s_and_refuses_h_but_not_l():
    # A flatbuffer's 32-bit offsets stop at 2 GiB: ViT-L's float32 weights (1.1 GiB) fit, ViT-H's
    # (2.35 GiB) do not. A limit set lower would refuse a file LiteRT can hold; higher, send ViT-H
    # into a converter traceback after an hour's work.
    from converter import pipeline
    from converter.variants import arch_config
    from tf_models import export

    assert pipeline.TFLITE_LIMIT_BYTES == export.TFLITE_LIMIT_BYTES == 2**31
    pipeline._validate(pipeline.ConvertOptions(variant="L", synthetic=True, tflite=True))
    with pytest.raises(VMAEError, match="convert without --tflite"):
        pipeline._validate(pipeline.ConvertOptions(variant="H", synthetic=True, tflite=True))
    assert arch_config("H", "k400", "ft").num_params * 4 >= 2**31 > arch_config("L", "k400", "ft").num_params * 4


def test_tflite_export_outside_the_converter_refuses_past_the_limit(monkeypatch):
    # tf_models.export is also used without the converter's early check: its own refusal comes
    # before the SavedModel is written and the converter started.
    import tf_models
    from tf_models import export

    model = tf_models.build_model(TINY_FT)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    monkeypatch.setattr(export, "TFLITE_LIMIT_BYTES", weight_bytes)
    monkeypatch.setattr(export, "export_saved_model", lambda *a, **k: pytest.fail("exported past the limit"))
    with pytest.raises(export.TFLiteTooLarge, match="past the 2 GiB limit of a LiteRT flatbuffer"):
        export.tflite_bytes(model)


def test_tflite_past_the_limit_is_one_error_line_at_the_cli(tmp_path):
    run = run_cli("--variant", "H", "--synthetic", "--tflite", "--output-dir", tmp_path / "out", timeout=300)
    assert run.returncode == 2
    assert run.stderr == ("error: --tflite: this model's float32 weights take 2.35 GiB, past the 2 GiB limit of a "
                          "LiteRT flatbuffer; convert without --tflite (the SavedModel, .keras and .weights.h5 have "
                          "no such limit)\n")
    assert not (tmp_path / "out").exists()


def test_saved_model_refuses_a_mask_of_the_wrong_count(tmp_path):
    import tensorflow as tf

    _tiny_conversion(tmp_path, TINY_PT, "tiny")
    served = tf.saved_model.load(str(tmp_path / "tiny"))
    video = make_video(TINY_PT, 1, 0).transpose(0, 2, 3, 4, 1)
    good = tube_mask(TINY_PT, 1, 0)
    assert served.serve(video, good).shape == (1, TINY_PT.num_masked, TINY_PT.patch_pixels)
    for hidden in (0, TINY_PT.num_masked - 1, TINY_PT.num_patches):
        bad = np.zeros((1, TINY_PT.num_patches), bool)
        bad[0, :hidden] = True
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"must hide exactly {TINY_PT.num_masked} of"):
            served.serve(video, bad)


# --- other clip shapes ---------------------------------------------------------------------

def test_other_clip_shape_converts_with_parity_and_carries_it_in_the_name(tmp_path):
    report = _tiny_conversion(tmp_path, TINY_PT, "tiny", num_frames=6, image_size=48)
    assert report["config"]["num_frames"] == 6 and report["config"]["image_size"] == 48
    assert report["output_shape"] == [2, TINY_PT.with_(num_frames=6, image_size=48).num_masked, TINY_PT.patch_pixels]
    assert default_name(ConvertOptions(variant="S", num_frames=8, image_size=160)) == "TFVideoMAE_S_K400_8x160_FT"
    assert default_name(ConvertOptions(variant="B", dataset="ssv2")) == "TFVideoMAE_B_SSv2_16x224_FT"


def test_learnable_pos_embed_is_interpolated_over_space_and_converts_with_parity(tmp_path):
    report = _tiny_conversion(tmp_path, TINY_FT_OPTIONAL, "tiny", image_size=48)
    assert any("pos_embed interpolated from 2x2 to 3x3" in n for n in report["checkpoint"]["notes"])
    with pytest.raises(VMAEError, match="interpolates it over space only: keep --frames at 4"):
        convert(config=TINY_FT_OPTIONAL, synthetic=True, output_dir=tmp_path / "f", num_frames=6, name="f")


def test_interpolation_keeps_each_temporal_slice_apart_as_the_official_reshape_does():
    # Slice t constant at t: a bicubic of a constant is that constant, so a correct per-slice
    # interpolation keeps every slice at its own value; mixing time into space (a wrong reshape
    # or permute order) does not.
    temporal, size, dim = 3, 4, 5
    table = np.repeat(np.arange(temporal, dtype=np.float32), size * size)[None, :, None] * np.ones(dim, np.float32)
    out = interpolate_pos_embed(table, temporal, 6)
    assert out.shape == (1, temporal * 36, dim)
    np.testing.assert_allclose(out[0].reshape(temporal, 36, dim), np.arange(temporal)[:, None, None]
                               * np.ones((1, 36, dim)), atol=1e-6)
    rng = np.random.default_rng(0)
    same = rng.standard_normal((1, temporal * size * size, dim)).astype(np.float32)
    assert interpolate_pos_embed(same, temporal, size) is same
    # and a smooth field stays smooth: the centre of a linear ramp is reproduced
    ramp = np.tile(np.arange(size, dtype=np.float32), size)[None, :, None]
    up = interpolate_pos_embed(np.tile(ramp, (1, 1, 1)), 1, 8)[0, :, 0].reshape(8, 8)
    assert np.all(np.diff(up, axis=1) >= -1e-6) and np.allclose(up[:, 0], up[0, 0])


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] weights of a 1-D bicubic resize as torch's interpolate(mode="bicubic",
    align_corners=False) defines it: source point (i + 0.5) * n_in / n_out - 0.5, Keys' cubic
    kernel with a = -0.75 on its four neighbours, neighbours past the edge clamped to it."""
    def kernel(x):
        x = abs(x)
        return ((a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1
                else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0)

    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        left = int(np.floor(src))
        for j in range(left - 1, left + 3):
            weights[i, min(max(j, 0), n_in - 1)] += kernel(src - j)
    return weights


@pytest.mark.parametrize("old,new", [(14, 10), (4, 7)])  # 224 -> 160 as in the README; and upward
def test_interpolation_is_the_official_bicubic_over_each_frame_pair(old, new):
    # The official fine-tuning script (run_class_finetuning.py, main(), "interpolate position
    # embedding") resizes each temporal slice with torch.nn.functional.interpolate, bicubic,
    # align_corners=False. The expected table is that resize written out in numpy, so another mode,
    # align_corners=True or a slice order mixed up fails here, where parity cannot see it (both
    # frameworks get the same interpolated table).
    temporal, dim = 3, 5
    table = np.random.default_rng(0).standard_normal((1, temporal * old * old, dim)).astype(np.float32)
    got = interpolate_pos_embed(table, temporal, new)
    rows = _bicubic_matrix(old, new)
    grid = table[0].reshape(temporal, old, old, dim).astype(np.float64)
    expected = np.einsum("ia,jb,tabd->tijd", rows, rows, grid).reshape(1, temporal * new * new, dim)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames,size,message", [
    (7, None, "7 frames cannot be cut into tubelets of 2"),
    (None, 100, "image size 100 cannot be cut into 16x16 patches"),
    (0, None, "0 frames cannot be cut into tubelets of 2: use a positive multiple of 2"),
    (None, -16, "image size -16 cannot be cut into 16x16 patches: use a positive multiple of 16"),
])
def test_clip_shapes_that_do_not_tile_are_refused_in_one_line(tmp_path, frames, size, message):
    with pytest.raises(VMAEError, match=message):
        convert(variant="S", synthetic=True, num_frames=frames, image_size=size, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- fine-tuning ---------------------------------------------------------------------------

FIT_ONE_STEP = """
    import json, sys
    import numpy as np
    import keras
    import tf_models

    cfg = tf_models.ArchConfig(**json.loads(sys.argv[1]))
    policy = sys.argv[2]
    model = tf_models.build_classifier(cfg, dtype=policy if policy != "float32" else None, drop_path_rate=0.1,
                                       dropout=0.1, head_dropout=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype("float32")
    y = rng.integers(0, cfg.num_classes, 4)
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = [np.array(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]
    norms = sorted({l.dtype_policy.compute_dtype for l in model._flatten_layers()
                    if isinstance(l, keras.layers.LayerNormalization)})
    print(json.dumps({
        "loss": float(history.history["loss"][0]),
        "finite": all(np.isfinite(w).all() for w in after),
        "changed": sum(not np.array_equal(a, b) for a, b in zip(before, after)),
        "weights": len(after),
        "logits_dtype": str(keras.backend.standardize_dtype(model(x[:1]).dtype)),
        "block_dtype": model.get_layer("blocks_0").dtype_policy.compute_dtype,
        "norm_dtypes": norms,
    }))
"""


@pytest.mark.parametrize("backend,policy", [(b, "float32") for b in BACKENDS] + [("tensorflow", "mixed_bfloat16")])
def test_one_fit_step_under_jit_compile(backend, policy):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FIT_ONE_STEP), json.dumps(TINY_FT.to_dict()),
                             policy], capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.isfinite(out["loss"]) and out["finite"]
    assert out["changed"] == out["weights"], "every trainable weight gets a gradient step"
    assert out["logits_dtype"] == "float32" and out["norm_dtypes"] == ["float32"]
    assert out["block_dtype"] == ("bfloat16" if policy == "mixed_bfloat16" else "float32")


SOFTMAX_DTYPES = """
    import json
    import keras
    import numpy as np
    from tf_models import layers

    seen = {"max": set(), "exp": set(), "sum": set()}

    class RecordingOps:
        def __getattr__(self, name):
            real = getattr(keras.ops, name)
            if name not in seen:
                return real

            def record(x, *args, **kwargs):
                seen[name].add(keras.backend.standardize_dtype(x.dtype))
                return real(x, *args, **kwargs)

            return record

    layers.ops = RecordingOps()
    attention = layers.Attention(16, 2, dtype="mixed_bfloat16")
    out = attention(np.random.default_rng(0).standard_normal((2, 9, 16)).astype("float32"))
    print(json.dumps({"out": keras.backend.standardize_dtype(out.dtype), **{k: sorted(v) for k, v in seen.items()}}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_softmax_runs_in_float32_under_mixed_bfloat16(backend):
    # The fit step above cannot see this: tensorflow sums bfloat16 in float32 anyway, so a
    # bfloat16 softmax trains as well there. Where a backend sums in bfloat16, 1568 weights of
    # ~1/1568 each lose the total. What enters the softmax's max, exp and sum is recorded instead,
    # on each backend (each spells its dtypes its own way: torch.bfloat16 is no string).
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SOFTMAX_DTYPES)], capture_output=True, text=True,
                            timeout=300, cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend,
                                                         "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"out": "bfloat16", "max": ["float32"], "exp": ["float32"], "sum": ["float32"]}


# --- the CLI's stderr on every CPU ---------------------------------------------------------

GUARDED_AFTER_TENSORFLOW = NOISY_TENSORFLOW + """
import sys
from converter import frameworks
from converter.cli import guarded
from converter.errors import VMAEError

def run():
    frameworks.load()  # tensorflow loads and, on some CPUs, writes its start-up lines to fd 2
    print("progress line", file=sys.stderr)
    raise VMAEError("the one line")

guarded(run, debug="--debug" in sys.argv)
"""


def test_cli_stderr_holds_only_its_own_lines_even_when_tensorflow_writes_to_fd_2():
    run = subprocess.run([sys.executable, "-c", GUARDED_AFTER_TENSORFLOW], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 2
    assert run.stderr == "progress line\nerror: the one line\n"
    # The same run with --debug shows what was hidden: the noise is really there to hide.
    debug = subprocess.run([sys.executable, "-c", GUARDED_AFTER_TENSORFLOW, "--debug"], capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert NATIVE_NOISE.splitlines()[1] in debug.stderr and "VMAEError: the one line" in debug.stderr
