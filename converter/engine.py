"""The name-mapping engine: a table of rules applied with strict accounting both ways.

A rule pairs an official key pattern with a Keras weight path pattern and a transform;
`{i}` stands for a block index on both sides. Applying a table to a state dict and a model
checks that every source tensor is consumed exactly once, every Keras weight is assigned
exactly once and every shape fits, and otherwise raises one MappingError that lists the
offenders. A rule may read several source tensors into one weight (transformers' separate
query/key/value Linears -> the fused qkv kernel): its source is a tuple of patterns, its
transform takes the list of tensors in that order and its inverse gives them back; each
part is still accounted for on its own. The same table runs backwards (Keras -> official keys), which is how round trips
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
    forward: Callable[[np.ndarray], np.ndarray]  # checkpoint layout -> Keras layout
    inverse: Callable[[np.ndarray], np.ndarray]  # Keras layout -> checkpoint layout


SAME = Transform("same", lambda a: a, lambda a: a)
# nn.Linear stores [out, in]; keras Dense kernels are [in, out].
LINEAR = Transform("linear", lambda a: a.T, lambda a: a.T)
# nn.Conv3d stores [O, I, T, H, W]; keras Conv3D kernels are [T, H, W, I, O].
CONV3D = Transform("conv3d", lambda a: a.transpose(2, 3, 4, 1, 0), lambda a: a.transpose(4, 3, 0, 1, 2))
# Three [H, H] Linears (query, key, value) -> one [H, 3H] kernel: stacking the [out, in] rows
# gives the official qkv.weight, whose output thirds are q, k, v.
QKV_LINEAR = Transform("qkv concat, linear", lambda parts: np.concatenate(parts, axis=0).T,
                       lambda a: list(np.split(a.T, 3, axis=0)))


@dataclass(frozen=True)
class Rule:
    source: str | tuple[str, ...]  # checkpoint key pattern(s), e.g. "blocks.{i}.attn.qkv.weight"
    target: str  # Keras weight path pattern, e.g. "blocks_{i}/attn/qkv/kernel"
    transform: Transform = SAME

    @property
    def fused(self) -> bool:
        return isinstance(self.source, tuple)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.source if self.fused else (self.source,)

    def match_source(self, key: str) -> str | None:
        """The Keras path this checkpoint key goes to, or None if the rule does not apply."""
        for part in self.sources:
            if (target := _translate(part, self.target, key)) is not None:
                return target
        return None

    def part_of(self, key: str) -> int:
        return next(n for n, part in enumerate(self.sources) if _pattern(part).match(key))

    def match_target(self, path: str) -> str | tuple[str, ...] | None:
        """The checkpoint key (a tuple of keys for a fused rule) this Keras weight comes from."""
        keys = tuple(_translate(self.target, part, path) for part in self.sources)
        if keys[0] is None:
            return None
        return keys if self.fused else keys[0]


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
    source: str | tuple[str, ...]
    target: str
    transform: Transform

    def value(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The Keras weight's value from the checkpoint tensors."""
        if isinstance(self.source, tuple):
            return self.transform.forward([tensors[k] for k in self.source])
        return self.transform.forward(tensors[self.source])


def _stand_in(shape) -> np.ndarray:
    """A zero-stride array of this shape: a transform's output shape without touching data."""
    return np.broadcast_to(np.float32(0), tuple(shape))


def _summarise(label: str, items: list[str], show: int = 4) -> str:
    more = f", ... {len(items) - show} more" if len(items) > show else ""
    return f"{len(items)} {label} ({', '.join(items[:show])}{more})"


