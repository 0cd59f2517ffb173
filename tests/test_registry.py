"""checkpoints.yaml against the official facts, and the registry's validation, lookup and sharding.

Expectations come from the official MODEL_ZOO table and model-zoo.md, typed here independently of
the YAML, so a wrong id, accuracy or release flag in the YAML fails a test.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import random
import shutil
import stat

import pytest
import yaml

from converter.errors import RegistryError
from converter.registry import (DEFAULT_PATH, filter_entries, find_entry, format_table, load_registry,
                                record_sha256, shard)

# (dataset, variant, epochs, stage, Drive id, top-1, top-5) from the official MODEL_ZOO.md.
OFFICIAL = [
    ("k400", "S", 1600, "pt", "1nU-H1u3eJ-VuyCveU7v-WIOcAVxs5Hww", None, None),
    ("k400", "S", 1600, "ft", "1ygjLRm1kvs9mwGsP3lLxUExhRo6TWnrx", 79.0, 93.8),
    ("k400", "B", 800, "pt", "1JfrhN144Hdg7we213H1WxwR3lGYOlmIn", None, None),
    ("k400", "B", 800, "ft", "18EEgdXY9347yK3Yb28O-GxFMbk41F6Ne", 80.0, 94.4),
    ("k400", "B", 1600, "pt", "1tEhLyskjb755TJ65ptsrafUG2llSwQE1", None, None),
    ("k400", "B", 1600, "ft", "1MzwteHH-1yuMnFb8vRBQDvngV1Zl-d3z", 81.5, 95.1),
    ("k400", "L", 1600, "pt", "1qLOXWb_MGEvaI7tvuAe94CV7S2HXRwT3", None, None),
    ("k400", "L", 1600, "ft", "1jX1CiqxSkCfc94y8FRW1YGHy-GNvHCuD", 85.2, 96.8),
    ("k400", "H", 1600, "pt", "1AJQR1Rsi2N1pDn9tLyJ8DQrUREiBA1bO", None, None),
    ("k400", "H", 1600, "ft", "104ouJZxSVPSAm0LwJXd6IzjdA_RGLqZi", 86.6, 97.1),
    ("ssv2", "S", 2400, "pt", "1p_I1aaONOeUvRmRQw1UT3-L2H8XJClHu", None, None),
    ("ssv2", "S", 2400, "ft", "1ajlMrT06jiiM-5YjNI2X_UFyzsuYbbtZ", 66.8, 90.3),
    ("ssv2", "B", 800, "pt", "181hLvyrrPW2IOGA46fkxdJk0tNLIgdB2", None, None),
    ("ssv2", "B", 800, "ft", "1xZCiaPF4w7lYmLt5o1D5tIZyDdLtJAvH", 69.6, 92.0),
    ("ssv2", "B", 2400, "pt", "1I18dY_7rSalGL8fPWV82c0-foRUDzJJk", None, None),
    ("ssv2", "B", 2400, "ft", "1dt_59tBIyzdZd5Ecr22lTtzs_64MOZkT", 70.8, 92.4),
    ("ucf101", "B", 3200, "pt", "1BHev4meNgKM0o_8DMRbuzAsKSP3IpQ3o", None, None),
    ("ucf101", "B", 3200, "ft", "1MSyon6fPpKz7oqD6WDGPFK4k_Rbyb6fw", 91.3, 98.5),
]

# model-zoo.md rows (release artifacts, spelled as in its download links). K400 H PT is "?" there.
ZOO = {
    ("S", "k400", "pt"): "TFVideoMAE_S_K400_16x224_PT",
    ("S", "k400", "ft"): "TFVideoMAE_S_K400_16x224_FT",
    ("B", "k400", "pt"): "TFVideoMAE_B_K400_16x224_PT",
    ("B", "k400", "ft"): "TFVideoMAE_B_K400_16x224_FT",
    ("L", "k400", "pt"): "TFVideoMAE_L_K400_16x224_PT",
    ("L", "k400", "ft"): "TFVideoMAE_L_K400_16x224_FT",
    ("H", "k400", "ft"): "TFVideoMAE_H_K400_16x224_FT",
    ("S", "ssv2", "pt"): "TFVideoMAE_S_SSv2_16x224_PT",
    ("S", "ssv2", "ft"): "TFVideoMAE_S_SSv2_16x224_FT",
    ("B", "ssv2", "pt"): "TFVideoMAE_B_SSv2_16x224_PT",
    ("B", "ssv2", "ft"): "TFVideoMAE_B_SSv2_16x224_FT",
    ("B", "ucf101", "pt"): "TFVideoMAE_B_UCF_16x224_PT",
    ("B", "ucf101", "ft"): "TFVideoMAE_B_UCF_16x224_FT",
}
ZOO_EPOCHS = {"k400": 1600, "ssv2": 2400, "ucf101": 3200}  # "trained around N epochs" per section
CLASSES = {"k400": 400, "ssv2": 174, "ucf101": 101}
MASK_RATIO = {"k400": 0.9, "ssv2": 0.9, "ucf101": 0.75}
DECODER_DEPTH = {"S": 4, "B": 4, "L": 12, "H": 12}

# The 13 MCG-NJU hub repos, as transformers' convert_videomae_to_pytorch.py names and describes them
# ("short = pretrained only for 800 epochs instead of 1600/2400"); "finetuned" ones are classifiers.
HUB = {
    "videomae-small-finetuned-kinetics": ("S", "k400", "ft", 1600),
    "videomae-small-finetuned-ssv2": ("S", "ssv2", "ft", 2400),
    "videomae-base-short": ("B", "k400", "pt", 800),
    "videomae-base-short-finetuned-kinetics": ("B", "k400", "ft", 800),
    "videomae-base": ("B", "k400", "pt", 1600),
    "videomae-base-finetuned-kinetics": ("B", "k400", "ft", 1600),
    "videomae-large": ("L", "k400", "pt", 1600),
    "videomae-large-finetuned-kinetics": ("L", "k400", "ft", 1600),
    "videomae-huge-finetuned-kinetics": ("H", "k400", "ft", 1600),
    "videomae-base-short-ssv2": ("B", "ssv2", "pt", 800),
    "videomae-base-short-finetuned-ssv2": ("B", "ssv2", "ft", 800),
    "videomae-base-ssv2": ("B", "ssv2", "pt", 2400),
    "videomae-base-finetuned-ssv2": ("B", "ssv2", "ft", 2400),
}


@pytest.fixture(scope="module")
def entries():
    return load_registry(DEFAULT_PATH)


# ---------------------------------------------------------------- the real registry


def test_real_registry_has_every_official_checkpoint(entries):
    official = [e for e in entries if e.family == "official"]
    v2 = [e for e in entries if e.family == "v2"]  # tests/test_v2.py checks them
    assert len(official) == 18 and len(entries) == 18 + len(HUB) + len(v2) and len(v2) == 5
    got = {(e.dataset, e.variant, e.epochs, e.stage, e.source.type, e.source.id) for e in official}
    assert got == {(d, v, ep, s, "gdrive", fid) for d, v, ep, s, fid, _, _ in OFFICIAL}


def test_real_registry_has_every_mcg_nju_hub_repo(entries):
    hub = {e.source.repo: e for e in entries if e.family == "hf"}
    assert {repo.split("/")[0] for repo in hub} == {"MCG-NJU"}
    assert {repo.split("/")[1]: (e.variant, e.dataset, e.stage, e.epochs) for repo, e in hub.items()} == HUB
    official = {(e.variant, e.dataset, e.stage, e.epochs) for e in entries if e.family == "official"}
    for repo, e in hub.items():
        assert (e.variant, e.dataset, e.stage, e.epochs) in official  # the same trained weights
        assert e.source.type == "hf" and e.source.revision == "main"  # not pinned yet (see the YAML)
        assert e.artifact == "TFVideoMAE_hf_" + repo.split("/")[1] and e.name == "hf-" + repo.split("/")[1]
        assert (e.frames, e.tubelet, e.image_size) == (16, 2, 224) and (e.top1, e.top5) == (None, None)
        if e.stage == "ft":
            assert e.num_classes == CLASSES[e.dataset] and "finetuned" in repo
        else:
            assert (e.mask_ratio, e.decoder_depth) == (MASK_RATIO[e.dataset], DECODER_DEPTH[e.variant])
        # release: the longest-trained repo of its row, as for the official files
        assert e.release == (e.epochs == max(o.epochs for o in hub.values()
                                             if (o.variant, o.dataset, o.stage) == (e.variant, e.dataset, e.stage)))
        assert str(e.source) == f"hf://{repo}@main"


def test_real_registry_facts_per_entry(entries):
    by_key = {(e.dataset, e.variant, e.epochs, e.stage): e for e in entries if e.family == "official"}
    for d, v, ep, s, _, top1, top5 in OFFICIAL:
        e = by_key[(d, v, ep, s)]
        assert (e.frames, e.tubelet, e.image_size) == (16, 2, 224)
        assert (e.top1, e.top5) == (top1, top5), e.name
        if s == "ft":
            assert e.num_classes == CLASSES[d]
            assert (e.mask_ratio, e.decoder_depth) == (None, None)
        else:
            assert e.num_classes is None
            assert (e.mask_ratio, e.decoder_depth) == (MASK_RATIO[d], DECODER_DEPTH[v])


def test_release_entries_are_exactly_the_model_zoo_rows(entries):
    releases = {(e.variant, e.dataset, e.stage): e for e in entries if e.release and e.family == "official"}
    assert {k: e.artifact for k, e in releases.items()} == ZOO
    for (_, dataset, _), e in releases.items():
        assert e.epochs == ZOO_EPOCHS[dataset]


def test_non_release_entries(entries):
    others = {e.name: e for e in entries if not e.release and e.family == "official"}
    assert {(e.variant, e.dataset, e.stage, e.epochs) for e in others.values()} == {
        ("B", "k400", "pt", 800), ("B", "k400", "ft", 800), ("B", "ssv2", "pt", 800),
        ("B", "ssv2", "ft", 800), ("H", "k400", "pt", 1600)}
    for e in others.values():
        if e.epochs == 800:
            assert e.artifact == ZOO[(e.variant, e.dataset, e.stage)] + "_800e"
    h_pt = next(e for e in others.values() if e.variant == "H")
    assert h_pt.artifact == "TFVideoMAE_H_K400_16x224_PT"
    assert "89" in h_pt.note and "weight" in h_pt.note.lower()


def test_registry_path_from_environment(tmp_path, monkeypatch):
    doc = {"checkpoints": [_ft_entry()]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("VMAE_REGISTRY", str(tmp_path / "r.yaml"))
    assert [e.name for e in load_registry()] == ["k400-b-1600-ft"]


# ---------------------------------------------------------------- validation


def _ft_entry():
    return {
        "name": "k400-b-1600-ft", "variant": "B", "dataset": "k400", "stage": "ft", "epochs": 1600,
        "num_classes": 400, "frames": 16, "tubelet": 2, "image_size": 224, "top1": 81.5, "top5": 95.1,
        "source": {"type": "gdrive", "id": "abc"}, "sha256": None, "release": True,
        "artifact": "TFVideoMAE_B_K400_16x224_FT",
    }


def _pt_entry():
    return {
        "name": "ucf101-b-3200-pt", "variant": "B", "dataset": "ucf101", "stage": "pt", "epochs": 3200,
        "frames": 16, "tubelet": 2, "image_size": 224, "mask_ratio": 0.75, "decoder_depth": 4,
        "source": {"type": "url", "url": "http://127.0.0.1/x.pth"}, "sha256": "ab" * 32, "release": False,
        "artifact": "TFVideoMAE_B_UCF_16x224_PT_3200e",
    }


def _write(tmp_path, entries, name="reg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"checkpoints": entries}, sort_keys=False))
    return path


def test_minimal_valid_registry_loads(tmp_path):
    # The base of every invalid case below: it must be valid, so each failure is the mutation's.
    loaded = load_registry(_write(tmp_path, [_ft_entry(), _pt_entry()]))
    assert [e.name for e in loaded] == ["k400-b-1600-ft", "ucf101-b-3200-pt"]
    assert loaded[1].source.url == "http://127.0.0.1/x.pth" and loaded[1].sha256 == "ab" * 32


def _set(which, field, value):
    def mutate(ft, pt):
        (ft if which == "ft" else pt)[field] = value
    return mutate


def _drop(which, field):
    def mutate(ft, pt):
        del (ft if which == "ft" else pt)[field]
    return mutate


BAD = [
    ("unknown field", _set("ft", "colour", "red"), "k400-b-1600-ft", "colour"),
    ("missing field", _drop("ft", "epochs"), "k400-b-1600-ft", "epochs"),
    ("missing sha256 key", _drop("pt", "sha256"), "ucf101-b-3200-pt", "sha256"),
    ("epochs as string", _set("ft", "epochs", "1600"), "k400-b-1600-ft", "epochs"),
    ("epochs as bool", _set("ft", "epochs", True), "k400-b-1600-ft", "epochs"),
    ("release as string", _set("ft", "release", "yes"), "k400-b-1600-ft", "release"),
    ("release as int", _set("ft", "release", 1), "k400-b-1600-ft", "release"),
    ("top1 as string", _set("ft", "top1", "81.5"), "k400-b-1600-ft", "top1"),
    ("top1 over 100", _set("ft", "top1", 181.5), "k400-b-1600-ft", "top1"),
    ("source not a mapping", _set("ft", "source", "gdrive:abc"), "k400-b-1600-ft", "source"),
    ("source bad type", _set("ft", "source", {"type": "ftp", "id": "x"}), "k400-b-1600-ft", "source"),
    ("gdrive without id", _set("ft", "source", {"type": "gdrive"}), "k400-b-1600-ft", "source"),
    ("bad variant", _set("ft", "variant", "XL"), "k400-b-1600-ft", "variant"),
    ("lower-case variant", _set("ft", "variant", "b"), "k400-b-1600-ft", "variant"),
    ("bad dataset", _set("ft", "dataset", "imagenet"), "k400-b-1600-ft", "dataset"),
    ("bad stage", _set("pt", "stage", "finetune"), "ucf101-b-3200-pt", "stage"),
    ("num_classes of another dataset", _set("ft", "num_classes", 174), "k400-b-1600-ft", "num_classes"),
    ("ft without num_classes", _drop("ft", "num_classes"), "k400-b-1600-ft", "num_classes"),
    ("pt with num_classes", _set("pt", "num_classes", 101), "ucf101-b-3200-pt", "num_classes"),
    ("ft with decoder", _set("ft", "decoder_depth", 4), "k400-b-1600-ft", "decoder_depth"),
    ("pt mask ratio of another dataset", _set("pt", "mask_ratio", 0.9), "ucf101-b-3200-pt", "mask_ratio"),
    ("pt decoder depth wrong", _set("pt", "decoder_depth", 12), "ucf101-b-3200-pt", "decoder_depth"),
    ("sha256 too short", _set("pt", "sha256", "ab" * 31), "ucf101-b-3200-pt", "sha256"),
    ("sha256 not hex", _set("pt", "sha256", "zz" * 32), "ucf101-b-3200-pt", "sha256"),
    ("artifact of another model", _set("ft", "artifact", "TFVideoMAE_S_K400_16x224_FT"), "k400-b-1600-ft",
     "artifact"),
    ("name with spaces", _set("ft", "name", "k400 b"), "k400 b", "name"),
    ("frames not a multiple of tubelet", _set("ft", "frames", 15), "k400-b-1600-ft", "frames"),
    ("negative epochs", _set("ft", "epochs", -1), "k400-b-1600-ft", "epochs"),
]


@pytest.mark.parametrize("mutate, entry, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_entry_is_rejected_naming_entry_and_field(tmp_path, mutate, entry, field):
    ft, pt = _ft_entry(), _pt_entry()
    mutate(ft, pt)
    with pytest.raises(RegistryError) as err:
        load_registry(_write(tmp_path, [ft, pt]))
    msg = str(err.value)
    assert repr(entry) in msg and repr(field) in msg, msg
    assert "\n" not in msg


def _hub_entry():
    """The hub copy of _ft_entry's weights: same variant, dataset, stage and epochs, another family."""
    return {**_ft_entry(), "name": "hf-videomae-base-finetuned-kinetics", "family": "hf", "top1": None,
            "top5": None, "source": {"type": "hf", "repo": "MCG-NJU/videomae-base-finetuned-kinetics",
                                     "revision": "main"},
            "artifact": "TFVideoMAE_hf_videomae-base-finetuned-kinetics"}


