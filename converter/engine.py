"""The name-mapping engine: a table of rules applied with strict accounting both ways.

A rule pairs an official key pattern with a Keras weight path pattern and a transform;
`{i}` stands for a block index on both sides. Applying a table to a state dict and a model
checks that every source tensor is consumed exactly once, every Keras weight is assigned
exactly once and every shape fits, and otherwise raises one MappingError that lists the
offenders. The same table runs backwards (Keras -> official keys), which is how round trips
are proven and how weights fine-tuned in TensorFlow go back to PyTorch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from .errors import MappingError


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]  # official layout -> Keras layout
    inverse: Callable[[np.ndarray], np.ndarray]  # Keras layout -> official layout


SAME = Transform("same", lambda a: a, lambda a: a)
# nn.Linear stores [out, in]; keras Dense kernels are [in, out].
LINEAR = Transform("linear", lambda a: a.T, lambda a: a.T)
# nn.Conv3d stores [O, I, T, H, W]; keras Conv3D kernels are [T, H, W, I, O].
CONV3D = Transform("conv3d", lambda a: a.transpose(2, 3, 4, 1, 0), lambda a: a.transpose(4, 3, 0, 1, 2))


@dataclass(frozen=True)
class Rule:
    source: str  # official key pattern, e.g. "blocks.{i}.attn.qkv.weight"
    target: str  # Keras weight path pattern, e.g. "blocks_{i}/attn/qkv/kernel"
    transform: Transform = SAME

    def match_source(self, key: str) -> str | None:
        """The Keras path this official key goes to, or None if the rule does not apply."""
        return _translate(self.source, self.target, key)

    def match_target(self, path: str) -> str | None:
        return _translate(self.target, self.source, path)


@lru_cache(maxsize=None)
def _pattern(pattern: str) -> re.Pattern:
    return re.compile("^" + r"(\d+)".join(re.escape(p) for p in pattern.split("{i}")) + "$")


def _translate(pattern: str, other: str, name: str) -> str | None:
    m = _pattern(pattern).match(name)
    if m is None:
        return None
    return other.replace("{i}", m.group(1)) if m.groups() else other


@dataclass(frozen=True)
class Assignment:
    source: str
    target: str
    transform: Transform


def _summarise(label: str, items: list[str], show: int = 4) -> str:
    more = f", ... {len(items) - show} more" if len(items) > show else ""
    return f"{len(items)} {label} ({', '.join(items[:show])}{more})"


def plan(source_shapes: dict[str, tuple], target_shapes: dict[str, tuple], rules: list[Rule]) -> list[Assignment]:
    """Decide which source feeds which target; raise MappingError unless it is a bijection
    with matching shapes."""
    assignments, unexpected, mismatched, ambiguous = [], [], [], []
    claimed: dict[str, str] = {}
    for key in source_shapes:
        hits = [(r, t) for r in rules if (t := r.match_source(key)) is not None]
        if len(hits) > 1:
            ambiguous.append(key)
            continue
        if not hits or hits[0][1] not in target_shapes:
            unexpected.append(key)
            continue
        rule, target = hits[0]
        if target in claimed:
            ambiguous.append(f"{key} and {claimed[target]} -> {target}")
            continue
        claimed[target] = key
        # A zero-stride stand-in: the transform's output shape without touching the data.
        try:
            got = rule.transform.forward(np.broadcast_to(np.float32(0), tuple(source_shapes[key]))).shape
        except ValueError:  # e.g. a Conv3d transpose on a tensor that is not 5-D
            got = None
        if got is None or tuple(got) != tuple(target_shapes[target]):
            mismatched.append(f"{key} {list(source_shapes[key])} -> {target} expects {list(target_shapes[target])}")
            continue
        assignments.append(Assignment(key, target, rule.transform))
    missing = [_source_name(t, rules) for t in target_shapes if t not in claimed]
    _raise_unless_exact(missing, unexpected, mismatched, ambiguous)
    return assignments


def _raise_unless_exact(missing, unexpected, mismatched, ambiguous=()) -> None:
    if unexpected or missing or mismatched or ambiguous:
        parts = []
        if missing:
            parts.append(_summarise("missing", missing))
        if unexpected:
            parts.append(_summarise("unexpected", unexpected))
        if mismatched:
            parts.append(_summarise("mis-shaped", mismatched, 2))
        if ambiguous:
            parts.append(_summarise("claimed twice", list(ambiguous), 2))
        raise MappingError("checkpoint does not fit the model: " + "; ".join(parts),
                           missing=missing, unexpected=unexpected, mismatched=mismatched)


def check_official(source_shapes: dict[str, tuple], official_shapes: dict[str, tuple]) -> None:
    """The same accounting as `plan`, on official names against the official model's state dict:
    runs before any Keras model is built, so a damaged file is refused in seconds."""
    missing = [k for k in official_shapes if k not in source_shapes]
    unexpected = [k for k in source_shapes if k not in official_shapes]
    mismatched = [f"{k} {list(s)} expects {list(official_shapes[k])}" for k, s in source_shapes.items()
                  if k in official_shapes and tuple(s) != tuple(official_shapes[k])]
    _raise_unless_exact(missing, unexpected, mismatched)


def _source_name(target: str, rules: list[Rule]) -> str:
    """Name a missing Keras weight by the official key it needs, which is what users can look up."""
    for rule in rules:
        src = rule.match_target(target)
        if src is not None:
            return src
    return target


def keras_weights(model) -> dict[str, object]:
    return {v.path: v for v in model.weights}


def load_into(model, tensors: dict[str, np.ndarray], rules: list[Rule]) -> list[Assignment]:
    """Assign official tensors to the Keras model's weights through the rule table."""
    variables = keras_weights(model)
    assignments = plan({k: v.shape for k, v in tensors.items()},
                       {p: tuple(v.shape) for p, v in variables.items()}, rules)
    for a in assignments:
        var = variables[a.target]
        # At most one copy per tensor (the transpose, or the cast), none for float32 `SAME`.
        var.assign(np.ascontiguousarray(a.transform.forward(tensors[a.source]), dtype=var.dtype))
    return assignments


def export_state_dict(model, rules: list[Rule]) -> dict[str, np.ndarray]:
    """The inverse: Keras weights -> official keys and layouts, every weight accounted for."""
    out, orphans = {}, []
    for path, var in keras_weights(model).items():
        hits = [(r, s) for r in rules if (s := r.match_target(path)) is not None]
        if len(hits) != 1:
            orphans.append(path)
            continue
        rule, key = hits[0]
        out[key] = np.ascontiguousarray(rule.transform.inverse(np.asarray(var.numpy())))
    if orphans:
        raise MappingError("model weights without exactly one rule: " + _summarise("weights", orphans))
    return out
