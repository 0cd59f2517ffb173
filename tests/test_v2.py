"""VideoMAE V2: the variant table against the upstream numbers, ViT-g's shape end to end (tiny),
float16 files, a V2 file given as v1 (and the other way round), and K710 heads read as K400."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_G_OVERRIDES, TINY_V2_FT, TINY_V2_PT, run_cli

from converter import families
from converter.checkpoint import describe, read_checkpoint
from converter.errors import VMAEError
from converter.parity import keras_inputs, make_video, run_reference
from converter.pipeline import ConvertOptions, _follow_file_generation, convert, default_name
from converter.synthetic import synthetic_state_dict, write_synthetic_checkpoint
from converter.variants import (V2_VARIANTS, VARIANTS, arch_config, artifact_name, file_generation,
                                generation_for, labels)
from pt_reference import build_reference

# Typed from OpenGVLab/VideoMAEv2 models/modeling_finetune.py and modeling_pretrain.py (commit 29eab1e):
# vit_*_patch*_224 / pretrain_videomae_*_patch*_224, and --decoder_depth 4 of every scripts/pretrain/*.sh.
UPSTREAM_V2 = {
    #     patch embed depth heads mlp_ratio dec_embed dec_heads dec_depth
    "S": (16, 384, 12, 6, 4, 192, 3, 4),
    "B": (16, 768, 12, 12, 4, 384, 6, 4),
    "L": (16, 1024, 24, 16, 4, 512, 8, 4),
    "H": (16, 1280, 32, 16, 4, 512, 8, 4),
    "G": (14, 1408, 40, 16, 48 / 11, 512, 8, 4),
}


@pytest.mark.parametrize("variant", list(UPSTREAM_V2))
def test_v2_table_is_the_upstream_one(variant):
    patch, embed, depth, heads, ratio, dec_embed, dec_heads, dec_depth = UPSTREAM_V2[variant]
    cfg = arch_config(variant, "hybrid", "pt", "v2")
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == (patch, embed, depth, heads)
    assert (cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_depth) == (dec_embed, dec_heads, dec_depth)
    assert (cfg.mlp_dim, cfg.decoder_mlp_dim) == (int(embed * ratio), int(dec_embed * ratio))
    assert set(V2_VARIANTS) == set(UPSTREAM_V2)


def test_vit_g_sizes_match_the_released_files():
    """The hidden sizes from the exact 48/11 (a rounded 4.3636 gives 6143), and parameter counts that,
    at 4 bytes (pre-training, float32) and 2 bytes (K710, float16), give the released file sizes."""
    ft, pt = arch_config("G", "k710", "ft", "v2"), arch_config("G", "hybrid", "pt", "v2")
    assert (ft.mlp_dim, pt.decoder_mlp_dim) == (6144, 2234)
    assert int(1408 * 4.3636) == 6144 - 1
    assert ft.num_patches == 2048 and ft.patch_pixels == 1176
    assert pt.num_masked == 8 * 230 and pt.num_visible == 208
    # vit_g_hybrid_pt_1200e.pth is 4,105,433,973 bytes: 4 bytes a parameter + ~0.2 MB of container
    assert 0 < 4_105_433_973 - 4 * pt.num_params < 300_000
    # vit_g_hybrid_pt_1200e_k710_ft.pth is 2.03 GB in float16
    assert abs(2 * ft.num_params - 2.025e9) < 0.01e9
    assert VARIANTS["H"].decoder_embed_dim == 640 and V2_VARIANTS["H"].decoder_embed_dim == 512


def test_generations_keep_their_own_datasets_and_names():
    assert generation_for("G") == "v2" and generation_for("S", "k710") == "v2"
    assert generation_for("S", "hybrid", "pt") == "v2" and generation_for("S", "k400") is None
    assert arch_config("G", "ssv2").patch_size == 14  # the only generation with a ViT-g
    with pytest.raises(ValueError, match="VideoMAE has no fine-tuned k710"):
        arch_config("S", "k710", "ft", "v1")
    with pytest.raises(ValueError, match="VideoMAE V2 has no pre-trained k400"):
        arch_config("S", "k400", "pt", "v2")
    with pytest.raises(ValueError, match="--family v2"):
        arch_config("G", "k400", "ft", "v1")
    assert artifact_name("G", "ssv2", "ft", generation="v2") == "TFVideoMAE2_G_SSv2_16x224_FT"
    assert artifact_name("B", "ssv2", "ft") == "TFVideoMAE_B_SSv2_16x224_FT"
    assert default_name(ConvertOptions(variant="B", dataset="ssv2", family="v2")) == "TFVideoMAE2_B_SSv2_16x224_FT"
    assert default_name(ConvertOptions(variant="G", dataset="hybrid", stage="pt")) == "TFVideoMAE2_G_Hybrid_16x224_PT"


def _shapes_only(cfg) -> dict:
    """The state dict of `cfg` as zero-stride arrays: real shapes, no memory (ViT-H has 0.6 G values)."""
    with torch.device("meta"):
        state = build_reference(cfg).state_dict()
    return {k: np.broadcast_to(np.float32(0.5), tuple(t.shape)) for k, t in state.items()}


def test_a_v2_vit_h_given_as_v1_is_converted_as_v2():
    tensors = _shapes_only(arch_config("H", "hybrid", "pt", "v2"))
    assert file_generation(describe(tensors))[0] == "v2"
    opts, notes = ConvertOptions(variant="H", dataset="k400", stage="pt", checkpoint="x.pth"), []
    _follow_file_generation(opts, tensors, notes)
    assert (opts.family, opts.dataset) == ("v2", "hybrid")
    assert "512 wide is VideoMAE V2's" in notes[0]
    assert default_name(opts) == "TFVideoMAE2_H_Hybrid_16x224_PT"


def test_a_v1_vit_h_given_as_v2_is_converted_as_v1_and_an_explicit_wrong_family_is_refused():
    tensors = _shapes_only(arch_config("H", "k400", "pt", "v1"))
    opts, notes = ConvertOptions(variant="H", dataset="k400", stage="pt", checkpoint="x.pth"), []
    _follow_file_generation(opts, tensors, notes)  # v1 asked, v1 found: nothing to do
    assert opts.family is None and notes == []
    explicit = ConvertOptions(variant="H", dataset="hybrid", stage="pt", checkpoint="x.pth", family="v2")
    with pytest.raises(VMAEError, match="640 wide is VideoMAE v1's"):
        _follow_file_generation(explicit, tensors, [])


def test_float16_synthetic_file_is_read_as_float32_tensor_by_tensor(tmp_path):
    path = write_synthetic_checkpoint(TINY_V2_FT, tmp_path / "v2.pth", seed=3, dtype="float16")
    raw = torch.load(path, weights_only=True)["model"]
    assert {t.dtype for t in raw.values()} == {torch.float16}
    loaded = read_checkpoint(path)
    assert {a.dtype for a in loaded.tensors.values()} == {np.dtype("float32")}
    assert any("stored as float16" in n and "converted to float32" in n for n in loaded.notes)
    for key, value in raw.items():  # the upcast is exact
        assert np.array_equal(loaded.tensors[key], value.float().numpy())


@pytest.mark.parametrize("cfg", [TINY_V2_FT, TINY_V2_PT], ids=["ft", "pt"])
def test_tiny_vit_g_shape_converts_with_parity(cfg, tmp_path):
    report = convert(config=cfg, synthetic=True, family="v2", output_dir=str(tmp_path), name="v2", xla=False)
    assert report["passed"], report["checks"]
    assert report["family"] == "v2" and report["config"]["patch_size"] == 14
    assert report["config"]["mlp_ratio"] == 48 / 11
    assert report["checks"]["float64"]["passed"]
    stored = "stored as float16" if not cfg.is_pretrain else None  # released V2 FT files are float16
    assert (stored is None) or any(stored in n for n in report["checkpoint"]["notes"])


def test_cli_converts_vit_g_as_v2_by_its_name(tmp_path):
    env = {"VMAE_TEST_ARCH_OVERRIDES": json.dumps(TINY_G_OVERRIDES)}
    result = run_cli("--variant", "G", "--dataset", "ssv2", "--synthetic", "--output-dir", str(tmp_path), "--quiet",
                     "--no-xla", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "TFVideoMAE2_G_SSv2_16x224_FT.parity.json").read_text())
    assert report["passed"] and report["generation"] == "VideoMAE V2"
    assert report["config"]["patch_size"] == 14 and report["config"]["num_classes"] == 174
    assert (tmp_path / "TFVideoMAE2_G_SSv2_16x224_FT.weights.h5").is_file()


def test_remapped_k710_head_equals_the_full_heads_k400_rows(tmp_path):
    """Independent of the remap code path: the full 710-class reference, its logits picked by
    VideoMAE V2's label_710to400 list, against the published remapped Keras model."""
    cfg = arch_config("S", "k710", "ft", "v2", embed_dim=48, depth=2, num_heads=2, num_frames=4, image_size=32)
    ckpt = write_synthetic_checkpoint(cfg, tmp_path / "k710.pth", seed=5, dtype="float16")
    report = convert(variant="S", dataset="k710", family="v2", checkpoint=str(ckpt), config=cfg,
                     remap_head="k400", output_dir=str(tmp_path / "out"), name="remapped", xla=False)
    assert report["passed"] and report["config"]["num_classes"] == 400
    assert report["labels"][:2] == ["abseiling", "air drumming"] and len(report["labels"]) == 400

    full = build_reference(cfg)
    full.load_state_dict({k: v.float() for k, v in torch.load(ckpt, weights_only=True)["model"].items()})
    video = make_video(cfg, 2, seed=9)
    expected = run_reference(full, video, None)[:, labels.k710_index("k400")]

    from tf_models import build_model

    model = build_model(cfg.with_(num_classes=400))
    model.load_weights(tmp_path / "out" / "remapped.weights.h5")
    got = np.asarray(model(keras_inputs(video, None), training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, run_reference(full, video, None)[:, :400], atol=1e-3)  # the map moves rows


def test_remap_of_a_head_that_is_not_k710_is_one_clear_line(tmp_path):
    env = {"VMAE_TEST_ARCH_OVERRIDES": json.dumps(TINY_G_OVERRIDES)}
    result = run_cli("--variant", "G", "--dataset", "ssv2", "--synthetic", "--remap-head", "k400",
                     "--output-dir", str(tmp_path), env=env)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "K710 head of 710 classes" in lines[0] and "174" in lines[0], result.stderr
    assert not list(tmp_path.glob("*.weights.h5"))


def test_v2_family_reads_the_official_keys():
    """V2 keeps v1's module names: the same table maps every tensor of a V2 ViT-g state dict."""
    state = synthetic_state_dict(TINY_V2_PT, 0)
    rules = families.v2.rules(TINY_V2_PT)
    assert all(any(r.match_source(k) is not None for r in rules) for k in state)
    assert families.v2.rules is families.official.rules
    assert families.get("v2").GENERATION == "v2" and not families.v2.claims("x.pth", None)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "module.backbone."])
