"""Regenerating the zoo: many conversions, resumable, in parallel within memory, with a manifest.

Each conversion runs in its own `vmae-convert` process: a crash or a kill takes only that
entry down, memory is returned between entries, and import order is fresh every time.
`manifest.json` is the ledger: an entry counts as done only if its record says it passed
and every artifact on disk still has the recorded size and sha256. Anything else (missing
record, killed run, corrupted file) is converted again.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import psutil

from .export import sha256_file, tree_size, write_atomic
from .registry import Entry
from .variants import arch_config

MANIFEST = "manifest.json"
GIB = 2**30
# torch + tensorflow themselves, their thread pools and allocator caches. Measured ViT-S conversion
# peaks (float64 on): 1.64-1.85 GiB on a 2-core AMD EPYC (AVX2), 2.18 GiB (2.14 GiB by the batch's
# watcher) on a 2-core AMD EPYC Zen 4 with AVX-512, 2.15 GiB (2.3 GiB by the batch's watcher) on an
# Intel AVX-512 machine; 1.5 GiB here under-estimated that by 0.2 GiB, so --jobs could over-commit.
# 2.25 GiB puts ViT-S at 2.9 GiB, 25% above the highest peak seen.
FRAMEWORK_BASELINE = 2.25 * GIB


def tree_sha256(folder: Path) -> str:
    """One hash for a SavedModel folder: relative paths and file hashes, in sorted order."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder)}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def artifact_record(path: Path) -> dict:
    if path.is_dir():
        return {"kind": "savedmodel", "size": tree_size(path), "sha256": tree_sha256(path)}
    return {"kind": "file", "size": path.stat().st_size, "sha256": sha256_file(path)}


def load_manifest(output_dir: Path) -> dict:
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return {"entries": {}}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {"entries": {}}
    except (OSError, ValueError):
        return {"entries": {}}  # a damaged ledger only costs re-verification work


# What a conversion was run with: a record counts as done only for the same inputs.
DEFAULT_INPUTS = {"synthetic": False, "seed": 0, "atol": 1e-5, "rtol": 1e-5, "batch": 1, "float64": True,
                  "xla": True}


def run_inputs(synthetic: bool, options: dict) -> dict:
    inputs = {k: options.get(k) if options.get(k) is not None else v for k, v in DEFAULT_INPUTS.items()}
    inputs["synthetic"] = bool(synthetic)
    return inputs


def changed_inputs(record: dict, inputs: dict, source_sha256: str | None = None) -> str | None:
    """What differs between the inputs a record was made with and the ones asked for now, if anything."""
    recorded = record.get("inputs")
    if not isinstance(recorded, dict):
        return "the record does not say what it was made from"
    if recorded.get("synthetic") != inputs["synthetic"]:
        made = "a synthetic checkpoint" if recorded.get("synthetic") else "the official checkpoint"
        return f"recorded from {made}, now {'synthetic' if inputs['synthetic'] else 'the official one'}"
    diffs = [f"{k} {recorded.get(k)} -> {v}" for k, v in inputs.items() if recorded.get(k) != v]
    if diffs:
        return "other inputs: " + ", ".join(diffs)
    if source_sha256 and record.get("source_sha256") != source_sha256:
        return f"source sha256 {str(record.get('source_sha256'))[:12]}... is not the registry's {source_sha256[:12]}..."
    return None


def verify_record(output_dir: Path, record: dict | None, inputs: dict | None = None,
                  source_sha256: str | None = None) -> str | None:
    """None if the record was made from `inputs` (when given) and every recorded artifact is present
    and intact, else the reason to redo it."""
    if not record or not record.get("passed"):
        return "no passing record"
    if inputs is not None:
        changed = changed_inputs(record, inputs, source_sha256)
        if changed:
            return changed
    for filename, expected in record.get("artifacts", {}).items():
        path = Path(output_dir) / filename
        if not path.exists():
            return f"{filename} is missing"
        got = artifact_record(path)
        if (got["size"], got["sha256"]) != (expected["size"], expected["sha256"]):
            return f"{filename} differs from the manifest"
    return None if record.get("artifacts") else "no artifacts recorded"


def estimated_peak_bytes(entry: Entry, float64: bool, batch: int = 1) -> int:
    """Rough peak of one conversion, on the safe side: three float32 copies of the weights (the
    checkpoint, the Keras variables, a reload being checked), the frameworks themselves, and one
    forward's activations per clip. The float64 check computes from the float32 weights, so it
    costs activations only; its attention scores dominate (about 1.2 GiB per clip measured at ViT-H)."""
    cfg = arch_config(entry.variant, entry.dataset, entry.stage, "v2" if entry.family == "v2" else "v1")
    return int(cfg.num_params * 4 * 3 + FRAMEWORK_BASELINE + max(batch, 1) * activation_bytes(cfg, float64))


def activation_bytes(cfg, float64: bool) -> int:
    """One clip's largest live activations in one block: attention scores, their softmax and
    the attention-weighted values (three heads x tokens x tokens buffers), plus the MLP's hidden layer."""
    itemsize = 8 if float64 else 4
    tokens = cfg.num_patches
    return itemsize * (3 * cfg.num_heads * tokens * tokens + 2 * tokens * cfg.mlp_dim)


