"""Class names of the zoo's datasets, in the index order of the official checkpoints' heads.

Plain text, one name a line, so a user can read them without this package. Where each
list comes from, and how it was cross-checked: README.md beside this file.
"""
from __future__ import annotations

from pathlib import Path

# Files beside this module, read by path: the converter loads this module by file before
# tensorflow may load (converter/variants.py), so it must not import its package.
_HERE = Path(__file__).resolve().parent

# dataset key (as in the artifact reports) -> (file, number of classes)
LISTS = {"k400": ("k400.txt", 400), "ssv2": ("ssv2.txt", 174), "ucf101": ("ucf101.txt", 101),
         "k710": ("k710.txt", 710), "k600": ("k600.txt", 600), "k700": ("k700.txt", 700)}
# VideoMAE V2's K710 heads read as Kinetics-400/600/700 heads: `head[index]` (misc/label_710to*.json)
K710_REMAPS = {"k400": "k710_to_k400.json", "k600": "k710_to_k600.json", "k700": "k710_to_k700.json"}


def load(dataset: str) -> list[str]:
    """The class names of `dataset` (k400, ssv2, ucf101, k710, k600, k700), index i = logit i."""
    key = dataset.lower()
    if key not in LISTS:
        raise ValueError(f"no label list for dataset {dataset!r}; known: {', '.join(LISTS)}")
    filename, count = LISTS[key]
    names = (_HERE / filename).read_text(encoding="utf-8").splitlines()
    if len(names) != count:  # a truncated install must not shift every name by one silently
        raise ValueError(f"{filename} holds {len(names)} names, expected {count}")
    return names


def k710_index(target: str) -> list[int]:
    """Row i of a `target` head is row index[i] of a K710 head (target: k400, k600, k700)."""
    import json

    key = target.lower()
    if key not in K710_REMAPS:
        raise ValueError(f"no K710 remap to {target!r}; known: {', '.join(K710_REMAPS)}")
    index = json.loads((_HERE / K710_REMAPS[key]).read_text(encoding="utf-8"))
    count = LISTS[key][1]
    if len(index) != count or len(set(index)) != count or not all(0 <= i < 710 for i in index):
        raise ValueError(f"{K710_REMAPS[key]} is not {count} distinct K710 indices")
    return index


def for_classes(num_classes: int) -> tuple[str, list[str]] | None:
    """(dataset, names) of the one zoo list with `num_classes` names, or None."""
    matches = [k for k, (_, n) in LISTS.items() if n == num_classes]
    return (matches[0], load(matches[0])) if len(matches) == 1 else None