def test_wrapper_prefixes_are_stripped_even_nested(prefix):
    from converter.checkpoint import unwrap

    state = synthetic_state_dict(TINY_V2_FT, 0)
    loaded = unwrap({"module": {prefix + k: v for k, v in state.items()}})
    assert set(loaded.tensors) == set(state) and loaded.container == "module"
    assert any(prefix in n for n in loaded.notes)


def test_cos_attention_file_is_refused_by_the_accounting(tmp_path):
    """V2's CosAttention adds `attn.scale` [heads, 1, 1] per block; no released file uses it, and the
    Keras model has no such weight: the key check names it instead of converting something else."""
    state = synthetic_state_dict(TINY_V2_FT, 0)
    state.update({f"blocks.{i}.attn.scale": torch.full((2, 1, 1), 2.3) for i in range(TINY_V2_FT.depth)})
    path = tmp_path / "cos.pth"
    torch.save({"model": state}, path)
    with pytest.raises(VMAEError, match=r"attn\.scale"):
        convert(config=TINY_V2_FT, checkpoint=str(path), family="v2", output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.weights.h5"))


# ---------------------------------------------------------------------------------- the zoo

def _v2_zoo_entries():
    import yaml
    from conftest import REPO

    data = yaml.safe_load((REPO / "checkpoints.yaml").read_text())
    return [e for e in data["checkpoints"] if e.get("family") == "v2"]


def test_zoo_lists_the_five_open_v2_files():
    from converter.registry import filter_entries, find_entry, load_registry

    entries = filter_entries(load_registry(), family="v2")
    assert {(e.variant, e.dataset, e.stage) for e in entries} == {
        ("G", "hybrid", "pt"), ("G", "k710", "ft"), ("G", "ssv2", "ft"), ("S", "k710", "ft"), ("B", "k710", "ft")}
    assert all(e.artifact.startswith("TFVideoMAE2_") for e in entries)
    assert find_entry(load_registry(), "G", "ssv2", "ft", family="v2").artifact == "TFVideoMAE2_G_SSv2_16x224_FT"


V2_BAD = [  # (field to set, value, field named in the error)
    ("variant", "X", "variant"),
    ("dataset", "k400", "dataset"),  # V2 pre-trained on UnlabeledHybrid only
    ("decoder_depth", 12, "decoder_depth"),  # every V2 decoder is 4 deep
    ("artifact", "TFVideoMAE_G_Hybrid_16x224_PT", "artifact"),  # a v1 name for a V2 file
]


@pytest.mark.parametrize("field, value, named", V2_BAD, ids=[b[0] for b in V2_BAD])
def test_v2_entries_are_validated_against_the_v2_table(tmp_path, field, value, named):
    import yaml

    from converter.errors import RegistryError
    from converter.registry import load_registry

    entry = next(e for e in _v2_zoo_entries() if e["stage"] == "pt")
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump({"checkpoints": [entry]}, sort_keys=False))
    assert load_registry(path)[0].variant == "G"  # valid as it is: each failure is the change's
    path.write_text(yaml.safe_dump({"checkpoints": [{**entry, field: value}]}, sort_keys=False))
    with pytest.raises(RegistryError, match=rf"'{entry['name']}', field '{named}'"):
        load_registry(path)


