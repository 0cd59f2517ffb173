"""Benchmark: inference latency of the converted model against PyTorch, and the cost of a conversion.

Everything is measured side by side in one run, because absolute times drift between runs
(and on a shared machine, within one): compare the ratios, not the seconds.

1. Latency per clip [1, 16, 224, 224, 3] (synthetic weights, all paths hold the same ones):
   Keras eager, tf.function, tf.function(jit_compile=True), the reloaded SavedModel, PyTorch
   eager and PyTorch with scaled_dot_product_attention. Each framework runs in a process of
   its own (in one process, either slows the other down); the paths take turns, one call at a
   time, round after round, so a slow spell hits all of them alike; each figure is the median
   of its rounds.
2. Conversion cost: `vmae-convert --synthetic` per variant in a fresh process, its wall time
   split into the pipeline's phases (from the parity report), and its peak resident memory
   (the kernel's ru_maxrss of that one child), plus the peak seen within each phase.

Writes bench.json and bench.md into --out.

    python scripts/bench.py --variants S,B --convert-variants S,B,L,H --runs 5 --out bench/
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torch.profiler (--profile) would otherwise log an error per process for the GPU it does not find
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

from converter import frameworks  # noqa: E402  (torch before tensorflow, see frameworks.py)
from converter.batch import FRAMEWORK_BASELINE, GIB  # noqa: E402  (the issue's allowance for the frameworks)
from converter.variants import arch_config  # noqa: E402

TF_PATHS = ("keras eager", "tf.function", "tf.function xla", "savedmodel")
PT_PATHS = ("pytorch eager", "pytorch sdpa")


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    import psutil

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------- latency

def _paths(side: str, variant: str) -> dict:
    """{path name: callable returning the logits} for one framework, on the same synthetic
    weights and clip in both (both are drawn from seed 0)."""
    from converter.parity import channels_last, make_video
    from converter.synthetic import synthetic_state_dict

    cfg = arch_config(variant)
    state = synthetic_state_dict(cfg, seed=0)
    video = make_video(cfg, 1, seed=0)
    if side == "pt":
        torch = frameworks.load_torch()
        from pt_reference import load_reference

        x = torch.from_numpy(video)

        def run(model):
            with torch.inference_mode():
                return model(x).numpy()
        # Both hold the same (read-only) weight tensors.
        eager, sdpa = load_reference(cfg, state, use_sdpa=False), load_reference(cfg, state, use_sdpa=True)
        return {"pytorch eager": lambda: run(eager), "pytorch sdpa": lambda: run(sdpa),
                "_threads": torch.get_num_threads()}
    torch, tf, keras = frameworks.load()
    from converter.engine import load_into
    from converter.videomae_rules import rules_for
    from tf_models import build_model, export_saved_model

    model = build_model(cfg)
    load_into(model, {k: v.numpy() for k, v in state.items()}, rules_for("ft"))
    x = tf.constant(channels_last(video))
    graph = tf.function(lambda v: model(v, training=False), autograph=False)
    xla = tf.function(lambda v: model(v, training=False), jit_compile=True, autograph=False)
    saved_dir = tempfile.mkdtemp(prefix="bench-savedmodel-")
    try:
        export_saved_model(model, saved_dir)
        saved = tf.saved_model.load(saved_dir)
    finally:
        shutil.rmtree(saved_dir, ignore_errors=True)  # loaded (or failed): the files are not needed
    return {"keras eager": lambda: model(x, training=False).numpy(), "tf.function": lambda: graph(x).numpy(),
            "tf.function xla": lambda: xla(x).numpy(), "savedmodel": lambda: saved.serve(x).numpy(),
            "_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}


def _worker(conn, side: str, variant: str, warmup: int) -> None:
    """One framework in a process of its own, so neither runs beside the other's thread pools
    and caches: builds its paths, answers each path name with the seconds one call took, and
    ("profile", name) with that path's op profile."""
    paths = _paths(side, variant)
    threads = paths.pop("_threads")
    outputs = {name: fn() for name, fn in paths.items()}  # the first call traces and compiles
    for _ in range(warmup - 1):
        for fn in paths.values():
            fn()
    conn.send((outputs, threads))
    while (msg := conn.recv()) is not None:
        if isinstance(msg, tuple):
            conn.send(_profile(side, paths[msg[1]], variant))
            continue
        start = time.perf_counter()
        paths[msg]()
        conn.send(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------- profile

def dense_flops(variant: str) -> int:
    """Multiply-adds x 2 of the classifier's dense layers (patch embedding, qkv, proj, MLP, head):
    the part of a forward that runs as large matrix products in either framework."""
    c = arch_config(variant)
    n, d = c.num_patches, c.embed_dim
    per_block = d * 3 * d + d * d + 2 * d * c.mlp_dim
    return 2 * (n * c.depth * per_block + n * c.patch_pixels * d + d * c.num_classes)


def attention_flops(variant: str) -> int:
    """q @ k^T and weights @ v, all heads and blocks."""
    c = arch_config(variant)
    return 2 * 2 * c.depth * c.num_patches**2 * c.embed_dim


def _matmul_rate(side: str, variant: str) -> float:
    """GFLOPS of this framework's best dense product at the model's MLP shape, float32."""
    c = arch_config(variant)
    m, k, n = c.num_patches, c.embed_dim, c.mlp_dim
    if side == "pt":
        torch = frameworks.load_torch()
        a, b = torch.randn(m, k), torch.randn(k, n)
        run = lambda: a @ b  # noqa: E731
    else:
        _, tf, _ = frameworks.load()
        a, b = tf.random.normal((m, k)), tf.random.normal((k, n))
        fn = tf.function(lambda a, b: tf.matmul(a, b))
        run = lambda: fn(a, b).numpy()  # noqa: E731
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def _profile(side: str, fn, variant: str, top: int = 10) -> dict:
    """One call of `fn` under the framework's own profiler: time per op type, summed over the
    threads that ran ops (so it can exceed the wall time when ops overlap)."""
    if side == "pt":
        torch = frameworks.load_torch()
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - start
        ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    else:
        ops, wall = _tf_op_times(fn)
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])
    return {"wall_s": round(wall, 3), "ops_s": {k: round(v, 4) for k, v in ranked[:top]},
            "other_ops_s": round(sum(v for _, v in ranked[top:]), 4),
            "dense_matmul_gflops": round(_matmul_rate(side, variant), 1)}