class MemoryBudget:
    """Lets a conversion start only while the sum of running estimates fits in RAM."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        amount = min(amount, self.total)  # a lone oversized job still runs, alone
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + amount <= self.total)
            self.used += amount

    def release(self, amount: int) -> None:
        with self.cond:
            self.used -= min(amount, self.total)
            self.cond.notify_all()


def _command(entry: Entry, output_dir: Path, synthetic: bool, checkpoint_dir: str | None, options: dict):
    cmd = [sys.executable, "-m", "converter.cli", "--variant", entry.variant, "--dataset", entry.dataset,
           "--stage", entry.stage, "--output-dir", str(output_dir), "--name", entry.artifact, "--quiet"]
    if synthetic:
        cmd += ["--synthetic", "--synthetic-dir", checkpoint_dir]
        if entry.family == "v2":  # a V2 ViT-B on SSv2 has v1's name and shapes: say which table
            cmd += ["--family", "v2"]
    else:
        cmd += ["--registry-entry", entry.name]
    for key in ("seed", "atol", "rtol", "batch"):
        if options.get(key) is not None:
            cmd += [f"--{key}", str(options[key])]
    if options.get("float64") is False:
        cmd.append("--no-float64")
    if options.get("xla") is False:
        cmd.append("--no-xla")
    return cmd


def run_batch(entries: list[Entry], output_dir, synthetic: bool = False, jobs: int = 1,
              progress: Callable[[str], None] = print, **options) -> dict:
    """Convert every entry not already done; returns {"converted", "skipped", "failed", ...}."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output_dir)
    lock = threading.Lock()
    running: set[subprocess.Popen] = set()
    budget = MemoryBudget(int(psutil.virtual_memory().available * 0.9))
    summary = {"converted": [], "skipped": [], "failed": [], "peak_rss_bytes": {}, "seconds": {}}
    todo = []
    inputs = run_inputs(synthetic, options)
    for entry in entries:
        reason = verify_record(output_dir, manifest["entries"].get(entry.artifact), inputs,
                               None if synthetic else entry.sha256)
        if reason is None:
            summary["skipped"].append(entry.artifact)
            progress(f"skip {entry.artifact}: done and verified")
        else:
            todo.append(entry)
            progress(f"todo {entry.artifact}: {reason}")
    started = time.perf_counter()

    def one(entry: Entry) -> None:
        need = estimated_peak_bytes(entry, options.get("float64", True), options.get("batch") or 1)
        budget.acquire(need)
        try:
            log_path = output_dir / "logs" / f"{entry.artifact}.log"
            log_path.parent.mkdir(exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="vmae-synthetic-") as scratch, open(log_path, "w") as log:
                cmd = _command(entry, output_dir, synthetic, scratch, options)
                progress(f"start {entry.artifact} (about {need / GIB:.1f} GiB)")
                t0 = time.perf_counter()
                # Output goes to a file, not a pipe: a chatty child could fill a pipe and stall.
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
                with lock:
                    running.add(proc)
                peak = _watch_rss(proc)
                with lock:
                    running.discard(proc)
                seconds = time.perf_counter() - t0
        finally:
            budget.release(need)
        report_path = output_dir / f"{entry.artifact}.parity.json"
        report = json.loads(report_path.read_text()) if report_path.exists() and proc.returncode in (0, 3) else None
        record = {
            "entry": entry.name, "variant": entry.variant, "dataset": entry.dataset, "stage": entry.stage,
            "passed": proc.returncode == 0 and bool(report and report["passed"]),
            "synthetic": synthetic, "inputs": inputs, "seconds": round(seconds, 1), "peak_rss_bytes": peak,
        }
        if record["passed"]:
            # the report too: a release without the report that vouches for its files is not done
            files = [*report["artifacts"], report_path.name]
            record["artifacts"] = {f: artifact_record(output_dir / f) for f in files}
            record["source_sha256"] = report["checkpoint"]["sha256"]
            record["versions"] = report["versions"]
            record["parity"] = {k: {m: c.get(m) for m in ("passed", "max_abs", "max_rel")}
                                for k, c in report["checks"].items()}
        with lock:
            manifest["entries"][entry.artifact] = record
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_atomic(output_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            summary["peak_rss_bytes"][entry.artifact] = peak
            summary["seconds"][entry.artifact] = round(seconds, 1)
            key = "converted" if record["passed"] else "failed"
            summary[key].append(entry.artifact)
        last = (log_path.read_text(errors="replace").strip().splitlines() or [""])[-1]
        progress(f"{'done' if record['passed'] else 'FAILED'} {entry.artifact} in {seconds:.0f}s, "
                 f"peak {peak / GIB:.1f} GiB" + ("" if record["passed"] else f": {last}"))

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        list(pool.map(one, todo))
    except BaseException:
        # Ctrl-C / SIGTERM reach this process only: pass them on, so no child keeps converting
        # (and publishing) after the batch was stopped. Each child cleans its own staging.
        with lock:
            for proc in running:
                if proc.poll() is None:
                    proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _watch_rss(proc: subprocess.Popen, every: float = 0.5) -> int:
    """Peak resident memory of a child process (and its children), sampled."""
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(every)
    except psutil.Error:
        pass
    return peak