def test_g_is_not_an_official_variant(tmp_path):
    import yaml

    from converter.errors import RegistryError
    from converter.registry import load_registry

    entry = {k: v for k, v in next(e for e in _v2_zoo_entries() if e["stage"] == "pt").items() if k != "family"}
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump({"checkpoints": [entry]}, sort_keys=False))
    with pytest.raises(RegistryError, match="unknown VideoMAE variant 'G'"):
        load_registry(path)


def test_all_family_v2_converts_the_v2_zoo(tmp_path):
    """`vmae-convert --all --family v2 --synthetic`: ViT-g (patch 14) and the distilled ViT-S (patch 16),
    both made tiny; their clips (112 pixels, 2 frames) are cut by 14 and by 16."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import REPO

    keep = {"v2-g-hybrid-1200-pt", "v2-g-k710-1200-ft", "v2-s-k710-distilled-ft"}
    entries = [e for e in _v2_zoo_entries() if e["name"] in keep]
    (tmp_path / "reg.yaml").write_text(yaml.safe_dump({"checkpoints": entries}, sort_keys=False))
    tiny = {**TINY_G_OVERRIDES, "image_size": 112, "num_frames": 2}
    env = {**os.environ, "VMAE_REGISTRY": str(tmp_path / "reg.yaml"), "VMAE_TEST_ARCH_OVERRIDES": json.dumps(tiny)}
    out = tmp_path / "release"
    result = subprocess.run([sys.executable, "-m", "converter.cli", "--all", "--family", "v2", "--synthetic",
                             "--no-xla", "--no-float64", "--jobs", "2", "--output-dir", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converted 3, skipped (already done) 0, failed 0" in result.stdout
    for name, patch in (("TFVideoMAE2_G_Hybrid_16x224_PT", 14), ("TFVideoMAE2_G_K710_16x224_FT", 14),
                        ("TFVideoMAE2_S_K710_16x224_FT", 16)):
        report = json.loads((out / f"{name}.parity.json").read_text())
        assert report["passed"] and report["family"] == "v2" and report["config"]["patch_size"] == patch
    assert len(json.loads((out / "TFVideoMAE2_G_K710_16x224_FT.parity.json").read_text())["labels"]) == 710


# ------------------------------------------------------------------- memory: one copy at a time

def test_mapping_can_move_the_tensors_into_the_model():
    from converter.checkpoint import unwrap
    from converter.engine import load_into
    from converter.videomae_rules import rules_for
    from tf_models import build_model

    tensors = unwrap({"model": synthetic_state_dict(TINY_V2_FT, 0)}).tensors
    kept = {k: v.copy() for k, v in tensors.items()}
    model = build_model(TINY_V2_FT)
    assignments = load_into(model, tensors, rules_for("ft"), consume=True)
    assert tensors == {} and len(assignments) == len(kept)
    reference = build_model(TINY_V2_FT)
    load_into(reference, kept, rules_for("ft"))
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, reference.weights))


def test_large_model_check_reload_reads_the_keras_weights_from_disk(tmp_path, monkeypatch):
    """Past KERAS_IN_MEMORY_LIMIT the .keras gate reloads through Keras's extract-to-disk path (no
    in-memory copy of the weights file); the gate still passes, and Keras's own check is restored."""
    import zipfile

    from keras.src.saving import saving_lib

    from converter import pipeline

    extracted = []
    real_extract = zipfile.ZipFile.extract
    monkeypatch.setattr(zipfile.ZipFile, "extract",
                        lambda self, member, *a, **k: extracted.append(member) or real_extract(self, member, *a, **k))
    monkeypatch.setattr(pipeline, "KERAS_IN_MEMORY_LIMIT", 0)
    original = saving_lib.is_memory_sufficient
    report = convert(config=TINY_V2_FT, synthetic=True, family="v2", output_dir=str(tmp_path), name="disk", xla=False,
                     float64=False)
    assert report["checks"]["keras"]["passed"] and report["checks"]["weights_h5"]["weights_identical"]
    assert extracted == ["model.weights.h5"]
    assert saving_lib.is_memory_sufficient is original


