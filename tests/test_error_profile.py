"""The per-block error profile (float32 and float64) in the report, and its plot in the
Markdown parity report."""
from __future__ import annotations

import json
import math
import re

import pytest
from conftest import TINY_FT, swap_qv_biases

from converter.pipeline import convert
from converter.report import plot_error_profile, plotted_profile, write_reports

STAGES = ["embedding", "blocks.0", "blocks.1", "output"]
PNG = b"\x89PNG\r\n\x1a\n"


def _convert(out, **kw):
    return convert(config=TINY_FT, synthetic=True, output_dir=out, name="tiny", xla=False, **kw)


def test_profile_in_report_has_both_precisions_per_stage(tmp_path):
    report = _convert(tmp_path)
    profile = json.loads((tmp_path / "tiny.parity.json").read_text())["error_profile"]
    assert profile == json.loads(json.dumps(report["error_profile"]))
    assert profile["stages"] == STAGES
    # float32 rounding: small, and not zero everywhere (a profile of one framework against itself
    # would be); a stage may agree exactly (the patch embedding does on AMD EPYC with AVX-512).
    assert all(0 <= v < 1e-4 for v in profile["float32"]) and max(profile["float32"]) > 0
    assert all(v < 1e-12 for v in profile["float64"])  # an exact mapping
    assert profile["float32"][-1] == pytest.approx(report["checks"]["tf_vs_pt"]["max_abs"], rel=1e-6)

    summary = write_reports(tmp_path, tmp_path / "report")
    markdown = (tmp_path / "report" / "parity-report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["parity-plots/tiny.error-profile.png"]
    assert (tmp_path / "report" / links[0]).read_bytes().startswith(PNG)
    assert summary["rows"][0]["plot"] == links[0]


def test_profile_shows_where_a_mapping_error_starts(tmp_path, monkeypatch):
    """q/v biases swapped in block 1: float64 agrees to rounding before it and is off by O(1)
    from it on; float32 alone could not tell a 1e-3 drift from a bug."""
    swap_qv_biases(monkeypatch, block=1)
    profile = _convert(tmp_path)["error_profile"]
    f64 = dict(zip(profile["stages"], profile["float64"]))
    assert f64["embedding"] < 1e-12 and f64["blocks.0"] < 1e-12
    assert f64["blocks.1"] > 1e-3 and f64["output"] > 1e-3


def test_no_profile_without_float64(tmp_path):
    report = _convert(tmp_path, float64=False)
    assert report["error_profile"] is None
    write_reports(tmp_path)
    assert "![" not in (tmp_path / "parity-report.md").read_text()
    assert not (tmp_path / "parity-plots").exists()


def test_plot_takes_exact_zeros_and_missing_stages(tmp_path):
    """An exact 0 is drawn a decade below the smallest non-zero difference: at a fixed tiny value
    (1e-300) the log axis would span hundreds of decades and the drift would be a flat line."""
    profile = {"stages": ["embedding", "blocks.0", "output"], "float32": [1e-6, None, 2e-6],
               "float64": [0.0, 1.5e-15, 0.0]}
    floor, lines = plotted_profile(profile)
    assert floor == pytest.approx(1e-16)
    assert lines["float64"] == [floor, 1.5e-15, floor]
    assert lines["float32"][0] == 1e-6 and math.isnan(lines["float32"][1])
    assert plotted_profile({"stages": ["output"], "float32": [0.0], "float64": [0.0]})[0] == 1e-16
    plot_error_profile(profile, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)
