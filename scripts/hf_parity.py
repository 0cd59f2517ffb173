"""Full-size transformers-format checkpoints through the converter, against transformers itself.

    python scripts/hf_parity.py                      # ViT-S (hub-style .bin) and ViT-B (safetensors)
    python scripts/hf_parity.py --only B --out bench/hf

No download: the folders are written here the way the hub holds them, with random non-zero
weights, in the MCG-NJU `-finetuned-kinetics` shapes (400 labels, mean pooling, layer_norm_eps
1e-12). ViT-S takes the 16 heads transformers' conversion script gives "small" (the official
model has 6), so the report's head-count note shows. Prints one JSON line per model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from converter import frameworks  # noqa: E402  torch before tensorflow

frameworks.load()

from hf_folders import save_hub_style, save_module_keys  # noqa: E402

from converter.families import hf  # noqa: E402
from converter.pipeline import convert  # noqa: E402

MODELS = {
    "S": (save_hub_style, dict(hidden_size=384, num_attention_heads=16, intermediate_size=1536)),
    "B": (save_module_keys, dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
}
FULL = dict(num_hidden_layers=12, num_frames=16, image_size=224, decoder_hidden_size=384,
            decoder_num_hidden_layers=4, decoder_num_attention_heads=6, decoder_intermediate_size=1536)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=list(MODELS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="hf_parity_"))
    for name, (save, dims) in MODELS.items():
        if args.only and name != args.only:
            continue
        labels = {i: f"class {i}" for i in range(400)}
        folder = save(root / f"videomae-{name.lower()}-finetuned-kinetics", hf.CLASSIFIER, seed=0, **FULL, **dims,
                      id2label=labels, label2id={v: k for k, v in labels.items()})
        start = time.perf_counter()
        report = convert(checkpoint=str(folder), output_dir=str(root / "out"), batch=1)
        checks = {k: v.get("max_abs") for k, v in report["checks"].items()}
        print(json.dumps({"model": f"ViT-{name}", "weights": Path(report["checkpoint"]["path"]).name,
                          "passed": report["passed"], "max_abs": checks, "reference": report["reference"],
                          "heads": report["heads"], "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
