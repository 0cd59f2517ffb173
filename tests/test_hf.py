"""Hugging Face transformers folders in: both q/v bias spellings, every head type, parity against
transformers' own VideoMAE, and every rule of the transformers table shown to matter."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hf_folders import LABELS, save_hub_style, save_module_keys, save_transformers, transformers_model

from converter.engine import CONV3D, LINEAR, QKV_LINEAR, SAME, Transform, load_into, translate
from converter.errors import CheckpointError, MappingError, VariantMismatchError
from converter.families import hf, official
from converter.families.hf_reference import TransformersReference
from converter.masking import tube_mask
from converter.parity import compare, keras_inputs, make_video, run_reference
from converter.pipeline import convert
from tf_models import build_backbone, build_model

TOL = dict(rtol=1e-5, atol=1e-5)
SAVERS = {"transformers5": save_transformers, "module_keys": save_module_keys, "hub": save_hub_style}
ARCHITECTURES = [hf.CLASSIFIER, hf.PRETRAINING, hf.BACKBONE]


def _read(folder):
    ckpt = hf.read(folder)
    arch, qv_bias = hf.arch_config(ckpt)
    hf.complete_biases(ckpt, arch, qv_bias)
    return ckpt, arch


class Case:
    """One folder, its Keras model and transformers' output on it, shared by the mutants."""

    cache: dict = {}

    @classmethod
    def get(cls, tmp_path_factory, architecture, style="transformers5", **overrides):
        key = (architecture, style, tuple(sorted(overrides.items())))
        if key not in cls.cache:
            folder = SAVERS[style](tmp_path_factory.mktemp("hf"), architecture, seed=3, **overrides)
            ckpt, arch = _read(folder)
            reference = TransformersReference(transformers_model(architecture, seed=3, **overrides))
            video = make_video(arch, 2, seed=1)
            mask = tube_mask(arch, 2, seed=1) if arch.is_pretrain else None
            model = build_backbone(arch) if architecture == hf.BACKBONE else build_model(arch)
            cls.cache[key] = (ckpt, arch, model, video, mask, run_reference(reference, video, mask))
        return cls.cache[key]


def _outcome(case, rules):
    ckpt, arch, model, video, mask, expected = case
    try:
        load_into(model, ckpt.tensors, rules)
    except MappingError:
        return "refused"
    got = np.asarray(model(keras_inputs(video, mask), training=False))
    return "passes" if compare(got, expected, **TOL)["passed"] else "caught"


FORMS = [(hf.CLASSIFIER, "transformers5", {}), (hf.CLASSIFIER, "hub", {"use_mean_pooling": False}),
         (hf.PRETRAINING, "hub", {}), (hf.BACKBONE, "transformers5", {}), (hf.CLASSIFIER, "module_keys", {}),
         (hf.PRETRAINING, "module_keys", {}), (hf.BACKBONE, "module_keys", {}),
         (hf.BACKBONE, "transformers5", {"use_mean_pooling": True})]
FORM_IDS = ["classifier-mean-pooling", "classifier-first-token-hub", "pretraining-hub", "backbone",
            "classifier-query-bias", "pretraining-query-bias", "backbone-query-bias", "backbone-no-final-norm"]


@pytest.mark.parametrize("architecture,style,overrides", FORMS, ids=FORM_IDS)
def test_transformers_table_matches_transformers(tmp_path_factory, architecture, style, overrides):
    case = Case.get(tmp_path_factory, architecture, style, **overrides)
    assert _outcome(case, hf.rules_for(architecture)) == "passes"


BROKEN = {
    LINEAR.name: Transform("transpose dropped", lambda a: a, lambda a: a),
    CONV3D.name: Transform("height/width swapped", lambda a: a.transpose(2, 4, 3, 1, 0), lambda a: a),
    SAME.name: Transform("values misplaced", lambda a: np.flip(a, axis=-1), lambda a: a),
    QKV_LINEAR.name: Transform("query and key swapped", lambda p: np.concatenate([p[1], p[0], p[2]]).T, None),
}


def _mutants():
    for (architecture, style, overrides), form in zip(FORMS, FORM_IDS):
        for rule in hf.rules_for(architecture):
            yield pytest.param(architecture, style, overrides, rule.source, id=f"{form}:{rule.source}")