def _source(**changes):
    def mutate(hub):
        hub["source"] = {k: v for k, v in {**hub["source"], **changes}.items() if v is not None}
    return mutate


def _hub(field, value):
    def mutate(hub):
        hub[field] = value
    return mutate


BAD_HUB = [
    ("unknown family", _hub("family", "v3"), "family", "unknown family 'v3'; expected one of official, hf"),
    ("family not a string", _hub("family", 2), "family", "must be a string"),
    ("bad repo", _source(repo="videomae-base"), "source.repo", "is not a hub repo: use owner/name"),
    ("repo with spaces", _source(repo="MCG NJU/videomae"), "source.repo", "is not a hub repo"),
    ("missing revision", _source(revision=None), "source.revision", "needs a non-empty string 'revision'"),
    ("empty revision", _source(revision=""), "source.revision", "needs a non-empty string 'revision'"),
    ("revision with @", _source(revision="main@x"), "source.revision", "is not a branch, tag or commit"),
    ("missing repo", _source(repo=None), "source.repo", "needs a non-empty string 'repo'"),
    ("gdrive key on a hub source", _source(id="abc"), "source", "unknown keys ['id'] for a hf source"),
    ("hub entry from Drive", _hub("source", {"type": "gdrive", "id": "abc"}), "source",
     "type must be one of hf for hf entries, got 'gdrive'"),
    ("hub source in the official family", _hub("family", "official"), "source",
     "hub repos go in entries with family: hf"),
    ("release name for a hub entry", _hub("artifact", "TFVideoMAE_B_K400_16x224_FT"), "artifact",
     "named after its source: TFVideoMAE_hf_videomae-base-finetuned-kinetics"),
    ("hub classes of another dataset", _hub("num_classes", 174), "num_classes", "k400 has 400 classes"),
]


