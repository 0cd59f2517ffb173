"""SIGINT and SIGTERM during a conversion: stop, leave nothing half-written, say so in one line.

A Python signal handler raises wherever the main thread happens to be, and the libraries
underneath do not always let that exception through: tensorflow can turn it into a TypeError
inside a layer call, and a `__del__` that it interrupts swallows it ("Exception ignored in").
So the handler also records the signal, and the rest of the code trusts the record, not the
exception: `guarded` treats any failure after a signal as the interruption, and `check()` at
every phase boundary raises it again if it was swallowed.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys


class Interrupted(KeyboardInterrupt):
    """Raised like Ctrl-C, so every `with` on the way out (the staging folder above all) cleans up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Signals:
    """What reached one guarded run: `received` is its first signal, kept after the run ends."""

    def __init__(self):
        self.received: int | None = None
        self.holding = False  # inside `held()`: recorded, raised by nobody until the block ends


_active: Signals | None = None  # the run in progress; outside one, nothing is recorded or raised


def quiet_libraries() -> None:
    """Once a run is stopped or failed, its one `error:` line is the last word. Tensorflow would
    otherwise add its own as it collects what the stop cut short: "Object was never used", with a
    stack, for each TensorArray of a graph trace an interrupt left halfway (seen in CI)."""
    logging.getLogger("tensorflow").disabled = True


def _handler(signum, frame):
    quiet_libraries()
    run = _active  # set for as long as this handler is installed
    if run.received is None:
        run.received = signum
    if not run.holding:
        raise Interrupted(signum)


def check() -> None:
    """Raise the interruption now if a signal came and its exception was lost on the way."""
    run = _active
    if run is not None and run.received is not None and not run.holding:
        raise Interrupted(run.received)


@contextlib.contextmanager
def held():
    """A block that must not be cut in two (publishing the finished artifacts: a few renames).
    A signal arriving inside is only recorded; the caller decides what it means afterwards."""
    run = _active
    if run is None:
        yield
        return
    before, run.holding = run.holding, True
    try:
        yield
    finally:
        run.holding = before


@contextlib.contextmanager
def signals_as_interrupts():
    """SIGTERM (kill, timeout, a scheduler) would otherwise end Python at once, leaving the
    staging folder; SIGINT gets the same handler so both name themselves. A signal the parent
    set to be ignored (a background job's SIGINT) stays ignored. Yields the run's `Signals`."""
    global _active
    run, outer = Signals(), _active
    previous = {}
    unraisable = sys.unraisablehook

    def quiet_when_interrupted(info):
        # The interruption a finaliser swallowed is recorded and raised again at the next
        # phase: its "Exception ignored in ..." traceback would only break the one-line rule.
        if not isinstance(info.exc_value, Interrupted):
            unraisable(info)

    sys.unraisablehook = quiet_when_interrupted
    _active = run
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) in (signal.SIG_IGN, None):
            continue
        with contextlib.suppress(ValueError):  # not the main thread: leave the defaults
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield run
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _active = outer
        sys.unraisablehook = unraisable
