#!/usr/bin/env python
"""parity-report.json + parity-report.md over a folder of conversions.

    python scripts/parity_report.py release/ [--out DIR] [--summary $GITHUB_STEP_SUMMARY]

Exits 1 when any row failed (or when there is no row at all), so CI can gate on it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.report import to_markdown, write_reports  # noqa: E402


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default=None, help="Where to write the reports (default: FOLDER).")
@click.option("--summary", "summary_file", default=None, help="Also append the Markdown to this file.")
def main(folder, out_dir, summary_file):
    summary = write_reports(folder, out_dir)
    markdown = to_markdown(summary)
    click.echo(markdown)
    if summary_file:
        with open(summary_file, "a") as f:
            f.write(markdown)
    if summary["total"] == 0:
        click.echo(f"error: no *.parity.json under {folder}", err=True)
        sys.exit(1)
    if summary["failed"]:
        why = {r["artifact"]: f" ({r['error']})" for r in summary["rows"] if "error" in r}
        named = ", ".join(f"{a}{why.get(a, '')}" for a in summary["failed"])
        click.echo(f"error: {len(summary['failed'])} failed: {named}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