@pytest.mark.parametrize("mutate, field, says", [b[1:] for b in BAD_HUB], ids=[b[0] for b in BAD_HUB])
def test_invalid_hub_entry_is_one_error_naming_entry_and_field(tmp_path, mutate, field, says):
    hub = _hub_entry()
    assert len(load_registry(_write(tmp_path, [_ft_entry(), hub]))) == 2  # valid before the mutation
    mutate(hub)
    with pytest.raises(RegistryError) as err:
        load_registry(_write(tmp_path, [_ft_entry(), hub]))
    msg = str(err.value)
    assert msg.startswith(f"reg.yaml: entry 'hf-videomae-base-finetuned-kinetics', field {field!r}: "), msg
    assert says in msg and "\n" not in msg, msg


def test_hub_entries_are_unique_within_their_family(tmp_path):
    hub = _hub_entry()
    loaded = load_registry(_write(tmp_path, [_ft_entry(), hub]))  # same weights, two families: fine
    assert [e.family for e in loaded] == ["official", "hf"] and all(e.release for e in loaded)
    assert loaded[1].source.revision == "main" and str(loaded[1].source).endswith("@main")
    twin = {**_hub_entry(), "name": "hf-twin", "release": False,
            "source": {"type": "hf", "repo": "someone/videomae-twin", "revision": "a" * 40},
            "artifact": "TFVideoMAE_hf_videomae-twin"}
    with pytest.raises(RegistryError, match=r"entry 'hf-twin', field 'epochs': same family \(hf\), variant"):
        load_registry(_write(tmp_path, [_ft_entry(), hub, twin]))
    twin.update(epochs=800)
    twin["release"] = True
    with pytest.raises(RegistryError, match=r"entry 'hf-twin', field 'release': same family \(hf\)"):
        load_registry(_write(tmp_path, [_ft_entry(), hub, twin]))
    twin["release"] = False
    assert len(load_registry(_write(tmp_path, [_ft_entry(), hub, twin]))) == 3


