"""`vmae-convert`: official VideoMAE checkpoint -> Keras weights.h5 + SavedModel, with parity.

Every failure a user can cause ends in one `error:` line and a non-zero exit
(2: bad input, 3: parity failed, 130: interrupted); --debug shows the traceback.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import click

from vmae_cli import hide_native_stderr

from . import hub, interrupts
from .errors import VMAEError
from .registry import DEFAULT_FAMILY, FAMILIES
from .variants import DATASETS, V2_VARIANTS, VARIANTS, generation_for

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM exits 143
TEST_ARCH_ENV = "VMAE_TEST_ARCH_OVERRIDES"


def guarded(action: Callable[[], int | None], debug: bool = False) -> None:
    """Run `action` as the CLI does and exit: every failure ends in one `error:` line and a
    non-zero code, a traceback only with --debug. `action` returns an exit code or None.

    After a signal, whatever exception comes out is the interruption, whatever a library made
    of it on the way (see `interrupts`). Native libraries' own stderr lines (tensorflow's start-up
    lines on some CPUs) are kept off the terminal unless `debug` (see `vmae_cli`)."""
    if not debug:
        hide_native_stderr()
    signals = interrupts.Signals()  # replaced by the run's own as soon as it starts
    try:
        with interrupts.signals_as_interrupts() as signals:
            code = action()
    except (Exception, KeyboardInterrupt) as err:
        if not debug:
            interrupts.quiet_libraries()
        signum = signals.received or getattr(err, "signum", None)
        if signum is None and isinstance(err, KeyboardInterrupt):
            signum = signal.SIGINT
        if signum is not None:
            if debug and not isinstance(err, KeyboardInterrupt):
                raise
            click.echo(f"error: interrupted by {signal.Signals(signum).name} before the conversion finished; "
                       "partial files were removed: run the command again", err=True)
            sys.exit(128 + signum)
        if debug:
            raise
        if isinstance(err, VMAEError):
            click.echo("error: " + " ".join(str(err).split("\n")), err=True)  # one line, whatever the message holds
            sys.exit(err.exit_code)
        # a bug of ours: say so in one line, keep the trace for --debug
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        click.echo(f"error: internal error {type(err).__name__}: {first} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
    if signals.received is not None:  # held while the artifacts were published, or lost after
        click.echo(f"note: {signal.Signals(signals.received).name} arrived as the run was ending; "
                   "it ran to its end and what it reported stands", err=True)
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


def _refuse_what_does_not_apply(given: set[str], values: dict) -> None:
    """Options that would be ignored, or values no run can use, are refused before any work
    (one `error:` line, exit 2): a user who passed them believes they took effect."""
    for option in ("atol", "rtol"):
        value = values[option]
        if not (math.isfinite(value) and value >= 0):
            raise click.UsageError(f"--{option} must be a finite number >= 0, got {value:g}")
    for option, least in (("seed", 0), ("jobs", 1), ("batch", 1)):
        if values[option] < least:
            raise click.UsageError(f"--{option} must be at least {least}, got {values[option]}")
    if values["list_"]:
        others = sorted(given - {"list_", "quiet", "debug", "family"})
        if others:
            raise click.UsageError(f"--list takes no other option (got {', '.join(_flag(o) for o in others)})")
        return
    if not values["all_"]:
        ignored = sorted(given & {"shard", "jobs", "include_extra"})
        if ignored:
            raise click.UsageError(f"{', '.join(_flag(o) for o in ignored)} only with --all: it would be ignored")
    else:
        ignored = sorted(given & {"checkpoint", "encoder_only", "pooled", "num_classes", "epochs", "name",
                                  "registry_entry", "remap_head"})
        if ignored:
            raise click.UsageError(f"--all converts the zoo entries as they are: "
                                   f"{', '.join(_flag(o) for o in ignored)} does not apply")
    if values["num_classes"] is not None and (values["num_classes"] < 1 or values["stage"] != "ft"):
        raise click.UsageError("--num-classes takes a number >= 1, for a fine-tuned head (--stage ft)")
    if "family" in given:
        # --synthetic writes .pth files (official and V2 keys); hub entries convert their own folders
        if values["synthetic"] and values["family"] == "hf":
            raise click.UsageError("--synthetic writes .pth checkpoints (official or v2 keys), not transformers "
                                   "folders: drop --synthetic or use --family official/v2")
        if values["registry_entry"]:
            raise click.UsageError("--registry-entry names one zoo entry, family included: drop --family")
    if values["pooled"] and not values["encoder_only"]:
        raise click.UsageError("--pooled applies to --encoder-only exports only: add --encoder-only")
    if values["checkpoint"] and values["synthetic"]:
        raise click.UsageError("--checkpoint and --synthetic exclude each other: --synthetic converts "
                               "generated weights, not the file; drop one")
    if "epochs" in given and (values["synthetic"] or values["checkpoint"]):
        raise click.UsageError("--epochs picks an official file to fetch; it does not apply with "
                               f"{'--synthetic' if values['synthetic'] else '--checkpoint'}")


def _zoo_family(variant: str, dataset: str, stage: str) -> str:
    """The family whose zoo entry a fetch means: v2 for a variant or dataset only V2 has."""
    return "v2" if generation_for(variant, dataset, stage) == "v2" else DEFAULT_FAMILY


def _flag(param: str) -> str:
    return "--" + param.rstrip("_").replace("_", "-")


def test_config(variant: str, dataset: str, stage: str, num_classes: int | None, family: str | None = None):
    """$VMAE_TEST_ARCH_OVERRIDES (JSON of ArchConfig fields), for tests only: the official
    configuration with these changes, so the real CLI, batch included, runs on tiny models.
    Decoder fields apply to pre-trained entries only."""
    raw = os.environ.get(TEST_ARCH_ENV)
    if not raw:
        return None
    from .variants import arch_config

    overrides = {k: v for k, v in json.loads(raw).items() if stage == "pt" or not k.startswith("decoder_")}
    if num_classes:
        overrides["num_classes"] = num_classes
    generation = "v2" if (family or "") == "v2" or generation_for(variant, dataset, stage) == "v2" else "v1"
    return arch_config(variant, dataset, stage, generation, **overrides)


def _test_name(config, variant, dataset, stage, encoder_only, pooled, family=None, remap_head=None) -> str:
    """The name the zoo model would get, for a run on a test configuration."""
    from .pipeline import ConvertOptions, default_name, name_for_classes

    opts = ConvertOptions(variant=variant, dataset=dataset, stage=stage, encoder_only=encoder_only, pooled=pooled,
                          family=family, remap_head=remap_head)
    return name_for_classes(default_name(opts), config, opts)


class OneLineUsageErrors(click.Command):
    """Click's own usage errors (an unknown option, a bad value) as one `error:` line too, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            click.echo(f"error: {' '.join(err.format_message().split())} (see --help)", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


