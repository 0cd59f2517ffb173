"""`.ci/run` stops at a failed setup step with one line, instead of running on to a missing
`.venv/bin/vmae-convert` (exit 127) with the cause far above, as a full disk once made it do."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_failed_setup_stops_ci_with_the_cause(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    shim = tmp_path / "bin"
    shim.mkdir()
    python3 = shim / "python3"  # fails as pip did on a full disk
    python3.write_text("#!/bin/sh\necho 'OSError: [Errno 28] No space left on device' >&2\nexit 7\n")
    python3.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", ".ci/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "ci: the README's test command failed (exit 7)"
    assert "vmae-convert" not in run.stderr
    assert not (repo / "ci-parity").exists()
