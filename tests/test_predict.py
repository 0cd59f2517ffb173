"""vmae-predict end to end on a tiny converted model: its top-5 against the PyTorch reference
fed by the official transforms (tests/official_transforms.py), the artifacts' label lists, the
raw-frames endpoint, and one `error:` line for each kind of bad input."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import synthetic_video
from conftest import NATIVE_NOISE, TINY_FT, TINY_V2_FT, run_cli
from official_transforms import centre_view, decode_all, kinetics_test_views

from converter import frameworks
from converter.checkpoint import read_checkpoint
from converter.pipeline import convert

CFG = TINY_FT.with_(num_classes=9)  # 4 frames of 32x32
# Distinct, unsorted names: a label list applied in any other order names other classes.
LABELS = ["walrus", "abacus", "zephyr", "mango", "quartz", "kettle", "banjo", "yodel", "fjord"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict")
    report = convert(config=CFG, synthetic=True, output_dir=out, name="tiny", labels=LABELS, xla=False, float64=False)
    assert report["passed"], report["checks"]
    video = out / "clip.mp4"
    synthetic_video.write(video, synthetic_video.frames(40, 41, 46, seed=3))
    return {"dir": out, "model": out / "tiny", "h5": out / "tiny.weights.h5", "video": video, "report": report}


def predict_process(*args):
    """As a user runs it: the command's entry point in a fresh interpreter, tensorflow writing its
    native start-up lines to fd 2 as it does on some CPUs (about 15 s of imports each)."""
    return run_cli(*args, module="vmae_cli", timeout=600)


def predict(*args):
    """The same command in this process (click's runner: exit code, stdout and stderr apart)."""
    from click.testing import CliRunner

    from tf_models.predict import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def reference_probabilities(artifact, views) -> np.ndarray:
    """PyTorch reference on the official views: softmax per view, mean over views."""
    torch = frameworks.load_torch()
    from pt_reference import load_reference

    tensors = read_checkpoint(artifact["dir"] / "synthetic_tiny_seed0.pth").tensors
    reference = load_reference(CFG, {k: torch.from_numpy(v) for k, v in tensors.items()})
    clips = torch.from_numpy(np.stack(views).transpose(0, 4, 1, 2, 3).copy())  # [V, C, T, H, W]
    with torch.inference_mode():
        return torch.softmax(reference(clips).double(), dim=-1).mean(0).numpy()


def _check_top5(result, expected):
    top = [t["index"] for t in result["top"]]
    assert top == list(np.argsort(-expected, kind="stable")[:5])
    assert [t["label"] for t in result["top"]] == [LABELS[i] for i in top]
    np.testing.assert_allclose([t["probability"] for t in result["top"]], expected[top], rtol=1e-5, atol=1e-6)


def test_single_view_top5_equals_pytorch_reference(artifact):
    run = predict_process(artifact["video"], "--model", artifact["model"], "--views", "1", "--json", "-q")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # -q: nothing of its own, and tensorflow's native lines kept off the terminal
    [result] = json.loads(run.stdout)
    assert result["views"] == 1 and result["dataset"] == "k400"
    view = centre_view(decode_all(artifact["video"]), CFG.num_frames, 4, CFG.image_size)
    _check_top5(result, reference_probabilities(artifact, [view]))


def test_official_views_top5_equals_pytorch_reference_for_weights_h5_too(artifact):
    expected = reference_probabilities(
        artifact, kinetics_test_views(decode_all(artifact["video"]), CFG.num_frames, 4, CFG.image_size))
    for model in (artifact["model"], artifact["h5"]):
        run = predict(artifact["video"], "--model", model, "--dataset", "k400", "--json")
        assert run.returncode == 0, run.stderr
        [result] = json.loads(run.stdout)
        assert result["views"] == 15
        _check_top5(result, expected)
        assert "views 13-15 of 15" in run.stderr  # progress, on stderr


def test_text_output_names_classes(artifact):
    run = predict(artifact["video"], "--model", artifact["model"], "--views", "1", "--top", "2", "-q")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{artifact['video']} (1 view, k400)") and len(lines) == 3
    assert lines[1].split()[1] in LABELS


def test_artifacts_carry_their_labels(artifact):
    import tensorflow as tf

    assert artifact["report"]["labels"] == LABELS
    on_disk = json.loads((artifact["dir"] / "tiny.parity.json").read_text())
    assert on_disk["labels"] == LABELS
    loaded = tf.saved_model.load(str(artifact["model"]))
    assert [b.decode() for b in loaded.labels().numpy()] == LABELS
    meta = json.loads(loaded.metadata().numpy())
    assert meta["labels"] == LABELS and meta["num_frames"] == 4 and meta["image_size"] == 32


def test_raw_frames_endpoint_equals_normalise_then_serve(artifact):
    """The gate in the report, and the same check here on a real clip's pixels."""
    import tensorflow as tf

    from tf_models.preprocessing import normalise

    gate = artifact["report"]["checks"]["saved_model_uint8"]
    assert gate["passed"] and not gate.get("skipped") and gate["max_abs"] < 1e-5
    loaded = tf.saved_model.load(str(artifact["model"]))
    frames = np.stack(decode_all(artifact["video"])[:4])[:, :32, :32]
    np.testing.assert_allclose(loaded.serve_frames(frames[None]).numpy(),
                               loaded.serve(normalise(frames)[None]).numpy(), rtol=1e-5, atol=1e-5)


def test_wrong_normalisation_in_the_endpoint_fails_the_gate(tmp_path, monkeypatch):
    monkeypatch.setattr("tf_models.serving.IMAGENET_MEAN", (0.406, 0.456, 0.485))  # BGR means
    report = convert(config=CFG, synthetic=True, output_dir=tmp_path, name="bad", xla=False, float64=False)
    assert not report["passed"] and not report["checks"]["saved_model_uint8"]["passed"]
    assert not (tmp_path / "bad").exists()  # nothing published


def _one_error_line(run, match):
    assert run.returncode == 2, (run.stdout, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], run.stderr


def test_bad_inputs_give_one_error_line(artifact, tmp_path):
    short = tmp_path / "short.mp4"
    synthetic_video.write(short, synthetic_video.frames(8, 32, 32))
    _one_error_line(predict(short, "--model", artifact["model"], "-q"), "video too short: 8 frames, one clip needs 13")
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"junk" * 500)
    _one_error_line(predict(junk, "--model", artifact["model"], "-q"), f"cannot read {junk}")
    _one_error_line(predict(artifact["video"], "--model", artifact["dir"] / "synthetic_tiny_seed0.pth"),
                    "expected a SavedModel folder, a .weights.h5 or a .keras file")
    _one_error_line(predict(artifact["video"], "--model", tmp_path), "without saved_model.pb")
    _one_error_line(predict(artifact["video"], "--model", artifact["model"], "--views", "7"), "--views 7")