def test_duplicate_name_and_artifact(tmp_path):
    a, b = _ft_entry(), _ft_entry()
    b["epochs"], b["release"], b["artifact"] = 800, False, "TFVideoMAE_B_K400_16x224_FT_800e"
    with pytest.raises(RegistryError, match=r"'k400-b-1600-ft'.*'name'"):
        load_registry(_write(tmp_path, [a, b]))
    b["name"], b["artifact"] = "k400-b-800-ft", a["artifact"]
    with pytest.raises(RegistryError, match=r"'k400-b-800-ft'.*'artifact'"):
        load_registry(_write(tmp_path, [a, b]))
    b["artifact"] = "TFVideoMAE_B_K400_16x224_FT_800e"
    assert len(load_registry(_write(tmp_path, [a, b]))) == 2


def test_two_release_entries_for_one_model_rejected(tmp_path):
    a, b = _ft_entry(), _ft_entry()
    b.update(name="other", epochs=800, artifact="TFVideoMAE_B_K400_16x224_FT_800e")
    with pytest.raises(RegistryError, match=r"'other'.*'release'"):
        load_registry(_write(tmp_path, [a, b]))


def test_file_level_errors(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoints:\n  - name: [unclosed\n")
    with pytest.raises(RegistryError, match="not valid YAML.*line"):
        load_registry(bad)
    bad.write_text("checkpoints:\n  - name: a\n    name: b\n")
    with pytest.raises(RegistryError, match="duplicate key 'name'"):
        load_registry(bad)
    bad.write_text("entries: []\n")
    with pytest.raises(RegistryError, match="'checkpoints'"):
        load_registry(bad)


# ---------------------------------------------------------------- lookups


def test_find_entry_defaults_to_release_then_longest(entries):
    assert find_entry(entries, "B", "ssv2", "ft").name == "ssv2-b-2400-ft"
    assert find_entry(entries, "b", "SSV2", "FT").name == "ssv2-b-2400-ft"  # CLI spelling is forgiving
    assert find_entry(entries, "B", "k400", "pt", epochs=800).epochs == 800
    # K400 H PT has no release entry: the longest-trained one is the default.
    assert find_entry(entries, "H", "k400", "pt").name == "k400-h-1600-pt"
    no_release = [dataclasses.replace(e, release=False) for e in entries]
    assert find_entry(no_release, "B", "k400", "ft").epochs == 1600


def test_find_entry_picks_within_a_family(entries):
    assert find_entry(entries, "B", "k400", "ft").family == "official"  # fetching stays official by default
    hub = find_entry(entries, "B", "k400", "ft", family="hf")
    assert hub.name == "hf-videomae-base-finetuned-kinetics" and hub.source.type == "hf"
    assert find_entry(entries, "B", "k400", "pt", epochs=800, family="hf").name == "hf-videomae-base-short"
    with pytest.raises(RegistryError, match="no ft checkpoint in family hf for variant B on ucf101"):
        find_entry(entries, "B", "ucf101", "ft", family="hf")
    with pytest.raises(RegistryError, match="unknown family 'v9'"):
        filter_entries(entries, family="v9")


def test_find_entry_errors(entries):
    with pytest.raises(RegistryError, match="variant L on ssv2.*S, B"):
        find_entry(entries, "L", "ssv2", "ft")
    with pytest.raises(RegistryError, match="800, 2400"):
        find_entry(entries, "B", "ssv2", "pt", epochs=999)
    with pytest.raises(RegistryError, match="unknown variant 'X'"):
        find_entry(entries, "X", "k400", "ft")
    with pytest.raises(RegistryError, match="unknown dataset"):
        find_entry(entries, "B", "imagenet", "ft")


def test_filter_entries(entries):
    assert len(filter_entries(entries, release_only=True, family="official")) == len(ZOO)
    assert len(filter_entries(entries, release_only=True, family="hf")) == 9
    assert {e.family for e in filter_entries(entries, family="hf")} == {"hf"}
    assert {e.name for e in filter_entries(entries, dataset="ucf101")} == {"ucf101-b-3200-pt", "ucf101-b-3200-ft"}
    pt_b = filter_entries(entries, variant="b", stage="pt")
    assert {(e.dataset, e.epochs) for e in pt_b} == {("k400", 800), ("k400", 1600), ("ssv2", 800),
                                                     ("ssv2", 2400), ("ucf101", 3200)}
    assert filter_entries(entries) == entries


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", range(1, 21))
def test_shards_are_disjoint_complete_balanced_and_deterministic(entries, n):
    parts = [shard(entries, f"{i}/{n}") for i in range(1, n + 1)]
    names = [e.name for p in parts for e in p]
    assert sorted(names) == sorted(e.name for e in entries)  # complete, and no name twice
    assert len(set(names)) == len(names)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    shuffled = entries[:]
    random.Random(n).shuffle(shuffled)
    assert [shard(shuffled, f"{i}/{n}") for i in range(1, n + 1)] == parts  # input order does not matter


def test_shard_is_round_robin_over_sorted_names(entries):
    ordered = sorted(e.name for e in entries)
    assert [e.name for e in shard(entries, "2/3")] == ordered[1::3]
    assert [e.name for e in shard(entries, " 1 / 1 ")] == ordered


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "a/b", "1", "", "-1/3", "1/3/4", "1.5/3"])
def test_bad_shard_specs(entries, spec):
    with pytest.raises(RegistryError, match="shard spec"):
        shard(entries, spec)


