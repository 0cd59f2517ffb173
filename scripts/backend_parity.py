"""The converted artifacts on every Keras 3 backend, against PyTorch.

    python scripts/backend_parity.py                       # full-size ViT-S K400 FT, synthetic weights
    python scripts/backend_parity.py --variant S --stage pt --out bench/backends

Converts once (tensorflow, as the converter must), saves PyTorch's output on the parity clip,
then loads `<name>.weights.h5` into `tf_models.build_model(...)` and `keras.saving.load_model
("<name>.keras")` in a fresh process per backend (`KERAS_BACKEND=jax|torch|tensorflow`), which
imports tf_models alone, and compares at the 1e-5 gate. Prints a JSON line per backend, and
the modules the import pulled in beyond keras' backend (none expected).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")


def worker(prefix: str, parity_npz: str, config_json: str) -> dict:
    """In a process of its own: tf_models only, on whatever KERAS_BACKEND says."""
    import keras
    import numpy as np

    import tf_models

    heavy = {"torch", "timm", "torchvision", "tensorflow", "converter", "pt_reference"}
    backend = keras.backend.backend()
    allowed = {"torch"} if backend == "torch" else {"tensorflow"} if backend == "tensorflow" else set()
    loaded = sorted(m for m in heavy - allowed if m in sys.modules)
    if Path(tf_models.__file__).resolve().parents[1] != REPO:
        raise SystemExit(f"the worker imported {tf_models.__file__}, not this checkout's tf_models")
    data = np.load(parity_npz)
    inputs = [data["video"], data["mask"]] if "mask" in data else data["video"]
    built = tf_models.build_model(tf_models.ArchConfig(**json.loads(config_json)))
    built.load_weights(prefix + ".weights.h5")
    reloaded = keras.saving.load_model(prefix + ".keras")
    out = {"backend": backend, "loaded": loaded}
    for name, model in (("weights_h5", built), ("keras", reloaded)):
        got = keras.ops.convert_to_numpy(model(inputs, training=False))
        out[name] = float(np.abs(got - data["expected"]).max())
        out[name + "_passed"] = bool(np.all(np.abs(got - data["expected"]) <= 1e-5 + 1e-5 * np.abs(data["expected"])))
    return out


def run_worker(backend: str, prefix, parity_npz, cfg_dict: dict, timeout: int = 1200) -> dict:
    # The script's own folder heads sys.path, not the repository: without PYTHONPATH the worker
    # would import whichever tf_models is installed (another checkout's, with an editable install).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, __file__, "--worker", str(prefix), str(parity_npz), json.dumps(cfg_dict)],
                            capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if result.returncode != 0:
        return {"backend": backend, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def save_reference_output(folder: Path, name: str, cfg, seed: int = 0, batch: int = 1) -> Path:
    """PyTorch's output on the conversion's parity clip (and mask), for the workers to compare with."""
    import numpy as np

    import converter  # noqa: F401  (loads torch first: see converter/__init__)
    import torch
    from converter.checkpoint import read_checkpoint
    from converter.masking import tube_mask
    from converter.parity import channels_last, make_video, run_reference
    from pt_reference import load_reference

    tensors = read_checkpoint(folder / f"synthetic_{name}_seed{seed}.pth").tensors
    reference = load_reference(cfg, {k: torch.from_numpy(v) for k, v in tensors.items()})
    video = make_video(cfg, batch, seed)
    mask = tube_mask(cfg, batch, seed) if cfg.is_pretrain else None
    path = folder / "parity.npz"
    np.savez(path, video=channels_last(video), expected=run_reference(reference, video, mask),
             **({"mask": mask} if mask is not None else {}))
    return path


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(*sys.argv[2:5])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="S")
    parser.add_argument("--dataset", default="k400")
    parser.add_argument("--stage", default="ft")
    parser.add_argument("--out", default="bench/backends")
    args = parser.parse_args()
    from converter.pipeline import convert, default_name, ConvertOptions
    from converter.variants import arch_config

    folder = Path(args.out)
    name = default_name(ConvertOptions(variant=args.variant, dataset=args.dataset, stage=args.stage))
    report = convert(variant=args.variant, dataset=args.dataset, stage=args.stage, synthetic=True, output_dir=folder,
                     progress=lambda m: print(m, file=sys.stderr), xla=False)
    print(json.dumps({"backend": "converter (tensorflow)", "tf_vs_pt": report["checks"]["tf_vs_pt"]["max_abs"],
                      "keras": report["checks"]["keras"]["max_abs"], "passed": report["passed"]}))
    cfg = arch_config(args.variant, args.dataset, args.stage)
    npz = save_reference_output(folder, name, cfg)
    ok = report["passed"]
    for backend in BACKENDS:
        out = run_worker(backend, folder / name, npz, cfg.to_dict())
        print(json.dumps(out), flush=True)
        ok &= bool(out.get("weights_h5_passed") and out.get("keras_passed") and out.get("loaded") == [])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