@pytest.mark.parametrize("architecture,style,overrides,source", list(_mutants()))
def test_breaking_one_transformers_rule_fails_parity(tmp_path_factory, architecture, style, overrides, source):
    case = Case.get(tmp_path_factory, architecture, style, **overrides)
    table = hf.rules_for(architecture)
    rule = next(r for r in table if r.source == source)
    if not any(rule.match_source(k) for k in case[0].tensors):
        pytest.skip("this form has no such tensor; another form covers the rule")
    broken = dataclasses.replace(rule, transform=BROKEN[rule.transform.name])
    assert _outcome(case, [broken if r is rule else r for r in table]) in ("caught", "refused")


def test_a_backbone_saved_with_mean_pooling_ends_without_a_norm(tmp_path_factory):
    """transformers gives such a VideoMAEModel no layernorm: its last hidden state is the last layer's
    output as it is. The Keras backbone leaves `norm` out for it, and only for it: either form
    built for the other file is refused by the accounting (a weight missing or left over)."""
    plain = Case.get(tmp_path_factory, hf.BACKBONE, use_mean_pooling=True)
    normed = Case.get(tmp_path_factory, hf.BACKBONE)
    ckpt, arch, model, video, _, expected = plain
    assert not arch.final_norm and normed[1].final_norm
    assert not any(k.startswith("layernorm.") for k in ckpt.tensors)
    assert "norm" not in [layer.name for layer in model.layers]
    assert _outcome(plain, hf.rules_for(hf.BACKBONE)) == "passes"
    # The tokens really are un-normalised, so a norm applied by mistake would show at the gate.
    mean, std = expected.mean(-1, keepdims=True), expected.std(-1, keepdims=True)
    assert not compare((expected - mean) / std, expected, **TOL)["passed"]
    for tensors, cfg in ((ckpt.tensors, arch.with_(final_norm=True)),
                         (normed[0].tensors, normed[1].with_(final_norm=False))):
        with pytest.raises(MappingError):
            load_into(build_backbone(cfg), tensors, hf.rules_for(hf.BACKBONE))


def test_qkv_transpose_dropped_is_caught(tmp_path_factory):
    case = Case.get(tmp_path_factory, hf.CLASSIFIER)
    table = [dataclasses.replace(r, transform=Transform("no transpose", lambda p: np.concatenate(p, 1), None))
             if r.fused else r for r in hf.rules_for(hf.CLASSIFIER)]
    assert _outcome(case, table) in ("caught", "refused")


def test_layer_norm_eps_of_the_file_is_followed(tmp_path_factory):
    """The official 1e-6 everywhere instead of the file's 1e-12 / 1e-5 moves the logits by ~3e-5 here:
    beyond the 1e-5 gate, so the file's numerics are part of the architecture, not a detail."""
    ckpt, arch, model, video, mask, _ = Case.get(tmp_path_factory, hf.CLASSIFIER)
    reference = TransformersReference(transformers_model(hf.CLASSIFIER, seed=3)).double()
    expected = run_reference(reference, video, None, "float64")
    for cfg, exact in ((arch, True), (arch.with_(layer_norm_eps=1e-6, head_norm_eps=1e-6), False)):
        m = build_model(cfg, dtype="float64")
        load_into(m, ckpt.tensors, hf.rules_for(hf.CLASSIFIER))
        got = np.asarray(m(keras_inputs(video, None, "float64"), training=False))
        error = float(np.abs(got - expected).max())
        assert error < 1e-10 if exact else error > 1e-5


def test_reference_loads_hub_biases_as_transformers_itself_does(tmp_path):
    """Our reference renames q_bias -> query.bias before a strict load; transformers' own
    from_pretrained (its key renaming) must give the same model."""
    import transformers

    folder = save_hub_style(tmp_path / "hub", hf.CLASSIFIER, seed=4)
    ckpt, arch = _read(folder)
    ours = TransformersReference(hf.build_transformers(arch, hf.CLASSIFIER, ckpt.tensors))
    theirs = TransformersReference(transformers.VideoMAEForVideoClassification.from_pretrained(
        folder, attn_implementation="eager").eval())
    video = make_video(arch, 1, seed=0)
    assert np.array_equal(run_reference(ours, video), run_reference(theirs, video))
    assert np.abs(run_reference(ours, video)).max() > 0.1