# ---------------------------------------------------------------- table


def test_format_table(entries):
    verified = dataclasses.replace(entries[1], sha256="cd" * 32)
    table = format_table([entries[0], verified])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["name", "family", "variant", "dataset", "stage", "epochs", "top-1/top-5", "release",
                                "source", "sha256", "artifact"]
    assert lines[2].split() == ["k400-s-1600-pt", "official", "S", "k400", "pt", "1600", "-", "yes",
                                "gdrive:1nU-H1u3eJ-VuyCveU7v-WIOcAVxs5Hww", "unverified",
                                "TFVideoMAE_S_K400_16x224_PT"]
    assert lines[3].split()[6] == "79.0/93.8" and lines[3].split()[9] == "verified"
    hub = next(e for e in entries if e.name == "hf-videomae-base-ssv2")
    assert format_table([hub]).splitlines()[2].split() == [
        "hf-videomae-base-ssv2", "hf", "B", "ssv2", "pt", "2400", "-", "yes", "hf://MCG-NJU/videomae-base-ssv2@main",
        "unverified", "TFVideoMAE_hf_videomae-base-ssv2"]
    assert format_table([]) == "no matching checkpoints"


# ---------------------------------------------------------------- record_sha256


def test_record_sha256_round_trip(tmp_path):
    path = tmp_path / "checkpoints.yaml"
    shutil.copy(DEFAULT_PATH, path)
    os.chmod(path, 0o644)
    before_text = path.read_text()
    before = {e.name: e for e in load_registry(path)}
    sha = "0123456789abcdef" * 4

    updated = record_sha256(path, "ssv2-b-800-ft", sha.upper())
    assert updated.sha256 == sha

    after = {e.name: e for e in load_registry(path)}
    assert after["ssv2-b-800-ft"] == dataclasses.replace(before["ssv2-b-800-ft"], sha256=sha)
    assert {k: v for k, v in after.items() if k != "ssv2-b-800-ft"} == \
           {k: v for k, v in before.items() if k != "ssv2-b-800-ft"}
    old_lines, new_lines = before_text.splitlines(), path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert len(old_lines) == len(new_lines) and len(changed) == 1  # comments and layout untouched
    assert changed[0][1].strip() == f'sha256: "{sha}"'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.yaml"]  # no temp file left

    # Overwriting works, and an all-digit hash stays a string (it would load as an int unquoted).
    record_sha256(path, "ssv2-b-800-ft", "1" * 64)
    assert {e.name: e for e in load_registry(path)}["ssv2-b-800-ft"].sha256 == "1" * 64


