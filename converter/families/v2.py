"""VideoMAE V2 (OpenGVLab/VideoMAEv2): the official family's keys, another variant table.

V2 saves the same state dict as v1 (`models/modeling_finetune.py` and `modeling_pretrain.py`
keep v1's module names), so its rule table, its reference and its writer are the official
family's: only the architecture differs (ViT-g/14 with MLP ratio 48/11, a 512-wide ViT-H
decoder, K710/K600/HMDB51 heads, UnlabeledHybrid pre-training). The pre-training forward takes
an optional decoder mask; without it, as here, it reconstructs every masked token like v1, so
`pt_reference` is V2's forward too. Released fine-tuned and distilled files are float16 and are
upcast tensor by tensor when read (`checkpoint.unwrap`).

Nothing in the container tells a V2 file from a v1 one, so this family is chosen by
`--family v2`, by a variant or dataset only V2 has (ViT-g, K710, Hybrid...), or by shapes only
V2 has (`variants.file_generation`), never by `claims`.
"""
from __future__ import annotations

from . import official

NAME = "v2"
GENERATION = "v2"

rules = official.rules
dropped = official.dropped
write = official.write
reference = official.reference


def claims(path, config) -> bool:
    return False


def report_fields(cfg, details: dict) -> dict:
    return {"family": NAME, "generation": "VideoMAE V2", "reference": details.get("reference")}
