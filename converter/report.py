"""Parity reports over a folder of conversions: parity-report.json for machines,
parity-report.md for people (and for a CI job summary)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .batch import load_manifest

FAILED_SUFFIX = ".failed.parity.json"
CHECKS = ("tf_vs_pt", "float64", "weights_h5", "keras", "saved_model", "saved_model_xla", "saved_model_uint8", "tflite")
PLOTS = "parity-plots"  # beside parity-report.md: one error-profile PNG per artifact


def collect(folder) -> list[dict]:
    """One row per *.parity.json under `folder`, with sizes/checksums from manifest.json if any."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("*.parity.json")):
        if path.name.endswith(FAILED_SUFFIX):
            continue  # a failed re-run beside published artifacts: the row is theirs, in <name>.parity.json
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            rows.append({"artifact": path.name.removesuffix(".parity.json"), "passed": False,
                         "error": f"unreadable report: {err}"})
            continue
        if not isinstance(report, dict):
            rows.append({"artifact": path.name.removesuffix(".parity.json"), "passed": False,
                         "error": f"not a parity report: the file holds a JSON {type(report).__name__}"})
            continue
        manifest = load_manifest(path.parent)["entries"].get(report.get("artifact"), {})
        checks = report.get("checks", {})
        rows.append({
            "artifact": report.get("artifact"),
            "passed": bool(report.get("passed")),
            "stage": report.get("stage"),
            "tolerance": report.get("tolerance"),
            "checks": {name: {k: checks[name].get(k) for k in ("passed", "max_abs", "max_rel", "skipped")}
                       for name in CHECKS if name in checks},
            "output_std": report.get("output_std"),
            "seconds": report.get("wall_seconds"),
            "peak_rss_bytes": manifest.get("peak_rss_bytes"),
            "synthetic": report.get("checkpoint", {}).get("synthetic"),
            "source_sha256": report.get("checkpoint", {}).get("sha256"),
            "artifacts": report.get("artifacts", {}),
            "error_profile": report.get("error_profile"),
        })
    return rows


def summarise(rows: list[dict]) -> dict:
    return {"rows": rows, "total": len(rows), "passed": sum(r["passed"] for r in rows),
            "failed": [r["artifact"] for r in rows if not r["passed"]]}


def _e(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def to_markdown(summary: dict) -> str:
    rows = summary["rows"]
    lines = [f"## VideoMAE parity report: {summary['passed']}/{summary['total']} passed", "",
             "Gate: every element within atol + rtol * |pytorch| (tolerances per row); float64 is informative.", "",
             "| artifact | result | TF vs PT max abs / rel | float64 max abs | weights.h5 | .keras | SavedModel | SavedModel XLA | SavedModel uint8 | LiteRT | output std | time | peak RSS | artifacts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    plots = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['artifact']} | FAIL | {r['error']} | | | | | | | | | | |")
            continue
        c = r["checks"]

        def cell(name):
            if name not in c:
                return "-"
            if c[name].get("skipped"):
                return "skipped"
            return f"{'ok' if c[name]['passed'] else 'FAIL'} {_e(c[name]['max_abs'])}"

        tvp = c.get("tf_vs_pt", {})
        sizes = ", ".join(f"{name.rsplit('.', 1)[-1] if '.' in name else 'savedmodel'} {a['size'] / 2**20:.0f} MiB"
                          + (f" `{a['sha256'][:12]}`" if a.get("sha256") else "")
                          for name, a in r["artifacts"].items())
        rss = f"{r['peak_rss_bytes'] / 2**30:.1f} GiB" if r.get("peak_rss_bytes") else "-"
        lines.append(
            f"| {r['artifact']} | {'PASS' if r['passed'] else 'FAIL'} | {_e(tvp.get('max_abs'))} / {_e(tvp.get('max_rel'))}"
            f" | {_e(c.get('float64', {}).get('max_abs'))} | {cell('weights_h5')} | {cell('keras')} | {cell('saved_model')}"
            f" | {cell('saved_model_xla')} | {cell('saved_model_uint8')} | {cell('tflite')} | {r['output_std']:.3f} | {r['seconds']:.0f}s | {rss} | {sizes or '-'} |")
        if r.get("plot"):
            plots += [f"### {r['artifact']}: error after each block", "", f"![error profile of {r['artifact']}]({r['plot']})", ""]
    if plots:
        lines += ["", "Max abs difference of TensorFlow against PyTorch after each block, float32 and float64 (log scale):",
                  "float32 rounding grows slowly with depth; a mapping error shows as a jump that float64 keeps.", ""]
        lines += plots
    return "\n".join(lines) + "\n"


def plotted_profile(profile: dict) -> tuple[float, dict[str, list[float]]]:
    """(floor, values per precision) as drawn: a difference of exactly 0 has no place on a log
    scale, so it is drawn at the floor, a decade below the smallest difference that is not 0.
    A fixed tiny floor would stretch the axis over hundreds of decades and flatten every other
    point into one line (float32 patch embeddings agree exactly on some CPUs); a missing stage is NaN."""
    positive = [v for dtype in ("float32", "float64") for v in profile.get(dtype) or [] if v]
    floor = 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1e-16
    return floor, {dtype: [float("nan") if v is None else (v or floor) for v in profile[dtype]]
                   for dtype in ("float32", "float64") if profile.get(dtype)}


def plot_error_profile(profile: dict, path, title: str = "") -> None:
    """A small PNG: one line per precision over the stages, log y-scale."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI machine
    import matplotlib.pyplot as plt

    stages = profile["stages"]
    floor, lines = plotted_profile(profile)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    try:
        for dtype, values in lines.items():
            ax.plot(range(len(values)), values, {"float32": "o-", "float64": "s-"}[dtype], markersize=3, label=dtype)
        if any(v == 0 for dtype in lines for v in profile[dtype]):
            ax.axhline(floor, color="grey", linestyle=":", linewidth=0.8, label="exactly 0")
        ax.set_yscale("log")
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([s.replace("blocks.", "b").replace("encoder.", "e.").replace("decoder.", "d.")
                            for s in stages], rotation=90, fontsize=6)
        ax.set_ylabel("max abs diff")
        ax.set_title(title, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_plots(rows: list[dict], out: Path) -> None:
    """One error-profile PNG per row that has a profile; sets row["plot"] (relative to `out`)."""
    for r in rows:
        if r.get("error_profile") and r.get("artifact"):
            (out / PLOTS).mkdir(parents=True, exist_ok=True)
            relative = f"{PLOTS}/{r['artifact']}.error-profile.png"
            plot_error_profile(r["error_profile"], out / relative, r["artifact"])
            r["plot"] = relative


def write_reports(folder, out_dir=None) -> dict:
    from .export import write_atomic

    summary = summarise(collect(folder))
    out = Path(out_dir or folder)
    out.mkdir(parents=True, exist_ok=True)
    write_plots(summary["rows"], out)
    write_atomic(out / "parity-report.json", json.dumps(summary, indent=2).encode())
    write_atomic(out / "parity-report.md", to_markdown(summary).encode())
    return summary
