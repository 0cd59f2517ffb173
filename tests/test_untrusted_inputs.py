"""Untrusted and broken inputs: every failure a user can cause is refused safely, in one line,
with a non-zero exit, and leaves nothing under a final artifact name.

Cases 1-6 of the hardening issue: pickled code, damaged files, mapping mismatches, the wrong
model, odd dtypes and non-finite values, and outputs that cannot be written. Slow pieces (CLI
processes) run concurrently; conversions use the tiny configuration.
"""
from __future__ import annotations

import ctypes
import errno
import os
import pickle
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_FT, run_cli, start_tiny_conversion

from converter import export, pipeline
from converter.checkpoint import config_for, read_checkpoint, unwrap
from converter.cli import summary
from converter.errors import CheckpointError, ExportError, MappingError, VariantMismatchError, VMAEError
from converter.synthetic import synthetic_state_dict
from converter.variants import arch_config

FINAL = ("{n}.weights.h5", "{n}", "{n}.zip", "{n}.parity.json")


def leftovers(out_dir, name):
    """Final artifact names, staging folders and temporary files present in out_dir."""
    found = [f.format(n=name) for f in FINAL if (out_dir / f.format(n=name)).exists()]
    found += [p.name for p in out_dir.glob(".staging-*")] + [p.name for p in out_dir.glob("*.tmp")]
    return found


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


class RunsShell:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_sd():
    return synthetic_state_dict(TINY_FT, seed=0)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_sd):
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({"model": tiny_sd}, path)
    return path


def _write_hostile(path, marker, fmt, sd):
    payload = {"model": sd, "args": RunsShell(marker)}
    if fmt == "zip":
        torch.save(payload, path)
    elif fmt == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as `pickle.dump` writes it
        with open(path, "wb") as f:
            pickle.dump(payload, f)


# -- 1. pickled code --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
def test_hostile_payload_really_runs_code_when_unpickled_unsafely(tmp_path, tiny_sd, fmt):
    """The fixture is a real attack: loaded the unsafe way, it creates its marker file."""
    marker = tmp_path / "PWNED"
    _write_hostile(tmp_path / "evil.pth", marker, fmt, tiny_sd)
    with open(tmp_path / "evil.pth", "rb") as f:
        if fmt == "raw":
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, tiny_sd, fmt, monkeypatch):
    marker = tmp_path / "PWNED"
    _write_hostile(tmp_path / "evil.pth", marker, fmt, tiny_sd)
    # A user's environment may ask torch to load unsafely by default; it must not matter.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message
    if fmt == "raw":
        assert "plain Python pickle" in message and "not unpickled" in message
    else:
        assert "refusing to load" in message and "posix.system" in message and "nothing in it was run" in message


# -- 2. damaged files and other formats --------------------------------------------------------

def _truncated(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.999])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_named_truncated(tmp_path, tiny_sd, fraction, legacy):
    full = tmp_path / "full.pth"
    torch.save({"model": tiny_sd}, full, _use_new_zipfile_serialization=not legacy)
    _truncated(full, tmp_path / "cut.pth", fraction)
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_checkpoint(tmp_path / "cut.pth")
    assert "download it again" in str(info.value)


def test_legacy_file_cut_inside_its_pickle_is_truncated_not_hostile(tmp_path, tiny_sd):
    """Cut in the middle of a class name, the stream looks like it imports something odd:
    that is damage, and the message must say so rather than cry attack."""
    full = tmp_path / "full.pth"
    torch.save({"model": tiny_sd}, full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: data.index(b"_rebuild_tensor") + 8])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "cut.pth")
    assert "is truncated or corrupt" in str(info.value) and "refusing" not in str(info.value)