def test_a_reload_that_changes_one_weight_fails_the_weights_h5_gate(tmp_path, monkeypatch):
    """The saved model is gone when its .weights.h5 is reloaded: the fingerprint taken at saving
    time must still see one changed value (a value far inside the 1e-5 output gate)."""
    import keras

    real_load = keras.Model.load_weights

    def load_and_nudge(self, *args, **kwargs):
        real_load(self, *args, **kwargs)
        w = self.weights[3]
        w.assign(w.numpy() + np.float32(1e-7) * (np.arange(w.numpy().size).reshape(w.shape) == 0))

    monkeypatch.setattr(keras.Model, "load_weights", load_and_nudge)
    report = convert(config=TINY_V2_FT, synthetic=True, family="v2", output_dir=str(tmp_path), name="nudged",
                     xla=False, float64=False)
    assert not report["passed"] and not report["checks"]["weights_h5"]["weights_identical"]
    assert not (tmp_path / "nudged.weights.h5").exists()  # nothing published


def test_batch_memory_estimate_reads_vit_g_from_the_v2_table():
    """`--all --jobs` plans memory by the entry's own table: G's 1.03 G parameters, not a v1 model."""
    from converter.batch import FRAMEWORK_BASELINE, estimated_peak_bytes
    from converter.registry import find_entry, load_registry

    entries = load_registry()
    g_pt = find_entry(entries, "G", "hybrid", "pt", family="v2")
    weights = 4 * 1_026_306_560  # vit_g_hybrid_pt_1200e.pth holds 4,105,433,973 bytes
    assert estimated_peak_bytes(g_pt, float64=True) >= 3 * weights + FRAMEWORK_BASELINE
    b_v2 = find_entry(entries, "B", "k710", "ft", family="v2")
    assert estimated_peak_bytes(b_v2, float64=True) < 3 * weights  # ViT-B: 87 M parameters
