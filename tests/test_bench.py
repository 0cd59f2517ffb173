"""scripts/bench.py: the figures it derives (FLOP counts, targets) and its report, on fake runs.
The timings themselves are the benchmark's business, never a test's."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO
from converter import frameworks
from converter.variants import arch_config

spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("variant", ["S", "B", "H"])
def test_dense_flops_match_the_reference_modules(variant):
    """Counted independently: every Linear and the patch Conv3d of the official model (meta device)."""
    torch = frameworks.load_torch()
    from pt_reference import build_reference

    cfg = arch_config(variant)
    with torch.device("meta"):
        model = build_reference(cfg)
    flops = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            rows = 1 if name == "head" else cfg.num_patches  # the head sees the pooled token
            flops += 2 * rows * module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv3d):
            flops += 2 * cfg.num_patches * module.weight[0].numel() * module.out_channels
    assert bench.dense_flops(variant) == flops


def test_attention_flops_grow_with_tokens_squared():
    b = arch_config("B")
    assert bench.attention_flops("B") == 2 * 2 * b.depth * b.num_heads * b.num_patches**2 * (b.embed_dim // b.num_heads)


def _fake_result(within: bool) -> dict:
    return {
        "created": "now", "args": {"runs": 3, "warmup": 1},
        "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 23.5, "load_average_start": [0.1]},
        "versions": {"torch": "t", "tensorflow": "tf", "keras": "k"},
        "latency": [{
            "variant": "B", "median_s": dict.fromkeys(bench.TF_PATHS + bench.PT_PATHS, 2.0) | {"tf.function": 1.5},
            "best_tf": "tf.function", "best_pt": "pytorch eager", "ratio_best_tf_to_best_pt": 0.75,
            "dense_gflop": 300.0, "attention_gflop": 90.0,
            "profile": {"tf.function": {"wall_s": 1.5, "ops_s": {"MatMul": 1.0}, "other_ops_s": 0.2,
                                        "dense_matmul_gflops": 200.0}},
        }],
        "conversion": [{
            "variant": "B", "param_bytes": 0.35e9, "wall_s": 60.0, "peak_rss_gib": 2.2 if within else 3.0,
            "target_rss_gib": 2.47, "within_target": within, "passed": True, "exit_code": 0,
            "phases_s": {"keras forward": 4.5}, "phase_peak_rss_gib": {"keras forward": 2.2},
        }],
    }


def test_markdown_report_shows_ratio_floor_and_targets():
    md = bench.markdown(_fake_result(within=True))
    assert "**0.75x**" in md
    assert "take 1.50 s of it at best" in md  # 300 GFLOP at 200 GFLOPS
    assert "| ViT-B | 0.35 GB | 60 s | 2.20 GiB | 2.47 GiB | yes | pass |" in md
    assert "| keras forward | 4.5 (2.2) |" in md
    assert "| **no** |" in bench.markdown(_fake_result(within=False))


@pytest.mark.parametrize("argv, says", [(["--runs", "0"], "--runs must be at least 1, got 0"),
                                        (["--runs", "-2"], "--runs must be at least 1, got -2"),
                                        (["--warmup", "-1"], "--warmup and --pause must be >= 0")])
def test_bench_refuses_what_gives_no_figure_before_any_work(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main([*argv, "--out", str(tmp_path / "b")])
    assert info.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# Parameter counts of the released VideoMAE V2 files (shared/videomae-v2-and-hf-notes.md, section 4,
# checked there against the file sizes): distilled ViT-S with its 710-class head, ViT-g pre-trained.
@pytest.mark.parametrize("spec, label, args, params", [
    ("v2:S", "V2 ViT-S", ["--family", "v2", "--dataset", "k710", "--stage", "ft"], 22_153_286),
    ("G:pt", "V2 ViT-G PT", ["--family", "v2", "--dataset", "hybrid", "--stage", "pt"], 1_026_306_560),
    ("B", "ViT-B", ["--stage", "ft"], None),
])
def test_conversion_specs_name_the_released_models(spec, label, args, params):
    got_label, got_args, cfg = bench.conversion_spec(spec)
    assert got_label == label and set(args) <= set(got_args)
    assert params is None or cfg.num_params == params