def _zip_of(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


NOT_CHECKPOINTS = {
    "empty": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "text": (lambda p: p.write_text("model weights will be uploaded soon\n"), "text file"),
    "html": (lambda p: p.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning"
                                    "</title></head></html>"), "HTML page"),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "unknown binary format"),
    "zip_of_text": (lambda p: _zip_of(p, {"readme.txt": "hi", "notes/a.txt": "x"}), "zip archive of other files"),
    "zip_around_pth": (lambda p: _zip_of(p, {"videomae/checkpoint.pth": b"..."}), "extract videomae/checkpoint.pth"),
    "gzip": (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + bytes(60)), "gzip"),
    "hdf5": (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(60)), "HDF5"),
    "bare_tensor": (lambda p: torch.save(torch.ones(3), p), "holds no state dict"),
    "list": (lambda p: torch.save([torch.ones(3)], p), "holds no state dict"),
    "int_keys": (lambda p: torch.save({"model": {0: torch.ones(3), 1: torch.ones(2)}}, p), "is not a string"),
    "non_tensor_value": (lambda p: torch.save({"model": {"a": torch.ones(3), "b": [1.0, 2.0]}}, p),
                         "'b' is a list, not a tensor"),
    "integer_tensor": (lambda p: torch.save({"model": {"a": torch.ones(3, dtype=torch.int64)}}, p), "torch.int64"),
    "sparse_tensor": (lambda p: torch.save({"model": {"a": torch.ones(2, 2).to_sparse()}}, p),
                      "sparse_coo tensor, expected dense weights"),
    "meta_tensor": (lambda p: torch.save({"model": {"a": torch.empty(2, device="meta")}}, p),
                    "meta tensor without data"),
}


@pytest.mark.parametrize("case", list(NOT_CHECKPOINTS))
def test_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, case):
    make, expected = NOT_CHECKPOINTS[case]
    path = tmp_path / "x.pth"
    make(path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["no_storage", "junk_pickle", "short_storage", "bad_byteorder"])
def test_damaged_torch_archive_is_reported_as_corrupt(tmp_path, tiny_file, damage):
    """A zip that is a torch archive on the outside, broken inside: torch raises all sorts
    (RuntimeError, ValueError, struct.error); each must end as one CheckpointError."""
    record, data = {"no_storage": ("data/0", None), "junk_pickle": ("data.pkl", b"\x80\x02junk"),
                    "short_storage": ("data/0", b"\0" * 10), "bad_byteorder": ("byteorder", b"middle")}[damage]
    with zipfile.ZipFile(tiny_file) as src, zipfile.ZipFile(tmp_path / "x.pth", "w") as dst:
        for name in src.namelist():
            if name.split("/", 1)[1] != record:
                dst.writestr(name, src.read(name))
            elif data is not None:
                dst.writestr(name, data)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "x.pth")
    assert "truncated or corrupt" in str(info.value) and "\n" not in str(info.value)


