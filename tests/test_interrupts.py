"""Interrupted conversions (case 7): SIGINT and SIGTERM clean the staging folder and exit
non-zero with one line; SIGKILL cannot be handled, so what it leaves must never pass for a
finished artifact, and the next run must clear it and publish correct artifacts.

The three signals hit three tiny conversions running at once, each while its export is under
way (the staging folder already holds weights.h5)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FT, start_tiny_conversion

from converter import export, pipeline
from converter.cli import guarded
from converter.checkpoint import read_checkpoint
from converter.export import STAGING_PREFIX, Staging, clear_stale, sha256_file
from converter.synthetic import write_synthetic_checkpoint

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
FINAL = ("tiny.weights.h5", "tiny", "tiny.zip", "tiny.parity.json")


def _default_sigint():
    # A test runner started as a background job ignores SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finals(out):
    return [f for f in FINAL if (out / f).exists()]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupts")
    ckpt = write_synthetic_checkpoint(TINY_FT, folder / "tiny.pth", seed=3)
    procs = {}
    for name in SIGNALS:
        (folder / name).mkdir()
        procs[name] = start_tiny_conversion(TINY_FT, ckpt, folder / name, "tiny", preexec_fn=_default_sigint)
    pending, staged = set(SIGNALS), {}
    deadline = time.monotonic() + 500
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            hits = list((folder / name).glob(f"{STAGING_PREFIX}tiny-*/tiny.weights.h5"))
            if hits:  # the export is under way
                procs[name].send_signal(SIGNALS[name])
                staged[name] = hits[0].parent
                pending.discard(name)
            elif procs[name].poll() is not None:
                pending.discard(name)  # ended before its export: reported below
        time.sleep(0.02)
    results = {}
    for name, proc in procs.items():
        if proc.poll() is None and name in pending:
            proc.kill()
        _, stderr = proc.communicate(timeout=300)
        results[name] = {"rc": proc.returncode, "stderr": stderr, "out": folder / name, "staging": staged.get(name)}
    return results, ckpt


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_clean_up_and_exit_with_one_line(interrupted, name):
    run = interrupted[0][name]
    assert run["staging"] is not None, f"the conversion ended before its export: {run['stderr'][-2000:]}"
    assert run["rc"] == 128 + SIGNALS[name], run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    lines = [line for line in run["stderr"].splitlines() if line.strip()]
    assert lines == [f"error: interrupted by {name} before the conversion finished; partial files were "
                     "removed: run the command again"], run["stderr"][-3000:]
    assert not run["staging"].exists()
    assert sorted(p.name for p in run["out"].iterdir()) == []


def test_sigkill_leaves_its_staging_folder_and_no_final_name(interrupted):
    run = interrupted[0]["SIGKILL"]
    assert run["staging"] is not None, run["stderr"][-2000:]
    assert run["rc"] == -signal.SIGKILL
    assert run["staging"].is_dir()  # nothing could clean it...
    assert finals(run["out"]) == []  # ...and nothing under a final name


def test_rerun_after_sigkill_clears_staging_and_publishes_correct_artifacts(interrupted):
    results, ckpt = interrupted
    out, stale = results["SIGKILL"]["out"], results["SIGKILL"]["staging"]
    assert stale.is_dir()
    # Make the leftovers look finished: a re-run must neither publish nor keep them.
    (stale / "tiny.weights.h5").write_bytes(b"stale, not an HDF5 file")
    (stale / "tiny.zip").write_bytes(b"stale")
    report = pipeline.convert(config=TINY_FT, checkpoint=str(ckpt), output_dir=str(out), name="tiny",
                              xla=False, float64=False)
    assert report["passed"]
    assert not stale.exists() and not list(out.glob(f"{STAGING_PREFIX}*"))
    assert finals(out) == list(FINAL)
    on_disk = json.loads((out / "tiny.parity.json").read_text())
    for filename in ("tiny.weights.h5", "tiny.zip"):
        assert on_disk["artifacts"][filename]["sha256"] == sha256_file(out / filename)

    from converter.engine import export_state_dict
    from converter.videomae_rules import rules_for
    from tf_models import build_model

    model = build_model(TINY_FT)
    model.load_weights(out / "tiny.weights.h5")
    expected = read_checkpoint(ckpt).tensors
    got = export_state_dict(model, rules_for("ft"))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_dead_runs_of_the_same_artifact_are_cleared(tmp_path):
    dead = _dead_pid()
    killed = tmp_path / f"{STAGING_PREFIX}tiny-{dead}"  # a SIGKILLed run: its lock file, nobody holding it
    killed.mkdir()
    (killed / export.LOCK_NAME).write_text("")
    (killed / "tiny.weights.h5").write_bytes(b"partial")
    other_artifact = tmp_path / f"{STAGING_PREFIX}tiny-x-{dead}"
    other_artifact.mkdir()
    starting = tmp_path / f"{STAGING_PREFIX}tiny-{os.getppid()}"  # a live process, no lock yet
    starting.mkdir()
    tmp_report = tmp_path / f".tiny.parity.json.{dead}.tmp"
    tmp_report.write_text("{")
    with Staging(tmp_path, "tiny") as live:
        assert not killed.exists() and not tmp_report.exists()
        assert other_artifact.is_dir() and starting.is_dir()
        # A second run of the same artifact while this one is live leaves it alone.
        assert clear_stale(tmp_path, "tiny") == []
        assert live.dir.is_dir()
    assert not live.dir.exists()


def test_interrupted_publish_leaves_no_report_vouching_for_mixed_files(tmp_path, monkeypatch):
    for filename in ("tiny.weights.h5", "tiny.zip"):
        (tmp_path / filename).write_bytes(b"old")
    (tmp_path / "tiny.parity.json").write_text(json.dumps({"passed": True}))
    real_replace, moves = os.replace, []

    def replace_then_die(src, dst):
        if moves:
            raise KeyboardInterrupt  # the signal lands between two moves
        moves.append(dst)
        real_replace(src, dst)

    with pytest.raises(KeyboardInterrupt):
        with Staging(tmp_path, "tiny") as st:
            for filename in ("tiny.weights.h5", "tiny.zip"):
                st.path(filename).write_bytes(b"new")
            monkeypatch.setattr(export.os, "replace", replace_then_die)
            st.publish(["tiny.weights.h5", "tiny.zip"], stale=[tmp_path / "tiny.parity.json"])
    monkeypatch.undo()
    assert (tmp_path / "tiny.weights.h5").read_bytes() == b"new" and (tmp_path / "tiny.zip").read_bytes() == b"old"
    assert not (tmp_path / "tiny.parity.json").exists()  # the old report no longer vouches for these
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))


# The three ways a signal reached the CLI badly before: turned into another exception by the
# library it hit, swallowed by a `__del__` it hit, or cutting the publish of a finished run in two.
# Each is made to happen for certain here, in this process, through the CLI's `guarded`.

def _interrupted_line(name):
    return f"error: interrupted by {name} before the conversion finished; partial files were removed: run the command again"


def _exit_of(action, capsys):
    try:
        with pytest.raises(SystemExit) as ended:
            guarded(action)
    finally:
        logging.getLogger("tensorflow").disabled = False  # a stopped run quiets it for good: not the next test
    return ended.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _signal_self(signum=signal.SIGTERM):
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the handler runs as soon as the signal lands, well before this ends


def test_an_interrupt_a_library_turns_into_another_error_is_still_an_interrupt(capsys, tmp_path):
    def action():
        with Staging(tmp_path, "tiny") as st:
            st.path("tiny.weights.h5").write_bytes(b"partial")
            try:
                _signal_self()
            except KeyboardInterrupt:  # what keras/tensorflow made of it inside a layer call (CI, stop 8)
                raise TypeError("Exception encountered when calling PatchEmbed.call().") from None
        return 0

    code, lines = _exit_of(action, capsys)
    assert (code, lines) == (128 + signal.SIGTERM, [_interrupted_line("SIGTERM")])
    assert list(tmp_path.iterdir()) == []


class _InterruptedFinaliser:
    def __del__(self):  # Python reports an exception raised here and carries on ("Exception ignored in")
        _signal_self()


# Without the CLI's own hook, pytest's would catch the finaliser's traceback: make that a failure.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_a_finaliser_swallows_stops_the_run_at_the_next_phase(capsys, tmp_path):
    phases, reached = pipeline.Phases(None), []

    def action():
        with Staging(tmp_path, "tiny") as st:
            st.path("tiny.weights.h5").write_bytes(b"partial")
            finaliser = _InterruptedFinaliser()
            del finaliser
            reached.append("after the finaliser")
            with phases("export savedmodel"):
                reached.append("export savedmodel")
        return 0

    code, lines = _exit_of(action, capsys)
    assert reached == ["after the finaliser"]
    assert (code, lines) == (128 + signal.SIGTERM, [_interrupted_line("SIGTERM")])  # no "Exception ignored" trace
    assert list(tmp_path.iterdir()) == []


def test_a_signal_during_the_publish_lets_it_finish_with_its_report(capsys, tmp_path, monkeypatch):
    # A suite started in the background (`cmd &`) inherits SIGINT ignored, and the run rightly keeps
    # it ignored: this test is about a SIGINT that arrives, so it gives the process Python's default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ckpt = write_synthetic_checkpoint(TINY_FT, tmp_path / "tiny.pth", seed=3)
    out = tmp_path / "out"
    real_replace, moves = os.replace, []

    def replace_signalled_once(src, dst):
        if not moves:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler has run before the move
        moves.append(Path(dst).name)
        real_replace(src, dst)

    def action():
        monkeypatch.setattr(export.os, "replace", replace_signalled_once)
        pipeline.convert(config=TINY_FT, checkpoint=str(ckpt), output_dir=str(out), name="tiny",
                         xla=False, float64=False)
        return 0

    code, lines = _exit_of(action, capsys)
    monkeypatch.undo()
    assert moves[-1] == "tiny.parity.json"  # the report moves last: it vouches for what came before
    assert code == 0
    assert lines[-1] == "note: SIGINT arrived as the run was ending; it ran to its end and what it reported stands"
    assert finals(out) == list(FINAL)
    on_disk = json.loads((out / "tiny.parity.json").read_text())
    assert on_disk["passed"]
    for filename in ("tiny.weights.h5", "tiny.zip"):
        assert on_disk["artifacts"][filename]["sha256"] == sha256_file(out / filename)
        assert on_disk["artifacts"][filename]["path"] == str(out / filename)
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    try:
        with pipeline.Phases(None)("a later run, outside the CLI"):
            pass
    except KeyboardInterrupt:
        pytest.fail("the signal belonged to the run that ended, yet it stopped a later one")
    finally:
        signal.signal(signal.SIGINT, previous)


def test_what_tensorflow_says_of_a_trace_cut_short_does_not_follow_the_one_line(capfd):
    from converter import frameworks

    _, tf, _ = frameworks.load()

    def action():
        with tf.Graph().as_default():  # as tf.map_fn builds its loop while a model is traced
            never_used = tf.TensorArray(tf.float32, size=1).write(0, 1.0)
            try:
                _signal_self()
            finally:  # the stop unwinds the trace: tensorflow logs "Object was never used" as it goes
                del never_used
        return 0

    class Said(logging.Handler):  # tensorflow's handler writes to whatever stderr was when it loaded
        def emit(self, record):
            said.append(record.getMessage())

    said, logger, handler = [], logging.getLogger("tensorflow"), Said()
    logger.addHandler(handler)
    try:
        code, lines = _exit_of(action, capfd)
    finally:
        logger.removeHandler(handler)
    assert (code, lines) == (128 + signal.SIGTERM, [_interrupted_line("SIGTERM")])
    assert said == []