def test_config_json_gives_the_architecture_labels_and_numerics(tmp_path):
    ckpt, arch = _read(save_transformers(tmp_path / "t5", hf.CLASSIFIER))
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.num_classes) == (64, 2, 4, 7)
    assert (arch.layer_norm_eps, arch.head_norm_eps, arch.num_frames, arch.image_size) == (1e-12, 1e-5, 4, 32)
    assert ckpt.labels == LABELS and ckpt.container == "safetensors"
    hub, hub_arch = _read(save_hub_style(tmp_path / "hub", hf.PRETRAINING))
    assert hub.container == "bin" and hub.labels is None
    assert (hub_arch.decoder_embed_dim, hub_arch.decoder_depth, hub_arch.decoder_num_heads) == (32, 2, 2)


@pytest.mark.parametrize("save", [save_transformers, save_module_keys])
def test_a_file_without_q_v_biases_is_refused(tmp_path, save):
    folder = save(tmp_path / "lossy", hf.CLASSIFIER)
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(folder / "model.safetensors").items()
             if not k.endswith(("query.bias", "value.bias", "q_bias", "v_bias"))}
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="qkv_bias/qv_bias is true but the weights hold no q/v biases"):
        _read(folder)


def test_a_model_trained_without_q_v_biases_gets_zero_ones(tmp_path):
    ckpt, arch = _read(save_transformers(tmp_path / "nobias", hf.CLASSIFIER, qkv_bias=False))
    assert not ckpt.tensors["videomae.encoder.layer.0.attention.attention.query.bias"].any()
    assert "zero q/v biases" in ckpt.notes[0]


def test_both_bias_spellings_at_once_are_refused(tmp_path, tmp_path_factory):
    ckpt, arch, model, *_ = Case.get(tmp_path_factory, hf.CLASSIFIER, "module_keys")
    tensors = dict(ckpt.tensors)
    tensors["videomae.encoder.layer.0.attention.attention.q_bias"] = tensors[
        "videomae.encoder.layer.0.attention.attention.query.bias"]
    with pytest.raises(MappingError, match="claimed twice"):
        load_into(model, tensors, hf.rules_for(hf.CLASSIFIER))


def test_a_missing_key_tensor_is_named(tmp_path_factory):
    ckpt, arch, model, *_ = Case.get(tmp_path_factory, hf.CLASSIFIER)
    tensors = {k: v for k, v in ckpt.tensors.items() if k != "videomae.encoder.layer.1.attention.attention.key.weight"}
    with pytest.raises(MappingError, match=r"missing \(videomae.encoder.layer.1.attention.attention.key.weight\)"):
        load_into(model, tensors, hf.rules_for(hf.CLASSIFIER))


def test_head_count_disagreeing_with_the_official_table_is_reported():
    from converter.variants import ArchConfig

    small16 = ArchConfig(embed_dim=384, depth=12, num_heads=16)
    assert "official ViT-S has 6; parity followed config.json (16)" in hf.head_count_note(small16)
    assert hf.head_count_note(small16.with_(num_heads=6)) is None


def test_request_is_checked_against_config_json(tmp_path):
    ckpt, arch = _read(save_transformers(tmp_path / "t5", hf.CLASSIFIER))
    with pytest.raises(VariantMismatchError, match="not ViT-B"):
        hf.check_request(arch, ckpt.architecture, variant="B")
    with pytest.raises(VariantMismatchError, match="not --stage pt"):
        hf.check_request(arch, ckpt.architecture, stage="pt")
    with pytest.raises(VariantMismatchError, match="7 labels, dataset k400 has 400"):
        hf.check_request(arch, ckpt.architecture, dataset="k400")
    hf.check_request(arch, ckpt.architecture, stage="ft")


