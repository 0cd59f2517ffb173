"""Class names of the zoo's datasets, in the index order of the official checkpoints' heads.

Plain text, one name a line, so a user can read them without this package. Where each
list comes from, and how it was cross-checked: README.md beside this file.
"""
from __future__ import annotations

from importlib import resources

# dataset key (as in the artifact reports) -> (file, number of classes)
LISTS = {"k400": ("k400.txt", 400), "ssv2": ("ssv2.txt", 174), "ucf101": ("ucf101.txt", 101),
         "k710": ("k710.txt", 710)}


def load(dataset: str) -> list[str]:
    """The class names of `dataset` (k400, ssv2, ucf101, k710), index i = logit i."""
    key = dataset.lower()
    if key not in LISTS:
        raise ValueError(f"no label list for dataset {dataset!r}; known: {', '.join(LISTS)}")
    filename, count = LISTS[key]
    names = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8").splitlines()
    if len(names) != count:  # a truncated install must not shift every name by one silently
        raise ValueError(f"{filename} holds {len(names)} names, expected {count}")
    return names


def for_classes(num_classes: int) -> tuple[str, list[str]] | None:
    """(dataset, names) of the one zoo list with `num_classes` names, or None."""
    matches = [k for k, (_, n) in LISTS.items() if n == num_classes]
    return (matches[0], load(matches[0])) if len(matches) == 1 else None
