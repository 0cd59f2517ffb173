"""What the vmae-* commands do before anything loads tensorflow: keep native libraries' stderr
off the user's terminal, so a command's stderr holds its own lines.

tensorflow's C++ side writes start-up lines straight to file descriptor 2 from inside its
shared libraries; on some CPUs (Intel with AVX-512/AMX, AMD EPYC with AVX-512: "All log messages before
absl::InitializeLog() ...", "oneDNN custom operations are on ...") whatever
TF_CPP_MIN_LOG_LEVEL says. No Python-level setting reaches them, so the descriptor itself
is moved: fd 2 goes to an anonymous temporary file, and Python's `sys.stderr` (progress,
`error:` and `note:` lines, warnings) goes on writing to the terminal through a duplicate.
The numerics are untouched: oneDNN stays as it is, only its announcement is not shown.

A top-level module of the standard library alone, because `vmae-predict` must move the
descriptor before it imports `tf_models`: every module there imports keras, hence tensorflow,
which writes those lines as it loads. `vmae-convert` and `vmae-export` load tensorflow later,
inside `converter.cli.guarded`, which calls the same function.
"""
from __future__ import annotations

import os
import sys
import tempfile


def _real_stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a test runner's or CliRunner's in-memory stream
        return None


def hide_native_stderr() -> bool:
    """Move fd 2 aside for the rest of the process (tensorflow may also write as it exits, so it
    is never moved back: call this only where the process ends after the run, as the CLI does).
    Returns False, changing nothing, when Python's stderr is not fd 2 (an in-process test)."""
    if _real_stderr_fd() != 2:
        return False
    sys.stderr.flush()
    terminal = os.dup(2)
    sink = tempfile.TemporaryFile(prefix="vmae-native-stderr-")
    os.dup2(sink.fileno(), 2)
    sink.close()  # fd 2 keeps the file open; nothing else needs it
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                      errors="backslashreplace")
    return True


def predict() -> None:
    """The `vmae-predict` command: `tf_models.predict.main`, with fd 2 moved aside before tensorflow
    loads (unless --debug, which shows everything)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read as tensorflow loads: set before the import
    if "--debug" not in sys.argv[1:]:
        hide_native_stderr()
    from tf_models.predict import main

    main()


if __name__ == "__main__":
    predict()