def test_config_json_and_weights_must_agree(tmp_path):
    folder = save_transformers(tmp_path / "t5", hf.CLASSIFIER)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": [hf.PRETRAINING]}))
    with pytest.raises(VariantMismatchError, match="says VideoMAEForPreTraining but the weights are a "
                                                   "VideoMAEForVideoClassification"):
        hf.read(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(CheckpointError, match="model_type 'vit', not 'videomae'"):
        hf.read(folder)


def test_translation_to_official_keys_feeds_pt_reference(tmp_path_factory):
    """The no-transformers fallback: keys moved through the Keras layout by the two tables."""
    from pt_reference import load_reference

    ckpt, arch, model, video, mask, expected = Case.get(tmp_path_factory, hf.PRETRAINING, "hub")
    tensors = translate(ckpt.tensors, hf.rules_for(hf.PRETRAINING), official.rules(arch))
    assert "encoder.blocks.1.attn.qkv.weight" in tensors and len(tensors) == 62
    reference = load_reference(arch, {k: torch.from_numpy(v) for k, v in tensors.items()})
    assert compare(run_reference(reference, video, mask), expected, **TOL)["passed"]


@pytest.mark.parametrize("architecture,style", [(hf.CLASSIFIER, "hub"), (hf.PRETRAINING, "module_keys"),
                                                (hf.BACKBONE, "transformers5")])
def test_folder_converts_with_parity_against_transformers(tmp_path, architecture, style):
    folder = SAVERS[style](tmp_path / "videomae-tiny", architecture)
    report = convert(checkpoint=str(folder), output_dir=str(tmp_path / "out"), xla=False)
    assert report["passed"], report["checks"]
    assert report["reference"].startswith("transformers 5.") and report["family"] == "hf"
    assert report["checks"]["float64"]["max_abs"] < 1e-10
    assert report["architecture"] == architecture
    assert report["labels"] == (LABELS if architecture == hf.CLASSIFIER else None)
    assert report["artifact"] == "TFVideoMAE_hf_videomae-tiny"


def test_without_transformers_parity_falls_back_to_pt_reference(tmp_path, monkeypatch):
    folder = save_hub_style(tmp_path / "hub", hf.CLASSIFIER, use_mean_pooling=False)
    monkeypatch.setattr(hf, "transformers_version", lambda: None)
    report = convert(checkpoint=str(folder / "pytorch_model.bin"), output_dir=str(tmp_path / "out"), xla=False)
    assert report["passed"] and report["checks"]["float64"]["max_abs"] < 1e-10
    assert report["reference"].startswith("pt_reference at the file's numerics (layer_norm_eps 1e-12, "
                                          "fc_norm/decoder.norm eps 1e-05): transformers is not installed")


def test_every_rule_is_exercised_by_some_form(tmp_path_factory):
    """The skips above are only honest if each rule is broken in at least one form."""
    used = set()
    for architecture, style, overrides in FORMS:
        tensors = Case.get(tmp_path_factory, architecture, style, **overrides)[0].tensors
        used |= {r.source for r in hf.rules_for(architecture) if any(r.match_source(k) for k in tensors)}
    assert {r.source for a in ARCHITECTURES for r in hf.rules_for(a)} - used == set()


def test_a_divergence_is_localised_against_transformers(tmp_path_factory):
    from converter.parity import localise

    ckpt, arch, model, video, mask, _ = Case.get(tmp_path_factory, hf.CLASSIFIER)
    proj = "videomae.encoder.layer.{i}.attention.output.dense.weight"
    table = [dataclasses.replace(r, transform=BROKEN[LINEAR.name]) if r.source == proj else r
             for r in hf.rules_for(hf.CLASSIFIER)]
    load_into(model, ckpt.tensors, table)
    reference = TransformersReference(transformers_model(hf.CLASSIFIER, seed=3))
    found = localise(reference, model, video)
    assert found["first_divergent"] == "blocks.0" and found["stages"][0]["stage"] == "embedding"


def test_sharded_folders_read_every_shard(tmp_path):
    transformers_model(hf.CLASSIFIER, seed=3).save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ckpt = hf.read(tmp_path / "sharded")
    whole = hf.read(save_transformers(tmp_path / "whole", hf.CLASSIFIER, seed=3))
    assert ckpt.container == "safetensors shards" and ckpt.tensors.keys() == whole.tensors.keys()
    assert all(np.array_equal(ckpt.tensors[k], whole.tensors[k]) for k in whole.tensors)


def test_encoder_of_a_pretraining_folder_converts_alone(tmp_path):
    folder = save_hub_style(tmp_path / "videomae-tiny", hf.PRETRAINING)
    report = convert(checkpoint=str(folder), output_dir=str(tmp_path / "out"), xla=False, float64=False,
                     encoder_only=True, stage="pt", pooled=True)
    assert report["passed"] and report["encoder_only"] and report["output_shape"] == [1, 64]
    # encoder_to_decoder, mask_token; 2 decoder layers of 15 tensors; decoder norm and head
    assert report["tensors_dropped"] == 2 + 2 * 15 + 4
