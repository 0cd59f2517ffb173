"""`vmae-convert --all` as a user runs it: the real CLI, its real child command lines and the
manifest, on a registry of three entries made tiny by $VMAE_TEST_ARCH_OVERRIDES."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from test_cli_options import TINY_OVERRIDES

from converter import batch
from converter.cli import TEST_ARCH_ENV
from converter.registry import load_registry, shard

S_FT, S_PT, B_FT = "TFVideoMAE_S_K400_16x224_FT", "TFVideoMAE_S_K400_16x224_PT", "TFVideoMAE_B_K400_16x224_FT_800e"
SAME = ("--synthetic", "--no-xla", "--no-float64")  # the inputs every run below repeats


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    data = yaml.safe_load((REPO / "checkpoints.yaml").read_text())
    keep = {"k400-s-1600-ft", "k400-s-1600-pt", "k400-b-800-ft"}  # two release entries, one extra
    data["checkpoints"] = [e for e in data["checkpoints"] if e["name"] in keep]
    (root / "registry.yaml").write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update({"VMAE_REGISTRY": str(root / "registry.yaml"), TEST_ARCH_ENV: TINY_OVERRIDES,
                "VMAE_CACHE": str(root / "cache"),
                "VMAE_DOWNLOAD_URL_K400_S_1600_FT": "http://127.0.0.1:9/closed"})

    def run(*args):
        return subprocess.run([sys.executable, "-m", "converter.cli", "--all", "--output-dir", str(root / "release"),
                               *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)

    return root, run


def manifest(root):
    return json.loads((root / "release" / "manifest.json").read_text())


# What each release name must hold, typed from the names: a child command line that lost --stage or
# --variant still passes its own parity gate, under a release name that promises another model.
# Tiny pre-trained output: 2 frame groups x 4 patches, int(0.9 * 4) = 3 hidden per group (K400's tube
# mask), each 2 x 16 x 16 x 3 pixels.
EXPECTED = {S_FT: ("S", "k400", "ft", [1, 400]), S_PT: ("S", "k400", "pt", [1, 6, 1536]),
            B_FT: ("B", "k400", "ft", [1, 400])}


def describes_its_entry(report, name):
    variant, dataset, stage, shape = EXPECTED[name]
    # (the tiny architecture comes in as a config, so the report leaves variant and dataset to the command)
    command = report["command"].split()
    asked = tuple(command[command.index(f"--{key}") + 1] for key in ("variant", "dataset", "stage"))
    assert asked == (variant, dataset, stage) and report["stage"] == stage, name
    assert report["output_shape"] == shape, name


def test_batch_cli_end_to_end(zoo):
    root, run = zoo
    out = root / "release"

    # --all --jobs 2: the release entries only, in parallel, through the real child command line
    first = run(*SAME, "--jobs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "converted 2, skipped (already done) 0, failed 0" in first.stdout
    records = manifest(root)["entries"]
    assert set(records) == {S_FT, S_PT}
    for name in (S_FT, S_PT):
        assert records[name]["passed"] and records[name]["inputs"]["synthetic"] is True
        assert f"{name}.parity.json" in records[name]["artifacts"]
        assert (out / "logs" / f"{name}.log").exists()
        report = json.loads((out / f"{name}.parity.json").read_text())
        command = report["command"].split()
        assert {"--synthetic", "--quiet", "--no-float64", "--no-xla"} <= set(command)
        assert command[command.index("--name") + 1] == name
        describes_its_entry(report, name)

    # --include-extra --shard 1/2: the deterministic half of all three; the release one there is done
    entries = load_registry(root / "registry.yaml")
    half = {e.artifact for e in shard(entries, "1/2")}
    assert B_FT in half
    second = run(*SAME, "--include-extra", "--shard", "1/2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(manifest(root)["entries"]) == {S_FT, S_PT, B_FT}
    assert f"converted 1, skipped (already done) {len(half) - 1}, failed 0" in second.stdout
    describes_its_entry(json.loads((out / f"{B_FT}.parity.json").read_text()), B_FT)

    # filters: the fine-tuned release entry only, already done
    third = run(*SAME, "--stage", "ft")
    assert third.returncode == 0 and "converted 0, skipped (already done) 1, failed 0" in third.stdout
    assert f"skip {S_FT}: done and verified" in third.stderr

    # a deleted report, and a damaged manifest: both are redone, not skipped
    (out / f"{S_FT}.parity.json").unlink()
    assert "parity.json is missing" in batch.verify_record(out, records[S_FT])
    (out / "manifest.json").write_text("{not json")
    fourth = run(*SAME, "--variant", "S")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "converted 2, skipped (already done) 0" in fourth.stdout
    assert f"todo {S_FT}: no passing record" in fourth.stderr
    assert (out / f"{S_FT}.parity.json").exists()
    # the README's promise: the same conversion in another process writes a byte-identical .weights.h5
    h5 = f"{S_FT}.weights.h5"
    assert batch.sha256_file(out / h5) == records[S_FT]["artifacts"][h5]["sha256"]

    # a synthetic release is no real one: the real run redoes it, says why, and fails on the download
    real = run("--no-xla", "--no-float64", "--stage", "ft")
    assert real.returncode == 3, real.stderr[-3000:]
    assert f"todo {S_FT}: recorded from a synthetic checkpoint, now the official one" in real.stderr
    assert real.stderr.strip().splitlines()[-1].startswith(f"error: 1 conversions failed: {S_FT}")

    # other tolerances are other inputs: redone, and a failure there keeps the passing report
    again = run(*SAME, "--stage", "pt")
    assert again.returncode == 0 and "skipped (already done) 1" in again.stdout
    tight = run(*SAME, "--stage", "pt", "--atol", "0", "--rtol", "0")
    assert tight.returncode == 3, tight.stderr[-3000:]
    assert f"todo {S_PT}: other inputs: atol 1e-05 -> 0.0, rtol 1e-05 -> 0.0" in tight.stderr
    kept = json.loads((out / f"{S_PT}.parity.json").read_text())
    assert kept["passed"] and (out / f"{S_PT}.zip").exists()
    assert not json.loads((out / f"{S_PT}.failed.parity.json").read_text())["passed"]


def test_batch_cli_refuses_an_unusable_output_dir(zoo, tmp_path):
    root, _ = zoo
    (tmp_path / "a_file").write_text("x")
    env = {**os.environ, "VMAE_REGISTRY": str(root / "registry.yaml")}
    result = subprocess.run([sys.executable, "-m", "converter.cli", "--all", "--synthetic", "--output-dir",
                             str(tmp_path / "a_file" / "release")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert lines == [f"error: cannot write to {tmp_path / 'a_file' / 'release'}: it (or a parent) is a file, "
                     "not a folder (choose another --output-dir)"]
