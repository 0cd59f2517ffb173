"""checkpoints.yaml as validated, immutable entries: which checkpoint files exist and what they become.

Validation is strict on purpose: the registry drives batch conversions and release names, so a typo
(an unknown field, a wrong class count, two entries with one artifact name) must stop the run at
load time with a message naming the entry and the field, not surface later as a wrong artifact.

Entries belong to a checkpoint family (`family`, default `official`): the same trained weights may
be listed once per family (the official `.pth` and its transformers copy on the hub), so lookups
and uniqueness go per family. A family here is the sources it is fetched from and how its
artifacts are named; a new family is one line in FAMILIES and, if its names differ, one branch
in `_expected_artifact`.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from . import hub
from .errors import RegistryError
from .variants import DATASETS, GENERATIONS, STAGES, V2_VARIANTS, VARIANTS, artifact_name

ALL_VARIANTS = {**VARIANTS, **V2_VARIANTS}  # size order: S, B, L, H, G

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "checkpoints.yaml"
ENV_PATH = "VMAE_REGISTRY"
# family -> the source types its entries may have
FAMILIES = {"official": ("gdrive", "url"), "hf": ("hf",), "v2": ("url",)}
DEFAULT_FAMILY = "official"
# source type -> the fields it needs (and the only ones it takes, besides `type`)
SOURCE_FIELDS = {"gdrive": ("id",), "url": ("url",), "hf": ("repo", "revision")}
SOURCE_TYPES = tuple(SOURCE_FIELDS)
# a branch, a tag or a commit; "@" and spaces would break the hf://repo@revision address
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Names end up in cache file names and in VMAE_DOWNLOAD_URL_<NAME> variables.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class Source:
    type: str  # "gdrive" (official files), "url" (a mirror) or "hf" (a Hugging Face hub repo)
    id: str | None = None
    url: str | None = None
    repo: str | None = None  # hf: owner/name
    revision: str | None = None  # hf: branch, tag or commit

    def __str__(self) -> str:
        if self.type == "gdrive":
            return f"gdrive:{self.id}"
        if self.type == "hf":
            return f"{hub.SCHEME}{self.repo}@{self.revision}"
        return str(self.url)


@dataclass(frozen=True)
class Entry:
    name: str
    variant: str
    dataset: str
    stage: str
    epochs: int
    frames: int
    tubelet: int
    image_size: int
    source: Source
    sha256: str | None
    release: bool
    artifact: str
    num_classes: int | None = None  # ft only
    mask_ratio: float | None = None  # pt only
    decoder_depth: int | None = None  # pt only
    top1: float | None = None  # ft only: official accuracy
    top5: float | None = None
    note: str | None = None
    family: str = DEFAULT_FAMILY

    @property
    def verified(self) -> bool:
        return self.sha256 is not None


# field -> (kind, required). Stage-dependent fields are optional here and checked per stage below.
_SCHEMA = {
    "name": ("str", True),
    "variant": ("str", True),
    "dataset": ("str", True),
    "stage": ("str", True),
    "epochs": ("int", True),
    "frames": ("int", True),
    "tubelet": ("int", True),
    "image_size": ("int", True),
    "source": ("map", True),
    "sha256": ("str", True),  # required key, but null is allowed (not verified yet)
    "release": ("bool", True),
    "artifact": ("str", True),
    "num_classes": ("int", False),
    "mask_ratio": ("num", False),
    "decoder_depth": ("int", False),
    "top1": ("num", False),
    "top5": ("num", False),
    "note": ("str", False),
    "family": ("str", False),  # absent: official
}
_NULLABLE = {"sha256"} | {k for k, (_, required) in _SCHEMA.items() if not required}
assert set(_SCHEMA) == {f.name for f in fields(Entry)}


def _is_kind(value, kind: str) -> bool:
    # bool is an int subclass in Python; "release: 1" or "epochs: true" must still be rejected.
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "map": dict}[kind])


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loading silently resolves to the last."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def registry_path(path=None) -> Path:
    return Path(path or os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load_registry(path=None) -> list[Entry]:
    """All entries of the registry (explicit path, else $VMAE_REGISTRY, else the repo's checkpoints.yaml)."""
    path = registry_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} not found; pass an existing file or set {ENV_PATH}") from None
    except OSError as exc:
        raise RegistryError(f"cannot read registry file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RegistryError(f"{path} is not valid YAML: {problem}{where}; fix the file") from None
    if not isinstance(data, dict) or set(data) != {"checkpoints"} or not isinstance(data["checkpoints"], list):
        raise RegistryError(f"{path} must hold a single top-level key 'checkpoints' with a list of entries")

    entries = [_parse_entry(raw, i, path) for i, raw in enumerate(data["checkpoints"])]
    _check_unique(entries, path)
    return entries


def _parse_entry(raw, index: int, path: Path) -> Entry:
    label = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else f"#{index + 1}"

    def fail(field: str, problem: str):
        raise RegistryError(f"{path.name}: entry {label!r}, field {field!r}: {problem}")

    if not isinstance(raw, dict):
        raise RegistryError(f"{path.name}: entry {label!r} must be a mapping of fields, got {type(raw).__name__}")
    for key in raw:
        if key not in _SCHEMA:
            fail(key, f"unknown field; allowed: {', '.join(_SCHEMA)}")
    for key, (kind, required) in _SCHEMA.items():
        if required and key not in raw:
            fail(key, "missing")
        value = raw.get(key)
        if value is None and key in _NULLABLE:
            continue
        if not _is_kind(value, kind):
            expected = {"str": "a string", "int": "an integer", "num": "a number",
                        "bool": "true or false", "map": "a mapping"}[kind]
            fail(key, f"must be {expected}, got {value!r}")

    if not _NAME.fullmatch(raw["name"]):
        fail("name", "use lower-case letters, digits, '.', '_' and '-' only")
    family = raw.get("family") or DEFAULT_FAMILY
    if family not in FAMILIES:
        fail("family", f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    generation = GENERATIONS["v2" if family == "v2" else "v1"]  # a family's variant table and datasets
    if raw["variant"] not in generation.variants:
        fail("variant", f"unknown {generation.title} variant {raw['variant']!r}; "
                        f"expected one of {', '.join(generation.variants)}")
    if raw["stage"] not in STAGES:
        fail("stage", f"unknown stage {raw['stage']!r}; expected one of {', '.join(STAGES)}")
    allowed = generation.pretrain_datasets if raw["stage"] == "pt" else generation.finetune_datasets
    if raw["dataset"] not in allowed:
        fail("dataset", f"unknown {generation.title} dataset {raw['dataset']!r} for stage {raw['stage']}; "
                        f"expected one of {', '.join(allowed)}")
    for key in ("epochs", "frames", "tubelet", "image_size"):
        if raw[key] <= 0:
            fail(key, f"must be positive, got {raw[key]}")
    if raw["frames"] % raw["tubelet"]:
        fail("frames", f"{raw['frames']} is not a multiple of tubelet {raw['tubelet']}")

    variant, dataset = generation.variants[raw["variant"]], DATASETS[raw["dataset"]]
    # The stage decides which head the network has, so the head facts must agree with it.
    if raw["stage"] == "ft":
        for key in ("mask_ratio", "decoder_depth"):
            if raw.get(key) is not None:
                fail(key, "only pre-trained (stage pt) entries have a decoder; remove it")
        if raw.get("num_classes") != dataset.num_classes:
            fail("num_classes", f"{dataset.key} has {dataset.num_classes} classes, got {raw.get('num_classes')}")
        for key in ("top1", "top5"):
            if raw.get(key) is not None and not 0 <= raw[key] <= 100:
                fail(key, f"must be a percentage in 0..100, got {raw[key]}")
        if raw.get("top1") is not None and raw.get("top5") is not None and raw["top5"] < raw["top1"]:
            fail("top5", f"top-5 {raw['top5']} is below top-1 {raw['top1']}")
    else:
        for key in ("num_classes", "top1", "top5"):
            if raw.get(key) is not None:
                fail(key, "pre-trained (stage pt) entries have no classifier; omit it or set null")
        if raw.get("mask_ratio") != dataset.mask_ratio:
            fail("mask_ratio", f"{dataset.key} pre-training uses {dataset.mask_ratio}, got {raw.get('mask_ratio')}")
        if raw.get("decoder_depth") != variant.decoder_depth:
            fail("decoder_depth", f"variant {variant.name} has a {variant.decoder_depth}-block decoder, "
                                  f"got {raw.get('decoder_depth')}")

    source = raw["source"]
    kind = source.get("type")
    if kind not in FAMILIES[family]:
        fail("source", f"type must be one of {', '.join(FAMILIES[family])} for {family} entries, got {kind!r}"
                       + ("; hub repos go in entries with family: hf" if kind == "hf" else ""))
    allowed = ("type", *SOURCE_FIELDS[kind])
    if set(source) - set(allowed):
        fail("source", f"unknown keys {sorted(set(source) - set(allowed))} for a {kind} source; "
                       f"allowed: {', '.join(allowed)}")
    for needed in SOURCE_FIELDS[kind]:
        if not isinstance(source.get(needed), str) or not source[needed]:
            fail(f"source.{needed}" if kind == "hf" else "source",
                 f"a {kind} source needs a non-empty string {needed!r}"
                 + ("; use a commit (40 hex digits) or, until one is known, a branch such as main"
                    if needed == "revision" else ""))
    if kind == "hf":
        if not hub.REPO.fullmatch(source["repo"]):
            fail("source.repo", f"{source['repo']!r} is not a hub repo: use owner/name, e.g. MCG-NJU/videomae-base")
        if not _REVISION.fullmatch(source["revision"]):
            fail("source.revision", f"{source['revision']!r} is not a branch, tag or commit")

    sha = raw["sha256"]
    if sha is not None and not _SHA256.fullmatch(sha):
        fail("sha256", f"must be null or 64 lower-case hex digits, got {sha!r}")

    expected = _expected_artifact(family, raw, source)
    if expected and raw["artifact"] != expected:
        fail("artifact", f"a {family} entry's artifact is named after its source: {expected}, "
                         f"got {raw['artifact']!r}")
    base = artifact_name(variant.name, dataset.key, raw["stage"], raw["frames"], raw["image_size"], generation.key)
    if not expected and raw["artifact"] != base and not raw["artifact"].startswith(base + "_"):
        fail("artifact", f"must be {base} or start with {base}_ (e.g. {base}_{raw['epochs']}e), "
                         f"got {raw['artifact']!r}")

    values = {key: raw.get(key) for key in _SCHEMA}
    values["source"] = Source(**source)
    values["family"] = family
    return Entry(**values)


def _expected_artifact(family: str, raw: dict, source: dict) -> str | None:
    """The one artifact name a family allows, or None where the release naming applies.
    Hub entries are named as `--checkpoint hf://...` names them: their head count and
    numerics are the repo's own, so they take no official release name."""
    if family == "hf":
        return hub.artifact_name(f"{hub.SCHEME}{source['repo']}")
    return None


def _check_unique(entries: list[Entry], path: Path) -> None:
    keys = {
        "name": lambda e: e.name,
        "artifact": lambda e: e.artifact,
        # find_entry looks entries up by these within a family, so two of them would make a
        # request ambiguous; across families the same weights are expected.
        "epochs": lambda e: (e.family, e.variant, e.dataset, e.stage, e.epochs),
        "release": lambda e: (e.family, e.variant, e.dataset, e.stage) if e.release else None,
    }
    for field, key in keys.items():
        seen: dict = {}
        for entry in entries:
            k = key(entry)
            if k is None:
                continue
            if k in seen:
                what = {"epochs": f"family ({entry.family}), variant, dataset, stage and epochs",
                        "release": f"family ({entry.family}), variant, dataset and stage as another release "
                                   "entry"}.get(field, field)
                raise RegistryError(f"{path.name}: entry {entry.name!r}, field {field!r}: same {what} "
                                    f"as entry {seen[k]!r}; each must be unique")
            seen[k] = entry.name


def _normalise(variant=None, dataset=None, stage=None):
    """Accept any case on the command line; answer unknown spellings with the accepted ones."""
    out = []
    for value, table, canon in ((variant, ALL_VARIANTS, str.upper), (dataset, DATASETS, str.lower),
                                (stage, STAGES, str.lower)):
        if value is None:
            out.append(None)
            continue
        key = canon(str(value))
        if key not in table:
            raise RegistryError(f"unknown {('variant', 'dataset', 'stage')[len(out)]} {value!r}; "
                                f"expected one of {', '.join(table)}")
        out.append(key)
    return out


def _check_family(family) -> None:
    if family is not None and family not in FAMILIES:
        raise RegistryError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def filter_entries(entries, variant=None, dataset=None, stage=None, release_only=False,
                   family=None) -> list[Entry]:
    """Entries matching every given criterion, in registry order."""
    variant, dataset, stage = _normalise(variant, dataset, stage)
    _check_family(family)
    return [
        e for e in entries
        if (family is None or e.family == family)
        and (variant is None or e.variant == variant)
        and (dataset is None or e.dataset == dataset)
        and (stage is None or e.stage == stage)
        and (not release_only or e.release)
    ]


def entry_named(entries, name: str, source="checkpoints.yaml") -> Entry:
    for entry in entries:
        if entry.name == name:
            return entry
    raise RegistryError(f"no entry named {name!r} in {source}; see vmae-convert --list")


def find_entry(entries, variant, dataset, stage, epochs=None, family=DEFAULT_FAMILY) -> Entry:
    """One entry of `family`: the given epochs, else the release entry, else the longest-trained one."""
    variant, dataset, stage = _normalise(variant, dataset, stage)
    matches = filter_entries(entries, variant, dataset, stage, family=family)
    if not matches:
        present = {e.variant for e in filter_entries(entries, dataset=dataset, stage=stage, family=family)}
        have = [v for v in ALL_VARIANTS if v in present]  # size order, as users know them
        where = "" if family == DEFAULT_FAMILY else f" in family {family}"
        raise RegistryError(f"no {stage} checkpoint{where} for variant {variant} on {dataset}; "
                            f"variants available there: {', '.join(have) or 'none'} (see vmae-convert --list)")
    if epochs is not None:
        for e in matches:
            if e.epochs == int(epochs):
                return e
        raise RegistryError(f"no {variant} {dataset} {stage} checkpoint trained {epochs} epochs; "
                            f"available: {', '.join(str(e.epochs) for e in matches)}")
    releases = [e for e in matches if e.release]
    return releases[0] if releases else max(matches, key=lambda e: e.epochs)


def shard(entries, spec: str) -> list[Entry]:
    """Part i of n ("i/n", 1-based) of the entries: round-robin over the names sorted, so every CI job
    agrees on the split without sharing state, and sizes differ by at most one."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m:
        raise RegistryError(f"bad shard spec {spec!r}; use i/n, e.g. 1/4 for the first of four shards")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise RegistryError(f"bad shard spec {spec!r}; need n >= 1 and 1 <= i <= n (i counts from 1)")
    return sorted(entries, key=lambda e: e.name)[i - 1::n]


def format_table(entries) -> str:
    """Plain-text table for `vmae-convert --list`."""
    if not entries:
        return "no matching checkpoints"
    header = ("name", "family", "variant", "dataset", "stage", "epochs", "top-1/top-5", "release", "source",
              "sha256", "artifact")
    rows = [header] + [
        (
            e.name, e.family, e.variant, e.dataset, e.stage, str(e.epochs),
            f"{e.top1:.1f}/{e.top5:.1f}" if e.top1 is not None and e.top5 is not None else "-",
            "yes" if e.release else "no",
            str(e.source),
            "verified" if e.verified else "unverified",
            e.artifact,
        )
        for e in entries
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def record_sha256(path, name: str, sha: str) -> Entry:
    """Set one entry's sha256 in the YAML file, changing only that line (comments and layout stay).

    The new text is validated before it replaces the file, and the replacement is atomic, so an
    interrupted or wrong edit never leaves a broken registry behind.
    """
    path = registry_path(path)
    sha = str(sha).lower()
    if not _SHA256.fullmatch(sha):
        raise RegistryError(f"cannot record sha256 {sha!r} for {name!r}: it must be 64 hex digits")
    entry_named(load_registry(path), name, path)

    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    head = re.compile(r"^(\s*)-\s+(name:)\s*(['\"]?)" + re.escape(name) + r"\3\s*(#.*)?$")
    target = None
    for i, line in enumerate(lines):
        m = head.match(line.rstrip("\r\n"))
        if m:
            dash_indent = len(m.group(1))
            key_indent = m.start(2)
            for j in range(i + 1, len(lines)):
                body = lines[j].rstrip("\r\n")
                stripped = body.lstrip()
                if not stripped or stripped.startswith("#"):
                    continue
                if len(body) - len(stripped) <= dash_indent:
                    break  # next entry, or the end of the list
                if len(body) - len(stripped) == key_indent and stripped.startswith("sha256:"):
                    target = j
                    break
            break
    if target is None:
        raise RegistryError(f"cannot find the sha256 line of entry {name!r} in {path}; keep '- name:' "
                            "first and a 'sha256:' line in each entry")

    old = lines[target]
    m = re.match(r"^(\s*sha256:\s*)([^#\r\n]*?)(\s+#[^\r\n]*)?(\r?\n)?$", old)
    # Quoted: an all-digit hash (or one like 12e45...) would otherwise load as a number.
    lines[target] = f'{m.group(1)}"{sha}"{m.group(3) or ""}{m.group(4) or ""}'

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write("".join(lines))
        updated = next(e for e in load_registry(tmp) if e.name == name)
        if updated.sha256 != sha:
            raise RegistryError(f"rewriting {path} did not set the sha256 of {name!r}; edit the file by hand")
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return updated