@click.command(cls=OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--variant", type=click.Choice(list({**VARIANTS, **V2_VARIANTS}), case_sensitive=False), default="S",
              show_default=True, help="Backbone size: ViT-S/B/L/H, ViT-G (VideoMAE V2's g/14): width, depth, heads.")
@click.option("--dataset", type=click.Choice(list(DATASETS), case_sensitive=False), default="k400",
              show_default=True, help="Training data of the checkpoint: sets classes, mask ratio, artifact name.")
@click.option("--stage", type=click.Choice(["ft", "pt"]), default="ft", show_default=True,
              help="ft: fine-tuned classifier; pt: pre-trained masked autoencoder.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official .pth file (state dict bare or under 'model'/'module'), a transformers folder "
                   "(config.json + model.safetensors or pytorch_model.bin), or hf://owner/repo[@revision].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="config.json of a transformers weight file given alone (model.safetensors, .bin).")
@click.option("--family", type=click.Choice(list(FAMILIES)), default=None,
              help="Checkpoint family: official (VideoMAE .pth), hf (transformers), v2 (VideoMAE V2 .pth). For a "
                   "file, default: from the file, and V2 where the variant, dataset or shapes are V2's only; for "
                   "zoo entries (fetching, --all) default official; --list shows every family unless given.")
@click.option("--remap-head", type=click.Choice(["k400", "k600", "k700"]), default=None,
              help="VideoMAE V2: read a K710 head as a Kinetics-400/600/700 head (V2's label maps, head[index]).")
@click.option("--reference", type=click.Choice(["auto", "transformers", "pt_reference"]), default="auto",
              show_default=True, help="Transformers input: prove parity against transformers' own VideoMAE "
                                      "or pt_reference at the file's numerics (auto: transformers when installed).")
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
@click.option("--frames", "num_frames", type=int, default=None,
              help="Export for clips of this many frames (a multiple of the tubelet, 2); default: the checkpoint's 16.")
@click.option("--image-size", type=int, default=None,
              help="Export for frames of this size (a multiple of the patch, 16); default: the checkpoint's 224.")
@click.option("--tflite", is_flag=True,
              help="Also write <name>.tflite (LiteRT, batch 1, builtin ops) and gate it against PyTorch.")
@click.option("--epochs", type=int, default=None,
              help="Pick a non-default official entry (e.g. 800 for the 800-epoch ViT-B) when fetching.")
@click.option("--list", "list_", is_flag=True, help="Show the model zoo (checkpoints.yaml) and exit.")
@click.option("--all", "all_", is_flag=True,
              help="Convert every release entry of the zoo (narrowed by an explicit --variant/--dataset/--stage).")
@click.option("--include-extra", is_flag=True, help="With --all: also the non-release entries (800 epochs, ViT-H PT).")
@click.option("--shard", default=None, metavar="I/N", help="With --all: only the I-th of N deterministic parts.")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="With --all: conversions run in parallel, as far as memory allows.")
@click.option("--name", default=None, hidden=True, help="Artifact base name (batch use).")
@click.option("--synthetic-dir", default=None, hidden=True, help="Where --synthetic writes its .pth.")
@click.option("--registry-entry", default=None, hidden=True, help="Convert this checkpoints.yaml entry.")
@click.option("--quiet", is_flag=True, help="No progress lines; only the summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx, variant, dataset, stage, checkpoint, config_file, family, remap_head, reference, synthetic, seed, output_dir,
         atol, rtol, batch, num_classes, encoder_only, pooled, float64, xla, num_frames, image_size, tflite, epochs, list_,
         all_, include_extra, shard, jobs, name,
         synthetic_dir, registry_entry, quiet, debug):
    """Convert an official VideoMAE checkpoint to Keras/TensorFlow and prove parity.

    \b
    Examples:
      vmae-convert --variant B --dataset ssv2 --checkpoint videomae_b_ssv2_ft.pth --output-dir out/
      vmae-convert --variant S --dataset k400 --synthetic --output-dir out/
      vmae-convert --variant G --dataset ssv2 --checkpoint vit_g_hybrid_pt_1200e_ssv2_ft.pth   # VideoMAE V2
      vmae-convert --variant S --dataset k710 --checkpoint vit_s_k710_dl_from_giant.pth --remap-head k400

      vmae-convert --variant B --dataset ssv2          # fetch the official file, verify, convert
      vmae-convert --list
      vmae-convert --all --synthetic --shard 2/4 --output-dir release/

    Writes <name>.weights.h5, <name>.keras, <name>/ (SavedModel, endpoint `serve`), <name>.zip,
    with --tflite <name>.tflite, and <name>.parity.json, where <name> is e.g.
    TFVideoMAE_B_SSv2_16x224_FT (..._8x160_FT with --frames 8 --image-size 160). Exits 3 when a
    parity check fails (the report is still written, no artifact is published).
    """
    def explicit(param: str) -> bool:
        return ctx.get_parameter_source(param) != click.core.ParameterSource.DEFAULT

    values = dict(ctx.params)
    _refuse_what_does_not_apply({p for p in values if explicit(p)}, values)
    progress = _progress(quiet)

    def run() -> int:
        from .registry import entry_named, find_entry, format_table, load_registry

        if list_:
            from .registry import filter_entries

            click.echo(format_table(filter_entries(load_registry(), family=family)))
            return 0
        if all_:
            return _run_all(load_registry())
        entry = None
        hub_name = None
        # a file that states its architecture (config.json) is checked against what was asked
        expect = {"variant": variant.upper() if explicit("variant") else None,
                  "dataset": dataset.lower() if explicit("dataset") else None,
                  "stage": stage if explicit("stage") else None}
        if not checkpoint and not synthetic:
            from .download import fetch_checkpoint

            registry = load_registry()
            entry = (entry_named(registry, registry_entry) if registry_entry
                     else find_entry(registry, variant, dataset, stage, epochs, family or _zoo_family(variant, dataset,
                                                                                                     stage)))
            progress(f"checkpoint: {entry.name} ({entry.source}); cache {entry.sha256 and 'verified' or 'unverified'}")
            if entry.source.type == "hf":
                path = str(hub.fetch_entry(entry))
                hub_name = entry.artifact  # the cache folder is named by commit
                # The entry's facts are checked against the repo's config.json; under the test
                # hook the fake repo's architecture is a tiny one, so its width is not the variant's.
                expect = {"variant": None if os.environ.get(TEST_ARCH_ENV) else entry.variant,
                          "dataset": entry.dataset, "stage": entry.stage}
            else:
                path = fetch_checkpoint(entry, progress=not quiet)
        else:
            path = checkpoint
        if checkpoint and hub.is_hub(checkpoint):
            progress(f"checkpoint: {checkpoint} (huggingface_hub cache)")
            path = str(hub.fetch(checkpoint))
            hub_name = hub.artifact_name(checkpoint)  # the cache folder is named by commit
        from .pipeline import convert, failed_report_path

        chosen = ((entry.variant if entry else variant).upper(), (entry.dataset if entry else dataset).lower(),
                  entry.stage if entry else stage)
        file_family = family or (entry.family if entry else None)
        # a transformers folder states its own architecture: the test hook resizes official ones only
        config = (None if entry is not None and entry.source.type == "hf"
                  else test_config(*chosen, num_classes, file_family))
        if config is not None:
            progress(f"test configuration from ${TEST_ARCH_ENV}: {config}")
        report = convert(
            progress=progress, variant=chosen[0], dataset=chosen[1], stage=chosen[2], config=config,
            checkpoint=path, synthetic=synthetic, seed=seed, output_dir=output_dir, atol=atol, rtol=rtol,
            batch=batch, num_classes=num_classes, encoder_only=encoder_only, pooled=pooled, float64=float64,
            xla=xla, num_frames=num_frames, image_size=image_size, tflite=tflite,
            name=name or hub_name or (entry.artifact if entry and not encoder_only and not (num_frames or image_size)
                                      else None) or (config and _test_name(config, *chosen, encoder_only, pooled, file_family,
                                                                                remap_head)),
            synthetic_dir=synthetic_dir, config_file=config_file, reference=reference, expect=expect, family=file_family,
            remap_head=remap_head,
        )
        click.echo(summary(report))
        if not report["passed"]:
            where = failed_report_path(Path(output_dir), report["artifact"])
            click.echo(f"error: parity failed; see {where}", err=True)
            return 3
        if entry is not None and entry.sha256 is None:
            from .registry import record_sha256

            record_sha256(None, entry.name, report["checkpoint"]["sha256"])
            click.echo(f"  recorded sha256 of {entry.name} in checkpoints.yaml (first verified parity run)")
        return 0

    def _run_all(registry) -> int:
        from .batch import run_batch
        from .registry import filter_entries, shard as take_shard

        entries = filter_entries(registry, variant=variant if explicit("variant") else None,
                                 dataset=dataset if explicit("dataset") else None,
                                 stage=stage if explicit("stage") else None, release_only=not include_extra,
                                 family=family or DEFAULT_FAMILY)  # V2 and hub entries: --family v2 / hf
        if shard:
            entries = take_shard(entries, shard)
        if not entries:
            raise VMAEError("no zoo entry matches the filters")
        from .export import check_writable

        check_writable(output_dir)  # an unusable folder is one line now, not a failure per entry later
        progress(f"{len(entries)} entries: {', '.join(e.artifact for e in entries)}")
        result = run_batch(entries, output_dir, synthetic=synthetic, jobs=jobs, progress=progress, seed=seed,
                           atol=atol, rtol=rtol, batch=batch, float64=float64, xla=xla)
        click.echo(f"converted {len(result['converted'])}, skipped (already done) {len(result['skipped'])}, "
                   f"failed {len(result['failed'])} in {result['wall_seconds']:.0f}s; manifest: "
                   f"{output_dir}/manifest.json")
        if result["failed"]:
            click.echo(f"error: {len(result['failed'])} conversions failed: {', '.join(result['failed'])} "
                       f"(logs in {output_dir}/logs/)", err=True)
            return 3
        return 0

    guarded(run, debug)


if __name__ == "__main__":
    main()