def _tf_op_times(fn) -> tuple[dict, float]:
    _, tf, _ = frameworks.load()
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # not in every tensorflow build: no op breakdown, the wall time still counts
        start = time.perf_counter()
        fn()
        return {}, time.perf_counter() - start
    logdir = tempfile.mkdtemp(prefix="bench-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        ops: dict[str, float] = {}
        for path in Path(logdir).rglob("*.xplane.pb"):
            space = xplane_pb2.XSpace()
            space.ParseFromString(path.read_bytes())
            for plane in space.planes:
                for line in plane.lines:
                    if not line.name.startswith("tf_Compute"):  # executor threads: one event per op run
                        continue
                    for event in line.events:
                        name = plane.event_metadata[event.metadata_id].name
                        kind = name.rsplit(":", 1)[-1]
                        if ":" not in name or kind == "Process":  # the executor's wrappers, not ops
                            continue
                        ops[kind] = ops.get(kind, 0.0) + event.duration_ps / 1e12
        return ops, wall
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def latency(variant: str, runs: int, warmup: int, pause: float, profile: bool = False) -> dict:
    """Both frameworks' workers take turns, one call at a time, path order rotating per round."""
    import multiprocessing

    import numpy as np

    ctx = multiprocessing.get_context("spawn")
    conn_of, outputs, threads, procs = {}, {}, {}, []
    for side in ("pt", "tf"):  # started one after the other, so that neither warms up under the other
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, side, variant, warmup), daemon=True)
        proc.start()
        outs, threads[side] = conn.recv()
        outputs.update(outs)
        conn_of.update(dict.fromkeys(outs, conn))
        procs.append((conn, proc))
    names = list(TF_PATHS + PT_PATHS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            time.sleep(pause)  # the previous call's worker threads go idle
            conn_of[name].send(name)
            times[name].append(conn_of[name].recv())
    profiles = {}
    if profile:  # after the timed rounds: a profiler's overhead must not count in them
        for name in ("tf.function", "pytorch sdpa"):
            conn_of[name].send(("profile", name))
            profiles[name] = conn_of[name].recv()
    for conn, proc in procs:
        conn.send(None)
        proc.join()
    median = {n: statistics.median(t) for n, t in times.items()}
    best_tf = min(TF_PATHS, key=median.get)
    best_pt = min(PT_PATHS, key=median.get)
    ref = outputs["pytorch eager"]
    return {
        "variant": variant,
        "median_s": {n: round(v, 4) for n, v in median.items()},
        "min_s": {n: round(min(t), 4) for n, t in times.items()},
        "runs_s": {n: [round(v, 4) for v in t] for n, t in times.items()},
        "max_abs_vs_pytorch": {n: float(np.abs(o.astype(np.float64) - ref).max()) for n, o in outputs.items()},
        "best_tf": best_tf,
        "best_pt": best_pt,
        "ratio_best_tf_to_best_pt": round(median[best_tf] / median[best_pt], 3),
        "ratio_of_minima": round(min(min(times[n]) for n in TF_PATHS) / min(min(times[n]) for n in PT_PATHS), 3),
        "threads": {"torch": threads["pt"], "tf_intra_op": threads["tf"]},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "profile": profiles or None,
        "dense_gflop": round(dense_flops(variant) / 1e9, 1),
        "attention_gflop": round(attention_flops(variant) / 1e9, 1),
    }


# ------------------------------------------------------------------------------------- conversion

_LINE = re.compile(r"^\[\s*[\d.]+s\] (.+?) (\.\.\.|done in [\d.]+s)$")


def conversion_spec(spec: str) -> tuple[str, list[str], object]:
    """'S' (VideoMAE ViT-S, K400 fine-tuned), 'v2:S' / 'G' (VideoMAE V2, the K710 head as released,
    float16), a ':pt' suffix for the pre-trained model (V2: UnlabeledHybrid): the label, the
    vmae-convert arguments and the architecture."""
    parts = [p.strip() for p in spec.split(":")]
    stage = parts.pop().lower() if parts[-1].lower() in ("ft", "pt") else "ft"
    variant = parts.pop().upper()
    generation = parts[0].lower() if parts else ("v2" if variant == "G" else "v1")
    suffix = " PT" if stage == "pt" else ""
    if generation == "v2":
        dataset = "hybrid" if stage == "pt" else "k710"
        return (f"V2 ViT-{variant}{suffix}",
                ["--variant", variant, "--family", "v2", "--dataset", dataset, "--stage", stage],
                arch_config(variant, dataset, stage, "v2"))
    return f"ViT-{variant}{suffix}", ["--variant", variant, "--stage", stage], arch_config(variant, "k400", stage)


def parameter_bytes(variant: str) -> int:
    """float32 bytes of the official model's parameters."""
    return 4 * conversion_spec(variant)[2].num_params


def conversion(variant: str, workdir: Path, extra_args: list[str], rss_limit: float) -> dict:
    """One `vmae-convert --synthetic` in a fresh process: wall time, phases, peak memory. A run
    that goes past `rss_limit` bytes is stopped, so that it cannot take the machine down."""
    import psutil

    label, spec_args, _ = conversion_spec(variant)
    out = workdir / f"convert-{variant.replace(':', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "converter.cli", *spec_args, "--synthetic", "--output-dir", str(out), *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}  # this checkout's converter
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    phase, phase_peak, done, stopped = ["startup"], {"startup": 0}, threading.Event(), []

    def sample():  # the peak within each phase: sampled, so a lower bound of the true peak
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                break
            phase_peak[phase[0]] = max(phase_peak.get(phase[0], 0), rss)
            if rss > rss_limit:
                stopped.append(phase[0])
                proc.kill()
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout = threading.Thread(target=lambda: setattr(proc, "captured", proc.stdout.read()), daemon=True)
    stdout.start()
    log = []
    for line in proc.stderr:
        log.append(line.rstrip())
        m = _LINE.match(line.strip())
        if m:
            phase[0] = m.group(1) if m.group(2) == "..." else "between phases"
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    stdout.join()
    reports = list(out.glob("*.parity.json"))
    report = json.loads(reports[0].read_text()) if reports else {}
    timings = dict(report.get("timings", {}))
    if report:
        timings = {"startup (imports)": round(wall - report["wall_seconds"], 3), **timings,
                   "other (hashing, report)": round(report["wall_seconds"] - sum(timings.values()), 3)}
    params = parameter_bytes(variant)
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    target = 3 * params + FRAMEWORK_BASELINE
    shutil.rmtree(out, ignore_errors=True)
    return {
        "variant": variant,
        "model": label,
        "exit_code": proc.returncode,
        "passed": report.get("passed"),
        "wall_s": round(wall, 2),
        "phases_s": timings,
        "phase_peak_rss_gib": {k: round(v / GIB, 2) for k, v in phase_peak.items() if v},
        "peak_rss_gib": round(peak / GIB, 2),
        "param_bytes": params,
        "target_rss_gib": round(target / GIB, 2),
        "within_target": peak <= target,
        "max_abs": {g: c.get("max_abs") for g, c in report.get("checks", {}).items()},
        "stopped_over_rss_limit_in": stopped[0] if stopped else None,
        "log_tail": log[-5:] if proc.returncode else [],
    }


# ---------------------------------------------------------------------------------------- report

def _outcome(c: dict) -> str:
    if c.get("stopped_over_rss_limit_in"):
        return f"stopped past the RSS limit, in {c['stopped_over_rss_limit_in']}"
    return "pass" if c["passed"] else f"FAIL (exit {c['exit_code']})"


def profile_markdown(r: dict) -> list[str]:
    """Where one call's time goes, per op type, with the dense-matmul floor each framework's own
    product rate implies: what no rewrite of the rest of the model can go below."""
    lines = [f"Profile of one ViT-{r['variant']} call ({r['dense_gflop']:.0f} GFLOP in dense layers, "
             f"{r['attention_gflop']:.0f} GFLOP in attention products), seconds per op type summed over "
             "the threads that ran ops:", ""]
    for name, p in r["profile"].items():
        floor = r["dense_gflop"] / p["dense_matmul_gflops"]
        ops = ", ".join(f"{k} {v:.2f}" for k, v in p["ops_s"].items())
        lines.append(f"- **{name}**: {p['wall_s']:.2f} s for the call; dense products at "
                     f"{p['dense_matmul_gflops']:.0f} GFLOPS take {floor:.2f} s of it at best. "
                     f"By op: {ops}, the rest {p['other_ops_s']:.2f}.")
    return lines + [""]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Benchmark of {result['created']} on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM "
             f"(load average {m['load_average_start'][0]} at start, {m.get('load_average_end', ['?'])[0]} at end); "
             f"torch {result['versions'].get('torch')}, "
             f"tensorflow {result['versions'].get('tensorflow') or result['versions'].get('tensorflow-cpu')}, "
             f"keras {result['versions'].get('keras')}.", ""]
    if result.get("latency"):
        lines += ["Inference latency per clip [1, 16, 224, 224, 3], median seconds "
                  f"({result['args']['runs']} interleaved runs after {result['args']['warmup']} warm-up):", "",
                  "| model | " + " | ".join(TF_PATHS + PT_PATHS) + " | best TF / best PyTorch |",
                  "|---" * (len(TF_PATHS + PT_PATHS) + 2) + "|"]
        for r in result["latency"]:
            cells = [f"**{r['median_s'][n]:.2f}**" if n in (r["best_tf"], r["best_pt"]) else f"{r['median_s'][n]:.2f}"
                     for n in TF_PATHS + PT_PATHS]
            lines.append(f"| ViT-{r['variant']} | " + " | ".join(cells) + f" | **{r['ratio_best_tf_to_best_pt']:.2f}x** |")
        lines.append("")
        for r in result["latency"]:
            if r.get("profile"):
                lines += profile_markdown(r)
    if result.get("conversion"):
        conv = result["conversion"]
        lines += ["Conversion (`vmae-convert --synthetic`, fresh process each): wall time, peak resident memory "
                  "against the target 3 x float32 parameters + 1.5 GiB:", "",
                  "| model | parameters | wall | peak RSS | target | within | parity |", "|---|---|---|---|---|---|---|"]
        for c in conv:
            lines.append(f"| {c.get('model', 'ViT-' + c['variant'])} | {c['param_bytes'] / 1e9:.2f} GB | {c['wall_s']:.0f} s | "
                         f"{c['peak_rss_gib']:.2f} GiB | {c['target_rss_gib']:.2f} GiB | "
                         f"{'yes' if c['within_target'] else '**no**'} | "
                         f"{_outcome(c)} |")
        phases = list(dict.fromkeys(p for c in conv for p in c["phases_s"]))
        lines += ["", "Where the time goes, seconds per phase (peak RSS sampled within the phase, GiB):", "",
                  "| phase | " + " | ".join(c.get("model", f"ViT-{c['variant']}") for c in conv) + " |",
                  "|---" * (len(conv) + 1) + "|"]
        for p in phases:
            cells = []
            for c in conv:
                s, rss = c["phases_s"].get(p), c["phase_peak_rss_gib"].get(p.replace("startup (imports)", "startup"))
                cells.append("-" if s is None else f"{s:.1f}" + (f" ({rss:.1f})" if rss else ""))
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="S,B", help="latency: comma-separated variants ('' for none)")
    ap.add_argument("--convert-variants", default="S,B,L,H",
                    help="conversion: comma-separated variants; v2:S, v2:B, G for VideoMAE V2 (K710 heads, "
                         "float16); a :pt suffix for the pre-trained model (G:pt)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per latency path")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per latency path (the first traces)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed call")
    ap.add_argument("--out", default="bench", help="folder for bench.json and bench.md")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="after the latency rounds, profile one call of tf.function and of PyTorch SDPA per op type")
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--convert-args", default="", help="extra vmae-convert arguments, e.g. '--no-xla'")
    ap.add_argument("--rss-limit-gib", type=float, default=20.0,
                    help="stop a conversion whose resident memory goes past this (protects the machine)")
    args = ap.parse_args(argv)
    if args.runs < 1:  # a median of no runs is no figure: refuse now, not after minutes of conversions
        ap.error(f"--runs must be at least 1, got {args.runs}")
    if args.warmup < 0 or args.pause < 0:
        ap.error("--warmup and --pause must be >= 0")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from converter.pipeline import versions

    result = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "versions": versions(), "args": vars(args),
              "latency": [], "conversion": []}

    def save():
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        (out / "bench.md").write_text(markdown(result))

    # Conversions first: they run in child processes, so this one stays free of both frameworks'
    # memory until then, and latency's models do not sit in RAM while a ViT-H converts.
    if not args.skip_convert:
        for v in filter(None, args.convert_variants.split(",")):
            print(f"converting {conversion_spec(v)[0]} ...", file=sys.stderr, flush=True)
            c = conversion(v.strip(), out, args.convert_args.split(), args.rss_limit_gib * GIB)
            result["conversion"].append(c)
            print(f"  {c['wall_s']:.1f}s, peak {c['peak_rss_gib']:.2f} GiB (target {c['target_rss_gib']:.2f}), "
                  f"passed={c['passed']}", file=sys.stderr, flush=True)
            save()
    if not args.skip_latency:
        for v in filter(None, args.variants.split(",")):
            print(f"latency ViT-{v} ...", file=sys.stderr, flush=True)
            r = latency(v.strip().upper(), args.runs, args.warmup, args.pause, args.profile)
            result["latency"].append(r)
            print(f"  {r['median_s']} ratio {r['ratio_best_tf_to_best_pt']}", file=sys.stderr, flush=True)
            save()
    save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