def test_torchscript_archive_is_refused_without_running_it(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pth")
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(tmp_path / "scripted.pth")


# -- 3. state dicts that do not fit ------------------------------------------------------------

def _damaged(sd):
    sd = dict(sd)
    del sd["blocks.1.mlp.fc2.bias"], sd["head.bias"]
    for i in range(6):
        sd[f"blocks.0.adapter{i}.weight"] = torch.ones(2)
    sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"][:100]
    return sd


def test_missing_unexpected_and_misshaped_are_listed_with_counts(tmp_path, tiny_sd):
    torch.save({"model": _damaged(tiny_sd)}, tmp_path / "bad.pth")
    with pytest.raises(MappingError) as info:
        pipeline.convert(config=TINY_FT, checkpoint=str(tmp_path / "bad.pth"), output_dir=str(tmp_path / "out"),
                         name="tiny")
    err, message = info.value, str(info.value)
    assert sorted(err.missing) == ["blocks.1.mlp.fc2.bias", "head.bias"]
    assert len(err.unexpected) == 6 and len(err.mismatched) == 1
    assert "2 missing (blocks.1.mlp.fc2.bias, head.bias)" in message
    assert "6 unexpected (blocks.0.adapter0.weight, blocks.0.adapter1.weight, blocks.0.adapter2.weight, " \
           "blocks.0.adapter3.weight, ... 2 more)" in message
    assert "1 mis-shaped (blocks.0.mlp.fc1.weight [100, 64] expects [256, 64])" in message
    assert "\n" not in message
    assert leftovers(tmp_path / "out", "tiny") == []


def test_keras_side_accounting_catches_the_same_damage(tiny_sd):
    """The mapping engine's own check, behind the early one: each kind of damage on its own."""
    from converter.engine import load_into
    from converter.videomae_rules import rules_for
    from tf_models import build_model

    model = build_model(TINY_FT)
    good = unwrap({"model": tiny_sd}).tensors
    for label, change in [("missing", lambda t: t.pop("head.bias")),
                          ("unexpected", lambda t: t.__setitem__("blocks.0.extra", np.ones(2, np.float32))),
                          ("mis-shaped", lambda t: t.__setitem__("head.weight", t["head.weight"][:, :10]))]:
        tensors = dict(good)
        change(tensors)
        with pytest.raises(MappingError, match=f"1 {label} "):
            load_into(model, tensors, rules_for("ft"))


# -- 4. another model than requested -----------------------------------------------------------

@pytest.fixture(scope="module")
def vit_s(tmp_path_factory):
    """Full-size official-format ViT-S tensors, fine-tuned (K400 head) and pre-trained."""
    ft = synthetic_state_dict(arch_config("S", "k400", "ft"), seed=1)
    pt = synthetic_state_dict(arch_config("S", "k400", "pt"), seed=1)
    folder = tmp_path_factory.mktemp("vit_s")
    torch.save({"model": ft}, folder / "s_k400_ft.pth")
    bad = _damaged(ft)
    bad["head.bias"] = ft["head.bias"]  # the head still says 400 classes; a block's bias stays missing
    torch.save({"model": bad}, folder / "s_k400_ft_damaged.pth")
    return {"ft": unwrap({"model": ft}).tensors, "pt": unwrap({"model": pt}).tensors, "folder": folder}


@pytest.mark.parametrize("file, request_, says", [
    ("ft", ("B", "k400", "ft"), ["ViT-S fine-tuned classifier", "embed dim 384", "not ViT-B", "pass --variant S"]),
    ("ft", ("L", "k400", "ft"), ["ViT-S fine-tuned classifier", "not ViT-L", "pass --variant S"]),
    ("ft", ("S", "ssv2", "ft"), ["400 classes", "ssv2 has 174", "looks like a k400 model", "pass --dataset k400"]),
    ("ft", ("S", "ucf101", "ft"), ["400 classes", "ucf101 has 101", "pass --dataset k400"]),
    ("ft", ("S", "k400", "pt"), ["ViT-S fine-tuned classifier", "not pre-trained", "pass --stage ft"]),
    ("pt", ("S", "k400", "ft"), ["ViT-S pre-trained (masked autoencoder)", "not fine-tuned", "pass --stage pt"]),
    ("pt", ("B", "k400", "pt"), ["ViT-S pre-trained", "not ViT-B", "pass --variant S"]),
])
def test_file_of_another_model_says_what_it_is(vit_s, file, request_, says):
    with pytest.raises(VariantMismatchError) as info:
        config_for(vit_s[file], *request_)
    for words in says:
        assert words in str(info.value)


def test_matching_files_pass_the_identity_checks(vit_s):
    assert config_for(vit_s["ft"], "S", "k400", "ft") == arch_config("S", "k400", "ft")
    assert config_for(vit_s["pt"], "S", "k400", "pt").decoder_depth == 4


# -- 5. dtypes and non-finite values -----------------------------------------------------------

def _half(sd):
    """Every other tensor float16, the rest bfloat16, as mixed-precision training scripts save."""
    return {k: v.to(torch.float16 if i % 2 else torch.bfloat16) for i, (k, v) in enumerate(sd.items())}


def test_half_precision_is_converted_and_noted_in_report_and_summary(tmp_path, tiny_sd):
    half = _half(tiny_sd)
    torch.save({"model": half}, tmp_path / "half.pth")
    out = tmp_path / "out"
    report = pipeline.convert(config=TINY_FT, checkpoint=str(tmp_path / "half.pth"), output_dir=str(out),
                              name="half", xla=False, float64=False)
    assert report["passed"]
    notes = report["checkpoint"]["notes"]
    assert any(n.startswith(f"{len(half) // 2} tensors stored as float16") for n in notes), notes
    assert any("stored as bfloat16" in n and "converted to float32" in n for n in notes), notes
    assert "note: " in summary(report) and "float16" in summary(report)

    # The published weights are the half values, exactly, in float32.
    from converter.engine import export_state_dict
    from converter.videomae_rules import rules_for
    from tf_models import build_model

    model = build_model(TINY_FT)
    model.load_weights(out / "half.weights.h5")
    for key, value in export_state_dict(model, rules_for("ft")).items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, half[key].float().numpy(), err_msg=key)


