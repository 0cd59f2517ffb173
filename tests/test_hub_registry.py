"""The hub repos of checkpoints.yaml (family hf) through the CLI as users reach them: --list,
--family hf to fetch one, --all --family hf for the batch; downloads from a local fake hub."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import yaml
from conftest import REPO, run_cli
from hf_folders import save_hub_style
from test_cli_options import TINY_OVERRIDES
from test_hf_cli import fake_hub  # noqa: F401 - the fixture

from converter.cli import TEST_ARCH_ENV
from converter.families import hf
from converter.registry import load_registry

REPO_ID = "MCG-NJU/videomae-base-finetuned-kinetics"
ENTRY, ARTIFACT = "hf-videomae-base-finetuned-kinetics", "TFVideoMAE_hf_videomae-base-finetuned-kinetics"
LABELS = [f"kinetics class {i}" for i in range(400)]


def test_list_shows_the_hub_entries():
    result = run_cli("--list", "--family", "hf")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.strip().splitlines()[2:]]
    assert len(rows) == 13 and {row[1] for row in rows} == {"hf"}
    row = next(r for r in rows if r[0] == ENTRY)
    assert row[2:6] == ["B", "k400", "ft", "1600"] and row[8:] == [f"hf://{REPO_ID}@main", "unverified", ARTIFACT]
    everything = run_cli("--list")
    assert everything.returncode == 0, everything.stderr
    families = {line.split()[0]: line.split()[1] for line in everything.stdout.strip().splitlines()[2:]}
    assert families[ENTRY] == "hf" and families["k400-b-1600-ft"] == "official" and len(families) == 36  # 18 official, 13 hf, 5 v2


def test_synthetic_hub_batch_is_one_error_line(tmp_path):
    result = run_cli("--all", "--synthetic", "--family", "hf", "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --synthetic writes .pth checkpoints (official or v2 keys), not "
                                     "transformers folders: drop --synthetic or use --family official/v2 (see --help)")
    assert not (tmp_path / "out").exists()


def _serve(tmp_path, fake_hub, seed):
    folder = save_hub_style(tmp_path / f"repo{seed}", hf.CLASSIFIER, seed=seed, id2label=dict(enumerate(LABELS)))
    fake_hub.repos[REPO_ID] = folder
    return hashlib.sha256((folder / "pytorch_model.bin").read_bytes()).hexdigest()


def test_hub_entry_fetched_by_family_then_batch_then_a_moved_branch_is_refused(tmp_path, fake_hub):
    served = _serve(tmp_path, fake_hub, seed=0)
    data = yaml.safe_load((REPO / "checkpoints.yaml").read_text())
    keep = {ENTRY, "hf-videomae-base-short-finetuned-kinetics", "k400-b-1600-ft"}
    data["checkpoints"] = [e for e in data["checkpoints"] if e["name"] in keep]
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    # The test hook makes official entries tiny; a hub entry's architecture is its (tiny) config.json.
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{fake_hub.server_port}", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "VMAE_REGISTRY": str(registry),
           "VMAE_CACHE": str(tmp_path / "vmae-cache"), TEST_ARCH_ENV: TINY_OVERRIDES}

    # One entry, picked as users pick official ones, plus --family.
    out = tmp_path / "out"
    first = run_cli("--family", "hf", "--variant", "B", "--dataset", "k400", "--stage", "ft", "--output-dir", out,
                    "--no-xla", "--no-float64", "--quiet", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{ARTIFACT}: PASS" in first.stdout and f"recorded sha256 of {ENTRY}" in first.stdout
    report = json.loads((out / f"{ARTIFACT}.parity.json").read_text())
    assert report["family"] == "hf" and report["reference"].startswith("transformers")
    assert report["labels"] == LABELS and report["checkpoint"]["sha256"] == served
    assert f"/{REPO_ID}/resolve/main/config.json" in fake_hub.seen
    entries = {e.name: e for e in load_registry(registry)}
    assert entries[ENTRY].sha256 == served and entries["k400-b-1600-ft"].sha256 is None

    # The batch: release hub entries of ViT-B only, through its child command lines, checked sha256.
    batch_out = tmp_path / "release"
    env_batch = {k: v for k, v in {**os.environ, **env}.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    batch = subprocess.run([sys.executable, "-m", "converter.cli", "--all", "--family", "hf", "--variant", "B",
                            "--output-dir", str(batch_out), "--no-xla", "--no-float64"], cwd=REPO, env=env_batch,
                           capture_output=True, text=True, timeout=1800)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert "converted 1, skipped (already done) 0, failed 0" in batch.stdout
    record = json.loads((batch_out / "manifest.json").read_text())["entries"][ARTIFACT]
    assert record["passed"] and record["entry"] == ENTRY and record["source_sha256"] == served

    # The branch moves to other weights: the recorded sha256 stops them before any conversion.
    fake_hub.commit = "f" * 40
    moved = _serve(tmp_path, fake_hub, seed=1)
    again = run_cli("--family", "hf", "--variant", "B", "--dataset", "k400", "--stage", "ft", "--output-dir",
                    tmp_path / "out2", "--quiet", env=env)
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"error: hf://{REPO_ID}@main: pytorch_model.bin has sha256 {moved} but the registry expects {served} for "
        f"{ENTRY}; the revision moved: pin source.revision to the commit that was verified, or clear sha256 to "
        "take the new files")
