"""The CLI's contract around its options: what does not apply is refused at once (one `error:` line,
exit 2, nothing written), exit 3 on a failed gate, one line for an internal error, and names
that never let one export pass for another. Conversions here run the real CLI on a tiny model
($VMAE_TEST_ARCH_OVERRIDES)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import NATIVE_NOISE, NOISY_TENSORFLOW, REPO, TINY_PT

from converter.cli import TEST_ARCH_ENV, main
from converter.pipeline import ConvertOptions, default_name, name_for_classes
from converter.variants import arch_config

TINY_OVERRIDES = json.dumps({k: getattr(TINY_PT, k) for k in (
    "embed_dim", "depth", "num_heads", "num_frames", "image_size",
    "decoder_embed_dim", "decoder_depth", "decoder_num_heads")})


def cli(*args, tiny=False, env=None, timeout=900):
    """The CLI in a fresh interpreter, with the environment a user has (no TF_CPP_MIN_LOG_LEVEL:
    the one-line promise must hold after tensorflow is imported too)."""
    full = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if tiny:
        full[TEST_ARCH_ENV] = TINY_OVERRIDES
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


REFUSED = {
    "pooled without encoder-only": (["--pooled", "--synthetic"], "--pooled applies to --encoder-only exports only"),
    "checkpoint and synthetic": (["--checkpoint", "{tmp}/x.pth", "--synthetic"],
                                 "--checkpoint and --synthetic exclude each other"),
    "negative atol": (["--synthetic", "--atol", "-1"], "--atol must be a finite number >= 0, got -1"),
    "nan rtol": (["--synthetic", "--rtol", "nan"], "--rtol must be a finite number >= 0, got nan"),
    "inf atol": (["--synthetic", "--atol", "inf"], "--atol must be a finite number >= 0, got inf"),
    "negative seed": (["--synthetic", "--seed", "-1"], "--seed must be at least 0, got -1"),
    "num-classes with pt": (["--synthetic", "--stage", "pt", "--num-classes", "10"],
                            "--num-classes takes a number >= 1, for a fine-tuned head"),
    "zero batch": (["--synthetic", "--batch", "0"], "--batch must be at least 1, got 0"),
    "zero jobs": (["--all", "--synthetic", "--jobs", "0"], "--jobs must be at least 1, got 0"),
    "shard without all": (["--synthetic", "--shard", "1/2"], "--shard only with --all"),
    "jobs without all": (["--synthetic", "--jobs", "2"], "--jobs only with --all"),
    "include-extra without all": (["--synthetic", "--include-extra"], "--include-extra only with --all"),
    "epochs with synthetic": (["--synthetic", "--epochs", "800"], "--epochs picks an official file to fetch"),
    "list with variant": (["--list", "--variant", "B"], "--list takes no other option (got --output-dir, --variant)"),
    "all with checkpoint": (["--all", "--checkpoint", "{tmp}/x.pth"], "--all converts the zoo entries as they are"),
    "hf family with synthetic": (["--family", "hf", "--synthetic"],
                                 "--synthetic writes .pth checkpoints (official or v2 keys), not transformers folders"),
    "family with registry entry": (["--family", "v2", "--registry-entry", "v2-g-k710-1200-ft"],
                                   "--registry-entry names one zoo entry, family included: drop --family"),
    "remap-head with all": (["--all", "--remap-head", "k400"], "--all converts the zoo entries as they are"),
    "unknown family": (["--list", "--family", "v9"], "Invalid value for '--family'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_does_not_apply_is_refused_before_any_work(case, tmp_path):
    args, says = REFUSED[case]
    result = cli(*[a.format(tmp=tmp_path) for a in args], "--output-dir", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert says in only_line(result.stderr)
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_pipeline_refuses_the_same_combinations(tmp_path):
    from converter.errors import VMAEError
    from converter.pipeline import convert

    for kwargs, says in ((dict(pooled=True), "--pooled applies to --encoder-only"),
                         (dict(checkpoint="x.pth"), "exclude each other"),
                         (dict(atol=float("nan")), "--atol must be a finite number"),
                         (dict(rtol=-1.0), "--rtol must be a finite number"),
                         (dict(seed=-1), "--seed must be an integer >= 0"),
                         (dict(stage="pt", num_classes=10), "--num-classes takes a number >= 1")):
        with pytest.raises(VMAEError, match=says):
            convert(synthetic=True, output_dir=tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def test_help_explains_every_option():
    result = cli("--help")
    assert result.returncode == 0
    # Hidden: only the batch's own plumbing; any other option hidden would be one a user cannot find.
    assert {p.name for p in main.params if getattr(p, "hidden", False)} == {"name", "synthetic_dir", "registry_entry"}
    visible = [p for p in main.params if not getattr(p, "hidden", False)]
    assert len(visible) >= 30
    for param in visible:
        for opt in param.opts + param.secondary_opts:
            assert opt in result.stdout, opt
        assert param.help and param.help.split()[0] in result.stdout


def test_encoder_exports_pooled_and_not_get_their_own_names():
    kw = dict(variant="B", dataset="k400", stage="pt", encoder_only=True)
    plain, pooled = default_name(ConvertOptions(**kw)), default_name(ConvertOptions(**kw, pooled=True))
    assert plain == "TFVideoMAE_B_K400_16x224_PT_encoder"
    assert pooled == "TFVideoMAE_B_K400_16x224_PT_encoder_pooled"


def test_a_head_of_other_classes_never_gets_the_release_name():
    opts = ConvertOptions(variant="S", dataset="k400")
    name = default_name(opts)
    assert name_for_classes(name, arch_config("S", "k400"), opts) == "TFVideoMAE_S_K400_16x224_FT"
    assert name_for_classes(name, arch_config("S", "k400", num_classes=10), opts) == "TFVideoMAE_S_K400_16x224_FT_10cls"
    explicit = ConvertOptions(variant="S", dataset="k400", name="mine")
    assert name_for_classes("mine", arch_config("S", "k400", num_classes=10), explicit) == "mine"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Tiny conversions through the real CLI, started together (each pays the framework imports)."""
    root = tmp_path_factory.mktemp("cli_runs")
    cases = {
        "classes": ["--synthetic", "--num-classes", "10"],
        "encoder": ["--synthetic", "--stage", "pt", "--encoder-only", "--no-xla"],
        "pooled": ["--synthetic", "--stage", "pt", "--encoder-only", "--pooled", "--no-xla"],
        "too_tight": ["--synthetic", "--atol", "0", "--rtol", "0", "--no-xla"],
    }
    full = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full[TEST_ARCH_ENV] = TINY_OVERRIDES
    out = root / "out"  # encoder and pooled share a folder: neither may overwrite the other
    procs = {case: subprocess.Popen([sys.executable, "-m", "converter.cli", "--quiet", "--output-dir",
                                     str(out if case in ("encoder", "pooled") else root / case), *args],
                                    cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case, args in cases.items()}
    results = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return root, results


def test_num_classes_with_synthetic_gets_a_name_of_its_own(tiny_runs):
    root, results = tiny_runs
    assert results["classes"].returncode == 0, results["classes"].stderr[-3000:]
    report = json.loads((root / "classes" / "TFVideoMAE_S_K400_16x224_FT_10cls.parity.json").read_text())
    assert report["passed"] and report["output_shape"] == [1, 10]
    assert not (root / "classes" / "TFVideoMAE_S_K400_16x224_FT.parity.json").exists()


def test_pooled_and_token_encoder_exports_live_side_by_side(tiny_runs):
    root, results = tiny_runs
    for case in ("encoder", "pooled"):
        assert results[case].returncode == 0, results[case].stderr[-3000:]
    base = root / "out" / "TFVideoMAE_S_K400_16x224_PT_encoder"
    tokens = json.loads(base.with_name(base.name + ".parity.json").read_text())
    pooled = json.loads(base.with_name(base.name + "_pooled.parity.json").read_text())
    assert tokens["pooled"] is False and tokens["output_shape"] == [1, TINY_PT.num_patches, TINY_PT.embed_dim]
    assert pooled["pooled"] is True and pooled["output_shape"] == [1, TINY_PT.embed_dim]
    assert base.with_name(base.name + ".weights.h5").exists() and base.with_name(base.name + "_pooled.zip").exists()


def test_too_tight_tolerance_exits_3_and_says_float32_rounding(tiny_runs):
    root, results = tiny_runs
    result = results["too_tight"]
    assert result.returncode == 3, result.stderr[-3000:]
    report_path = root / "too_tight" / "TFVideoMAE_S_K400_16x224_FT.parity.json"
    assert only_line(result.stderr) == f"error: parity failed; see {report_path}"
    report = json.loads(report_path.read_text())
    assert report["checks"]["float64"]["passed"]
    assert report["checks"]["tf_vs_pt"]["detail"].startswith("float32 rounding, not a mapping error")
    assert "in the head" not in result.stdout
    assert not any(p.suffix == ".zip" or p.is_dir() for p in (root / "too_tight").iterdir())


INTERNAL = """
from converter.cli import guarded

def run():
    # tensorflow loads inside the run, as in every command (guarded has moved fd 2 aside by then),
    # and is fully started before the failure
    from converter import frameworks
    frameworks.load()
    import tensorflow as tf
    tf.constant([1.0]) + 1
    raise RuntimeError("a bug of ours\\nsecond line")

guarded(run)
"""


def test_internal_error_is_one_line_exit_1_even_after_tensorflow_started():
    full = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # tensorflow's start-up lines forced on, so the test holds on CPUs where it prints none
    result = subprocess.run([sys.executable, "-c", NOISY_TENSORFLOW + INTERNAL], cwd=REPO, env=full,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert NATIVE_NOISE not in result.stderr
    assert only_line(result.stderr) == ("error: internal error RuntimeError: a bug of ours "
                                        "(rerun with --debug for the traceback)")