def test_float64_is_converted_and_noted():
    loaded = unwrap({"model": {"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(2)}})
    assert loaded.tensors["a"].dtype == np.float32
    assert loaded.notes == ["1 tensors stored as float64 (a), converted to float32"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_is_refused_naming_the_tensor(tiny_sd, dtype, bad):
    sd = {k: v.to(dtype) for k, v in tiny_sd.items()}
    sd["blocks.1.attn.proj.weight"] = sd["blocks.1.attn.proj.weight"].clone()
    sd["blocks.1.attn.proj.weight"][3, 5] = bad
    with pytest.raises(CheckpointError) as info:
        unwrap({"model": sd}, "ckpt.pth")
    message = str(info.value)
    assert "'blocks.1.attn.proj.weight'" in message
    assert ("1 NaN and 0 Inf" if bad != bad else "0 NaN and 1 Inf") in message


def test_float64_values_beyond_float32_are_refused():
    with pytest.raises(CheckpointError, match="'a' has torch.float64 values beyond the float32 range"):
        unwrap({"model": {"a": torch.tensor([1e300], dtype=torch.float64)}})


# -- 6. outputs that cannot be written ---------------------------------------------------------

def test_unwritable_output_dir_fails_before_any_work(tmp_path, tiny_file, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    loads = []
    monkeypatch.setattr(pipeline, "read_checkpoint", lambda p: loads.append(p))
    for out in (blocker, blocker / "sub"):
        with pytest.raises(ExportError, match="is a file, not a folder"):
            pipeline.convert(config=TINY_FT, checkpoint=str(tiny_file), output_dir=str(out))
    assert loads == []  # refused before the checkpoint was even read


def _drop_file_permission_override():
    """Child processes of root keep root's uid but lose the capabilities that ignore file modes."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _write_denied(folder) -> str | None:
    """None when a child process (capabilities dropped) is refused writing into `folder`, else why not:
    root without CAP_SETPCAP cannot drop the capabilities (prctl fails in the child), and some
    machines let every process write a 0o555 folder."""
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"],
                               preexec_fn=_drop_file_permission_override, capture_output=True)
    except subprocess.SubprocessError as err:  # the preexec_fn's OSError, as subprocess reports it
        return f"cannot drop the file-permission capabilities here ({err})"
    return "this machine lets every process write a 0o555 folder" if probe.returncode == 0 else None


def test_permission_probe_skips_where_capabilities_cannot_be_dropped(tmp_path, monkeypatch):
    def no_setpcap():
        raise OSError(errno.EPERM, "prctl(PR_CAPBSET_DROP)")

    monkeypatch.setattr(sys.modules[__name__], "_drop_file_permission_override", no_setpcap)
    assert _write_denied(tmp_path).startswith("cannot drop the file-permission capabilities")


def test_permission_denied_output_dir_is_one_line(tmp_path, tiny_file):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    why_not = _write_denied(out)
    if why_not:
        pytest.skip(why_not)
    result = subprocess.run([sys.executable, "-m", "converter.cli", "--checkpoint", str(tiny_file),
                             "--output-dir", str(out / "sub"), "--quiet"], cwd=REPO, capture_output=True,
                            text=True, preexec_fn=_drop_file_permission_override, timeout=300)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "permission denied (choose another --output-dir)" in line
    assert list(out.iterdir()) == []


def _enospc_after_some_bytes(path):
    with open(path, "wb") as f:
        f.write(b"\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_weights_h5(tmp_path, tiny_file, monkeypatch):
    monkeypatch.setattr(pipeline, "save_weights_h5", lambda model, path: _enospc_after_some_bytes(path))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        pipeline.convert(config=TINY_FT, checkpoint=str(tiny_file), output_dir=str(out), name="tiny",
                         xla=False, float64=False)
    assert str(info.value) == (f"no space left on the device while writing {out / 'tiny.weights.h5'}: "
                               "free some space or choose another --output-dir")
    assert leftovers(out, "tiny") == []


def test_disk_full_while_writing_the_savedmodel(tmp_path, tiny_file, monkeypatch):
    import tensorflow as tf
    import tf_models

    def export_until_disk_full(model, path, *metadata):  # metadata: dataset and labels (issue 13)
        (path / "variables").mkdir(parents=True)
        (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * 1000)
        raise tf.errors.OutOfRangeError(None, None, "{{function_node __wrapped__SaveV2}} "
                                        f"{path}/variables/part-0.tmp; No space left on device [Op:SaveV2]")

    monkeypatch.setattr(tf_models, "export_saved_model", export_until_disk_full)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=f"no space left on the device while writing {out / 'tiny'}:"):
        pipeline.convert(config=TINY_FT, checkpoint=str(tiny_file), output_dir=str(out), name="tiny",
                         xla=False, float64=False)
    assert leftovers(out, "tiny") == []


def test_disk_full_while_zipping_cleans_the_staging_folder(tmp_path, monkeypatch):
    import tensorflow as tf

    def copy_until_full(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.shutil, "copyfileobj", copy_until_full)
    with pytest.raises(ExportError, match="no space left on the device while writing .*tiny.zip"):
        with export.Staging(tmp_path, "tiny") as st:
            (st.path("tiny") / "variables").mkdir(parents=True)
            (st.path("tiny") / "variables" / "data").write_bytes(b"\1" * 5000)
            with pipeline._writing(tmp_path / "tiny.zip", tf):
                export.zip_folder(st.path("tiny"), st.path("tiny.zip"))
    assert leftovers(tmp_path, "tiny") == []


def test_disk_full_while_writing_the_report_leaves_no_temporary_file(tmp_path, monkeypatch):
    real_write = type(tmp_path).write_bytes

    def write_half(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tmp_path), "write_bytes", write_half)
    with pytest.raises(ExportError, match="no space left"):
        export.write_atomic(tmp_path / "tiny.parity.json", b"{}" * 100)
    monkeypatch.undo()
    assert leftovers(tmp_path, "tiny") == []


def test_file_size_limit_while_writing_weights_h5_in_a_real_process(tmp_path, tiny_file):
    """A real write failure (ulimit -f, lowered as the phase starts) in a fresh process: HDF5
    writing the file itself crashed the process here (a segfault at 500 kB)."""
    proc = start_tiny_conversion(TINY_FT, tiny_file, tmp_path, "tiny", file_size_limit=("save weights.h5", 500_000))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, (proc.returncode, stderr[-3000:])
    line = one_error_line(stderr)
    assert line.startswith(f"error: file size limit exceeded while writing {tmp_path / 'tiny.weights.h5'} "
                           "(see ulimit -f)"), line
    assert leftovers(tmp_path, "tiny") == []


def test_file_size_limit_inside_the_savedmodel_export(tmp_path, tiny_file):
    """The same real failure inside tensorflow's SavedModel writer (an OutOfRangeError there)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def progress(message):
        if message == "export savedmodel ...":
            resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, hard))  # about half its variables

    try:
        with pytest.raises(ExportError) as info:
            pipeline.convert(config=TINY_FT, checkpoint=str(tiny_file), output_dir=str(tmp_path), name="tiny",
                             xla=False, float64=False, progress=progress)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(info.value) == (f"file size limit exceeded while writing {tmp_path / 'tiny'} (see ulimit -f): "
                               "raise it or choose another --output-dir")
    assert leftovers(tmp_path, "tiny") == []


# -- the CLI: one readable line, exit 2, no traceback -------------------------------------------

@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory, tiny_sd, tiny_file, vit_s):
    """Every CLI case started at once (each pays the torch import): {case: (result, folder)}."""
    folder = tmp_path_factory.mktemp("cli")
    marker = folder / "PWNED"
    _write_hostile(folder / "evil.pth", marker, "zip", tiny_sd)
    _truncated(tiny_file, folder / "cut.pth", 0.5)
    (folder / "notes.pth").write_text("checkpoint coming soon\n")
    nan = dict(tiny_sd)
    nan["blocks.0.norm1.weight"] = torch.full_like(nan["blocks.0.norm1.weight"], float("nan"))
    torch.save({"model": nan}, folder / "nan.pth")
    (folder / "a_file").write_text("x")
    s_ft, s_bad = vit_s["folder"] / "s_k400_ft.pth", vit_s["folder"] / "s_k400_ft_damaged.pth"
    cases = {
        "pickled_code": ["--checkpoint", folder / "evil.pth"],
        "truncated": ["--checkpoint", folder / "cut.pth"],
        "text": ["--checkpoint", folder / "notes.pth"],
        "nan": ["--checkpoint", folder / "nan.pth"],
        "variant": ["--variant", "B", "--checkpoint", s_ft],
        "mapping": ["--checkpoint", s_bad],
        "output_is_a_file": ["--checkpoint", s_ft, "--output-dir", folder / "a_file"],
    }
    # a user's environment: no TF_CPP_MIN_LOG_LEVEL to hide what tensorflow would print, should a case
    # get as far as importing it
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    procs = {}
    for case, args in cases.items():
        out = folder / f"out_{case}"
        argv = [*args] if "--output-dir" in args else [*args, "--output-dir", out]
        procs[case] = (subprocess.Popen([sys.executable, "-m", "converter.cli", "--quiet", *map(str, argv)],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), out)
    results = {}
    for case, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[case] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out)
    assert not marker.exists()
    return results


CLI_SAYS = {
    "pickled_code": "it would import posix.system when unpickled; nothing in it was run",
    "truncated": "is truncated or corrupt (its zip directory is missing or damaged",
    "text": "is not a PyTorch checkpoint but a text file starting with 'checkpoint coming soon'",
    "nan": "'blocks.0.norm1.weight' has 64 NaN and 0 Inf values of 64",
    "variant": "checkpoint is a ViT-S fine-tuned classifier (embed dim 384, depth 12, 400 classes (k400)), "
               "not ViT-B (embed dim 768, depth 12): pass --variant S",
    "mapping": "checkpoint does not fit the model: 1 missing (blocks.1.mlp.fc2.bias); 6 unexpected "
               "(blocks.0.adapter0.weight",
    "output_is_a_file": "Invalid value for '--output-dir': Directory",
}


@pytest.mark.parametrize("case", list(CLI_SAYS))
def test_cli_failure_is_one_readable_line(cli_cases, case):
    result, out = cli_cases[case]
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert CLI_SAYS[case] in line, line
    assert result.stdout == ""
    if out.exists():
        assert leftovers(out, "TFVideoMAE_S_K400_16x224_FT") == []


def test_cli_debug_shows_the_traceback(tmp_path, tiny_file):
    _truncated(tiny_file, tmp_path / "cut.pth", 0.5)
    result = run_cli("--checkpoint", tmp_path / "cut.pth", "--output-dir", tmp_path / "out", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_every_error_type_is_a_vmae_error():
    for cls in (CheckpointError, MappingError, VariantMismatchError, ExportError):
        assert issubclass(cls, VMAEError)
