"""`vmae-convert`: official VideoMAE checkpoint -> Keras weights.h5 + SavedModel, with parity.

Every failure a user can cause ends in one `error:` line and a non-zero exit
(2: bad input, 3: parity failed, 130: interrupted); --debug shows the traceback.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Callable

import click

from .errors import VMAEError
from .variants import DATASETS, VARIANTS

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM exits 143


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised like Ctrl-C so every `with` on the way out (the staging
    folder above all) cleans up before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts():
    """SIGTERM (kill, timeout, a scheduler) would otherwise end Python at once, leaving the
    staging folder; SIGINT is installed too, in case the parent shell ignored it."""
    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave the defaults
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def guarded(action: Callable[[], int | None], debug: bool = False) -> None:
    """Run `action` as the CLI does and exit: every failure ends in one `error:` line and a
    non-zero code, a traceback only with --debug. `action` returns an exit code or None."""
    try:
        with signals_as_interrupts():
            code = action()
    except VMAEError as err:
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        click.echo(f"error: interrupted by {signal.Signals(signum).name} before the conversion finished; "
                   "partial files were removed: run the command again", err=True)
        sys.exit(128 + signum)
    except Exception as err:  # a bug of ours: say so in one line, keep the trace for --debug
        if debug:
            raise
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        click.echo(f"error: internal error {type(err).__name__}: {first} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or 0)


def _progress(quiet: bool):
    start = time.perf_counter()

    def report(message: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - start:7.1f}s] {message}", err=True)

    return report


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def summary(report: dict) -> str:
    """A few lines for people; the JSON report next to the artifacts has everything."""
    lines = [f"{report['artifact']}: {'PASS' if report['passed'] else 'FAIL'}"
             f"  (output {report['output_shape']}, std {report['output_std']:.3f}, "
             f"{report['wall_seconds']:.1f}s)"]
    lines.append(f"  {'check':<18}{'max abs':>10}{'max rel':>10}  result")
    for name, c in report["checks"].items():
        result = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "FAIL")
        if c.get("gate") is False:
            result += " (info)"
        lines.append(f"  {name:<18}{_fmt(c.get('max_abs')):>10}{_fmt(c.get('max_rel')):>10}  {result}"
                     + (f"  {c['detail']}" if c.get("detail") and not c.get("skipped") else ""))
    tol = report["tolerance"]
    lines.append(f"  gate: |tf - pt| <= {tol['atol']:g} + {tol['rtol']:g} * |pt| on every element")
    for note in report.get("checkpoint", {}).get("notes", []):
        lines.append(f"  note: {note}")
    for name, a in report["artifacts"].items():
        lines.append(f"  wrote {a['path']} ({a['size'] / 2**20:.1f} MiB)")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--variant", type=click.Choice(list(VARIANTS), case_sensitive=False), default="S",
              show_default=True, help="Backbone size: ViT-S/B/L/H (sets width, depth and heads).")
@click.option("--dataset", type=click.Choice(list(DATASETS), case_sensitive=False), default="k400",
              show_default=True, help="Training data of the checkpoint: sets classes, mask ratio, artifact name.")
@click.option("--stage", type=click.Choice(["ft", "pt"]), default="ft", show_default=True,
              help="ft: fine-tuned classifier; pt: pre-trained masked autoencoder.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Official .pth file (state dict bare or under 'model'/'module').")
@click.option("--synthetic", is_flag=True,
              help="Generate an official-format checkpoint with random non-zero weights and convert it.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the synthetic weights, the parity input and the tube mask.")
@click.option("--output-dir", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Where artifacts and the parity report go.")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance of the parity gate.")
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="Relative tolerance of the parity gate.")
@click.option("--batch", type=int, default=1, show_default=True, help="Clips in the parity input.")
@click.option("--num-classes", type=int, default=None,
              help="Classes of a fine-tuned head when it is not the dataset's (read from the head otherwise).")
@click.option("--encoder-only", is_flag=True,
              help="With --stage pt: export the encoder as a headless backbone for fine-tuning in TensorFlow.")
@click.option("--pooled", is_flag=True, help="With --encoder-only: output mean-pooled features [batch, dim].")
@click.option("--float64/--no-float64", default=True, show_default=True,
              help="Also compare both frameworks in float64 (reported, not gated).")
@click.option("--xla/--no-xla", default=True, show_default=True,
              help="Also check the reloaded SavedModel under tf.function(jit_compile=True).")
@click.option("--quiet", is_flag=True, help="No progress lines; only the summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(variant, dataset, stage, checkpoint, synthetic, seed, output_dir, atol, rtol, batch, num_classes,
         encoder_only, pooled, float64, xla, quiet, debug):
    """Convert an official VideoMAE checkpoint to Keras/TensorFlow and prove parity.

    \b
    Examples:
      vmae-convert --variant B --dataset ssv2 --checkpoint videomae_b_ssv2_ft.pth --output-dir out/
      vmae-convert --variant S --dataset k400 --synthetic --output-dir out/

    Writes <name>.weights.h5, <name>/ (SavedModel, endpoint `serve`), <name>.zip and
    <name>.parity.json, where <name> is e.g. TFVideoMAE_B_SSv2_16x224_FT. Exits 3 when a
    parity check fails (the report is still written, no artifact is published).
    """
    def run() -> int:
        from .pipeline import convert

        report = convert(
            progress=_progress(quiet), variant=variant.upper(), dataset=dataset.lower(), stage=stage,
            checkpoint=checkpoint, synthetic=synthetic, seed=seed, output_dir=output_dir, atol=atol,
            rtol=rtol, batch=batch, num_classes=num_classes, encoder_only=encoder_only, pooled=pooled,
            float64=float64, xla=xla,
        )
        click.echo(summary(report))
        if not report["passed"]:
            click.echo(f"error: parity failed; see {output_dir}/{report['artifact']}.parity.json", err=True)
            return 3
        return 0

    guarded(run, debug)


if __name__ == "__main__":
    main()