def test_record_sha256_keeps_trailing_comment(tmp_path):
    ft = _ft_entry()
    path = tmp_path / "r.yaml"
    text = yaml.safe_dump({"checkpoints": [ft, _pt_entry()]}, sort_keys=False)
    path.write_text(text.replace("sha256: null", "sha256: null  # not verified yet"))
    record_sha256(path, "k400-b-1600-ft", "ef" * 32)
    assert f'sha256: "{"ef" * 32}"  # not verified yet' in path.read_text()
    assert load_registry(path)[1].sha256 == "ab" * 32  # the other entry is untouched


def test_record_sha256_errors_leave_file_unchanged(tmp_path):
    path = tmp_path / "checkpoints.yaml"
    shutil.copy(DEFAULT_PATH, path)
    text = path.read_text()
    with pytest.raises(RegistryError, match="no entry named 'nope'"):
        record_sha256(path, "nope", "ab" * 32)
    with pytest.raises(RegistryError, match="64 hex"):
        record_sha256(path, "k400-s-1600-ft", "xyz")
    # An entry whose name is not the first key cannot be located safely: refuse, do not guess.
    odd = copy.deepcopy(_ft_entry())
    odd = {"variant": odd.pop("variant"), **odd}
    reg = _write(tmp_path, [odd], name="odd.yaml")
    odd_text = reg.read_text()
    with pytest.raises(RegistryError, match="cannot find the sha256 line"):
        record_sha256(reg, "k400-b-1600-ft", "ab" * 32)
    assert path.read_text() == text and reg.read_text() == odd_text
