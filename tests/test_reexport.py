"""Weights back out (vmae-export): Keras .weights.h5 -> official .pth / transformers folder, the
rule tables run backwards, proven by the family's own PyTorch reference on the written files."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from conftest import TINY_FT, TINY_PT, run_cli
from hf_folders import save_hub_style, save_module_keys, save_transformers

from converter.checkpoint import read_checkpoint
from converter.errors import ExportError, ParityError
from converter.families import hf
from converter.pipeline import convert
from converter.reexport import export_weights


def _converted(tmp_path, **kwargs):
    report = convert(output_dir=str(tmp_path / "out"), xla=False, float64=False, **kwargs)
    assert report["passed"]
    return tmp_path / "out" / f"{report['artifact']}.weights.h5"


@pytest.mark.parametrize("cfg", [TINY_FT, TINY_PT], ids=["ft", "pt"])
def test_official_round_trip_gives_the_same_tensors(tmp_path, cfg):
    h5 = _converted(tmp_path, config=cfg, synthetic=True, name="tiny")
    check = export_weights(h5, "official", tmp_path / "back.pth")
    assert check["passed"] and check["reference"].startswith("pt_reference")
    original = read_checkpoint(tmp_path / "out" / "synthetic_tiny_seed0.pth").tensors
    back = read_checkpoint(tmp_path / "back.pth").tensors
    assert back.keys() == original.keys() and all(np.array_equal(back[k], original[k]) for k in original)


@pytest.mark.parametrize("architecture,save", [(hf.CLASSIFIER, save_hub_style), (hf.PRETRAINING, save_module_keys),
                                               (hf.BACKBONE, save_hub_style),
                                               (hf.BACKBONE, partial(save_transformers, use_mean_pooling=True))],
                         ids=["classifier", "pretraining", "backbone", "backbone-no-final-norm"])
def test_hf_round_trip_gives_the_same_tensors_and_loads_in_transformers(tmp_path, architecture, save):
    import transformers

    folder = save(tmp_path / "videomae-tiny", architecture)
    h5 = _converted(tmp_path, checkpoint=str(folder))
    check = export_weights(h5, "hf", tmp_path / "back")
    assert check["passed"] and check["reference"].startswith("transformers") and "numerics" not in check
    original, back = hf.read(folder), hf.read(tmp_path / "back")
    assert back.architecture == architecture and back.labels == original.labels
    canon = hf.canonical(original.tensors)
    assert hf.canonical(back.tensors).keys() == canon.keys()
    assert all(np.array_equal(hf.canonical(back.tensors)[k], canon[k]) for k in canon)
    # transformers' own loader takes the folder as it is
    loaded = getattr(transformers, architecture).from_pretrained(tmp_path / "back")
    state = loaded.state_dict()
    assert all(torch.equal(state[k], torch.from_numpy(v)) for k, v in canon.items())


def test_weights_changed_in_keras_go_back_out(tmp_path):
    """What a fine-tuning in Keras gives: other values, same names; the export follows them."""
    from tf_models import build_model

    h5 = _converted(tmp_path, config=TINY_FT, synthetic=True, name="tiny")
    model = build_model(TINY_FT)
    model.load_weights(h5)
    model.get_layer("head").kernel.assign(model.get_layer("head").kernel.numpy() * 1.5)
    tuned = tmp_path / "out" / "tuned.weights.h5"
    model.save_weights(tuned)
    check = export_weights(tuned, "official", tmp_path / "tuned.pth", report_path=h5.with_name("tiny.parity.json"))
    assert check["passed"]
    head = read_checkpoint(tmp_path / "tuned.pth").tensors["head.weight"]
    assert np.array_equal(head, model.get_layer("head").kernel.numpy().T)


def test_official_numerics_going_to_transformers_are_named(tmp_path):
    """transformers computes fc_norm at 1e-5 where the official model uses 1e-6: close, not exact.
    The export says so; past a tighter gate it fails and leaves nothing behind."""
    h5 = _converted(tmp_path, config=TINY_FT, synthetic=True, name="tiny")
    check = export_weights(h5, "hf", tmp_path / "to_hf")
    assert check["passed"] and check["max_abs"] > 1e-6
    assert check["numerics"] == ("transformers computes LayerNorm eps 1e-06 / fc_norm and decoder.norm 1e-05, "
                                 "this model 1e-06 / 1e-06")
    with pytest.raises(ParityError, match="fc_norm and decoder.norm 1e-05, .*nothing was written"):
        export_weights(h5, "hf", tmp_path / "strict", rtol=0.0, atol=1e-6)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.partial"))


def test_cli_exports_and_refuses_to_overwrite(tmp_path):
    h5 = _converted(tmp_path, config=TINY_FT, synthetic=True, name="tiny")
    result = run_cli("--weights", h5, "--to", "official", "--output", tmp_path / "b.pth", module="converter.export_cli")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'b.pth'}: max abs ") and "(PASS)" in result.stdout
    again = run_cli("--weights", h5, "--to", "official", "--output", tmp_path / "b.pth", module="converter.export_cli")
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {tmp_path / 'b.pth'} exists; choose another --output (nothing is overwritten)"
    with pytest.raises(ExportError):
        export_weights(h5, "official", tmp_path / "b.pth")
    missing = run_cli("--weights", tmp_path / "none.weights.h5", "--to", "hf", "--output", tmp_path / "x",
                      module="converter.export_cli")
    assert missing.returncode == 2 and missing.stderr.strip().endswith("does not exist or is not a file")
    json.loads((tmp_path / "out" / "tiny.parity.json").read_text())
