"""`vmae-convert` as a user runs it: fresh process, full-size ViT-S, artifacts checked
independently of the converter's own report."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import run_cli

from converter.checkpoint import read_checkpoint
from converter.variants import arch_config
from pt_reference import build_reference

SERVE_IN_PLAIN_TF = """
import sys, numpy as np, tensorflow as tf
args = [np.load(p) for p in sys.argv[2:]]
model = tf.saved_model.load(sys.argv[1].rsplit('/', 1)[0] + '/model')  # keep it: it owns the variables
np.save(sys.argv[1], model.serve(*args).numpy())
"""


def _serve_in_fresh_tensorflow(folder, out, inputs):
    """Run the SavedModel in a process that never imports torch or this project."""
    (out.parent / "model").symlink_to(folder.resolve())
    paths = []
    for i, x in enumerate(inputs):
        paths.append(out.parent / f"in{i}.npy")
        np.save(paths[-1], x)
    result = subprocess.run([sys.executable, "-c", SERVE_IN_PLAIN_TF, str(out), *map(str, paths)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_full_size_vit_s_end_to_end(tmp_path, stage):
    out_dir = tmp_path / "out"
    result = run_cli("--variant", "S", "--dataset", "k400", "--stage", stage, "--synthetic",
                     "--output-dir", out_dir, "--no-float64")
    assert result.returncode == 0, result.stderr[-3000:]
    name = f"TFVideoMAE_S_K400_16x224_{stage.upper()}"
    assert f"{name}: PASS" in result.stdout
    assert "pytorch forward" in result.stderr  # progress is shown
    report = json.loads((out_dir / f"{name}.parity.json").read_text())
    assert report["passed"] and report["checks"]["tf_vs_pt"]["max_abs"] < 1e-5
    assert (out_dir / f"{name}.weights.h5").stat().st_size > 80e6  # ~22M float32 parameters
    with zipfile.ZipFile(out_dir / f"{name}.zip") as zf:
        assert f"{name}/saved_model.pb" in zf.namelist()
    assert not list(out_dir.glob(".staging-*"))

    # Independent check: official-format file -> PyTorch reference vs the SavedModel on disk.
    cfg = arch_config("S", "k400", stage)
    ckpt = read_checkpoint(out_dir / f"synthetic_{name}_seed0.pth")
    reference = build_reference(cfg)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.tensors.items()}, strict=True)
    rng = np.random.default_rng(123)
    video = rng.uniform(0, 1, (1, 3, 16, 224, 224)).astype(np.float32)  # another input than the report's
    inputs = [video.transpose(0, 2, 3, 4, 1).copy()]
    with torch.inference_mode():
        if stage == "pt":
            from converter.masking import tube_mask

            mask = tube_mask(cfg, 1, seed=99)
            expected = reference(torch.from_numpy(video), torch.from_numpy(mask)).numpy()
            inputs.append(mask)
        else:
            expected = reference(torch.from_numpy(video)).numpy()
    got = _serve_in_fresh_tensorflow(out_dir / name, tmp_path / "serve_out.npy", inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_no_checkpoint_and_no_network_is_one_line_error(tmp_path):
    """Without --checkpoint the official file is fetched; with no network that fails in one
    line that says how to proceed."""
    result = run_cli("--variant", "B", "--dataset", "ssv2", "--quiet", "--output-dir", tmp_path / "o",
                     env={"VMAE_CACHE": str(tmp_path / "cache"),
                          "VMAE_DOWNLOAD_URL_SSV2_B_2400_FT": "http://127.0.0.1:9/closed"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "--checkpoint" in result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_help_explains_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--variant", "--dataset", "--stage", "--checkpoint", "--synthetic", "--seed",
                   "--output-dir", "--atol", "--rtol", "--batch", "--encoder-only"):
        assert option in result.stdout