def plan(source_shapes: dict[str, tuple], target_shapes: dict[str, tuple] | None,
         rules: list[Rule]) -> list[Assignment]:
    """Decide which source feeds which target; raise MappingError unless it is a bijection
    with matching shapes. target_shapes=None: no model to fit (a translation between two
    checkpoint layouts), so every target a rule names exists and shapes are not checked."""
    assignments, unexpected, mismatched, ambiguous, missing = [], [], [], [], []
    claimed: dict[str, str] = {}
    fused: dict[str, tuple[Rule, dict[int, str]]] = {}
    for key in source_shapes:
        hits = [(r, t) for r in rules if (t := r.match_source(key)) is not None]
        if len(hits) > 1:
            ambiguous.append(key)
            continue
        if not hits or (target_shapes is not None and hits[0][1] not in target_shapes):
            unexpected.append(key)
            continue
        rule, target = hits[0]
        if rule.fused:  # gathered here, assigned below once every part is known
            parts = fused.setdefault(target, (rule, {}))[1]
            if rule.part_of(key) in parts:
                ambiguous.append(f"{key} and {parts[rule.part_of(key)]} -> {target}")
            parts[rule.part_of(key)] = key
            continue
        if target in claimed:
            ambiguous.append(f"{key} and {claimed[target]} -> {target}")
            continue
        claimed[target] = key
        assignments.append(Assignment(key, target, rule.transform))
    for target, (rule, parts) in fused.items():
        if target in claimed:
            ambiguous.append(f"{' + '.join(parts.values())} and {claimed[target]} -> {target}")
            continue
        claimed[target] = " + ".join(parts.values())
        absent = [k for n, k in enumerate(rule.match_target(target)) if n not in parts]
        if absent:
            missing.extend(absent)
            continue
        assignments.append(Assignment(tuple(parts[n] for n in range(len(rule.sources))), target, rule.transform))
    if target_shapes is not None:
        missing += [_source_name(t, rules) for t in target_shapes if t not in claimed]
        assignments = [a for a in assignments if _fits(a, source_shapes, target_shapes, mismatched)]
    _raise_unless_exact(missing, unexpected, mismatched, ambiguous)
    return assignments


def _fits(a: Assignment, source_shapes, target_shapes, mismatched: list) -> bool:
    keys = a.source if isinstance(a.source, tuple) else (a.source,)
    try:
        got = a.value({k: _stand_in(source_shapes[k]) for k in keys}).shape
    except ValueError:  # e.g. a Conv3d transpose on a tensor that is not 5-D
        got = None
    if got is not None and tuple(got) == tuple(target_shapes[a.target]):
        return True
    shapes = " + ".join(f"{k} {list(source_shapes[k])}" for k in keys)
    mismatched.append(f"{shapes} -> {a.target} expects {list(target_shapes[a.target])}")
    return False


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
            return " + ".join(src) if isinstance(src, tuple) else src
    return target


def keras_weights(model) -> dict[str, object]:
    return {v.path: v for v in model.weights}


def load_into(model, tensors: dict[str, np.ndarray], rules: list[Rule], consume: bool = False) -> list[Assignment]:
    """Assign checkpoint tensors to the Keras model's weights through the rule table. With
    consume=True each tensor leaves `tensors` once assigned: where nothing else holds it, the
    weights then move into the model instead of being copied (ViT-g: 4 GB less at the peak)."""
    variables = keras_weights(model)
    assignments = plan({k: v.shape for k, v in tensors.items()},
                       {p: tuple(v.shape) for p, v in variables.items()}, rules)
    for a in assignments:
        var = variables[a.target]
        # At most one copy per tensor (the transpose, or the cast), none for float32 `SAME`.
        var.assign(np.ascontiguousarray(a.value(tensors), dtype=var.dtype))
        if consume:
            for key in a.source if isinstance(a.source, tuple) else (a.source,):
                tensors.pop(key, None)
    return assignments


def export_state_dict(model, rules: list[Rule]) -> dict[str, np.ndarray]:
    """The inverse: Keras weights -> checkpoint keys and layouts, every weight accounted for."""
    return to_checkpoint({path: np.asarray(var.numpy()) for path, var in keras_weights(model).items()}, rules)


def to_checkpoint(weights: dict[str, np.ndarray], rules: list[Rule]) -> dict[str, np.ndarray]:
    """Keras-layout arrays by weight path -> checkpoint keys; each path needs exactly one rule."""
    out, orphans = {}, []
    for path, value in weights.items():
        hits = [(r, s) for r in rules if (s := r.match_target(path)) is not None]
        if len(hits) != 1:
            orphans.append(path)
            continue
        rule, key = hits[0]
        if rule.fused:
            out.update({k: np.ascontiguousarray(part) for k, part in zip(key, rule.transform.inverse(value))})
        else:
            out[key] = np.ascontiguousarray(rule.transform.inverse(value))
    if orphans:
        raise MappingError("model weights without exactly one rule: " + _summarise("weights", orphans))
    return out


def translate(tensors: dict[str, np.ndarray], from_rules: list[Rule], to_rules: list[Rule]) -> dict[str, np.ndarray]:
    """One checkpoint layout to another through the Keras layout both tables map to, without a
    Keras model: every source tensor must be consumed and every weight must have one key."""
    assignments = plan({k: v.shape for k, v in tensors.items()}, None, from_rules)
    return to_checkpoint({a.target: a.value(tensors) for a in assignments}, to_rules)