def test_bad_input_is_the_only_line_on_the_terminal(artifact, tmp_path):
    """The installed command: tensorflow's start-up lines (written to fd 2 on some CPUs, whatever
    TF_CPP_MIN_LOG_LEVEL says) do not surround the error line; --debug shows them."""
    short = tmp_path / "short.mp4"
    synthetic_video.write(short, synthetic_video.frames(8, 32, 32))
    run = predict_process(short, "--model", artifact["model"], "-q")
    assert run.returncode == 2
    assert run.stderr == "error: video too short: 8 frames, one clip needs 13 (4 frames at sampling rate 4)\n"
    debug = predict_process(short, "--model", artifact["model"], "-q", "--debug")
    assert NATIVE_NOISE.splitlines()[1] in debug.stderr and "error: video too short" in debug.stderr


def test_a_video_that_fails_does_not_stop_the_others(artifact, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"junk" * 500)
    run = predict(junk, artifact["video"], "--model", artifact["model"], "--views", "1", "--json", "-q")
    assert run.returncode == 2 and run.stderr.count("error:") == 1
    assert [r["video"] for r in json.loads(run.stdout)] == [str(artifact["video"])]


def test_non_videomae_saved_model_is_refused(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.serve = tf.function(lambda x: tf.reduce_sum(x, -1, keepdims=True),
                               input_signature=[tf.TensorSpec([None, 10], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"))
    clip = tmp_path / "clip.mp4"
    synthetic_video.write(clip, synthetic_video.frames(20, 32, 32))
    _one_error_line(predict(clip, "--model", tmp_path / "other"), "is not a VideoMAE classifier")


def test_weights_h5_without_its_report_says_what_is_missing(artifact, tmp_path):
    lonely = tmp_path / "tiny.weights.h5"
    lonely.write_bytes(artifact["h5"].read_bytes())
    _one_error_line(predict(artifact["video"], "--model", lonely), "tiny.parity.json, which is not beside it")


def test_headless_backbone_is_refused(tmp_path, artifact):
    from conftest import TINY_PT

    convert(config=TINY_PT, stage="pt", encoder_only=True, pooled=True, synthetic=True, output_dir=tmp_path,
            name="enc", xla=False, float64=False)
    _one_error_line(predict(artifact["video"], "--model", tmp_path / "enc", "--dataset", "k400"),
                    "headless VideoMAE backbone")


def test_keras_file_predicts_as_the_saved_model(artifact):
    """The `.keras` file the conversion published (its report beside it), as the SavedModel."""
    runs = [predict(artifact["video"], "--model", m, "--views", "1", "--json", "-q", "--dataset", "k400")
            for m in (artifact["dir"] / "tiny.keras", artifact["model"])]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    keras_top, saved_top = (json.loads(r.stdout)[0]["top"] for r in runs)
    assert [t["label"] for t in keras_top] == [t["label"] for t in saved_top]
    np.testing.assert_allclose([t["probability"] for t in keras_top], [t["probability"] for t in saved_top],
                               rtol=1e-5)


@pytest.mark.parametrize("remap", [None, "k400"])
def test_videomae_v2_k710_head_prints_its_own_class_names(artifact, tmp_path, remap):
    """A VideoMAE V2 K710 head names its logits with V2's K710 list (not alphabetical), the same
    head remapped with --remap-head k400 with Kinetics-400's; vmae-predict is told neither."""
    from tf_models import labels

    cfg = TINY_V2_FT.with_(num_classes=710)
    report = convert(config=cfg, synthetic=True, family="v2", dataset="k710", remap_head=remap, output_dir=tmp_path,
                     name="v2", xla=False, float64=False)
    assert report["passed"], report["checks"]
    run = predict(artifact["video"], "--model", tmp_path / "v2", "--views", "1", "--top", "20", "--json", "-q")
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)
    names = labels.load(remap or "k710")
    assert result["dataset"] == "k710" and len(result["top"]) == 20
    assert [t["label"] for t in result["top"]] == [names[t["index"]] for t in result["top"]]
