"""Transformers input through the CLI, as users type it: a folder, model.safetensors with
--config, and hf://owner/repo downloaded by huggingface_hub from a local fake hub."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import run_cli
from hf_folders import LABELS, save_hub_style, save_transformers

from converter.families import hf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _report(out_dir, name):
    return json.loads((out_dir / f"{name}.parity.json").read_text())


def test_folder_converts_through_the_cli(tmp_path):
    folder = save_transformers(tmp_path / "videomae-tiny-finetuned", hf.CLASSIFIER)
    out = tmp_path / "out"
    result = run_cli("--checkpoint", folder, "--output-dir", out, "--no-xla", "--quiet", "--stage", "ft")
    assert result.returncode == 0, result.stderr
    assert "TFVideoMAE_hf_videomae-tiny-finetuned: PASS" in result.stdout
    report = _report(out, "TFVideoMAE_hf_videomae-tiny-finetuned")
    assert report["labels"] == LABELS and report["reference"].startswith("transformers")
    assert (out / "TFVideoMAE_hf_videomae-tiny-finetuned.weights.h5").is_file()


def test_safetensors_with_config_converts_through_the_cli(tmp_path):
    folder = save_transformers(tmp_path / "t5", hf.PRETRAINING)
    loose = tmp_path / "loose"
    loose.mkdir()
    (folder / "model.safetensors").rename(loose / "model.safetensors")
    result = run_cli("--checkpoint", loose / "model.safetensors", "--config", folder / "config.json",
                     "--output-dir", tmp_path / "out", "--no-xla", "--no-float64", "--quiet")
    assert result.returncode == 0, result.stderr
    assert _report(tmp_path / "out", "TFVideoMAE_hf_loose")["architecture"] == hf.PRETRAINING


def test_backbone_without_final_layernorm_converts_through_the_cli(tmp_path):
    """A VideoMAEModel saved with use_mean_pooling (no layernorm): converted, parity against
    transformers, the .keras and SavedModel reloads checked by the pipeline, and back out to
    a folder transformers loads."""
    folder = save_transformers(tmp_path / "videomae-tiny-backbone", hf.BACKBONE, use_mean_pooling=True)
    out = tmp_path / "out"
    result = run_cli("--checkpoint", folder, "--output-dir", out, "--no-xla", "--quiet")
    assert result.returncode == 0, result.stderr
    name = "TFVideoMAE_hf_videomae-tiny-backbone"
    report = _report(out, name)
    assert report["passed"] and report["architecture"] == hf.BACKBONE and report["encoder_only"]
    assert report["config"]["final_norm"] is False and report["output_shape"] == [1, 8, 64]
    assert report["checks"]["float64"]["max_abs"] < 1e-10 and report["checks"]["keras"]["passed"]
    back = run_cli("--weights", out / f"{name}.weights.h5", "--to", "hf", "--output", tmp_path / "back",
                   module="converter.export_cli")
    assert back.returncode == 0, back.stderr
    assert "(PASS)" in back.stdout
    assert json.loads((tmp_path / "back" / "config.json").read_text())["use_mean_pooling"] is True


@pytest.mark.parametrize("args,message", [
    (["--variant", "B"], "error: config.json describes width 64, depth 2 (no zoo variant), not ViT-B: drop --variant"),
    (["--stage", "pt"], "error: config.json describes a VideoMAEForVideoClassification (stage ft), not --stage pt"),
    (["--dataset", "ssv2"], "error: config.json has 7 labels, dataset ssv2 has 174"),
])
def test_a_contradicting_request_is_one_error_line(tmp_path, args, message):
    folder = save_hub_style(tmp_path / "hub", hf.CLASSIFIER)
    result = run_cli("--checkpoint", folder, "--output-dir", tmp_path / "out", "--quiet", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_weight_file_without_its_config_is_one_error_line(tmp_path):
    folder = save_transformers(tmp_path / "t5", hf.CLASSIFIER)
    (folder / "config.json").unlink()
    result = run_cli("--checkpoint", folder / "model.safetensors", "--output-dir", tmp_path / "out", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {folder / 'model.safetensors'} is a transformers weight file without "
                                     "its config.json: pass --config path/to/config.json")


class _FakeHub(BaseHTTPRequestHandler):
    """The two routes hf_hub_download uses: HEAD and GET /{repo}/resolve/{revision}/{file}."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        self.server.seen.append(self.path)
        parts = self.path.split("/")
        repo, rest = "/".join(parts[1:3]), parts[3:]
        folder = self.server.repos.get(repo)
        if folder is None or len(rest) != 3 or rest[0] != "resolve":
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body)
        path = folder / rest[2]
        if not path.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
        data = path.read_bytes()
        self._send(200, data, {"X-Repo-Commit": getattr(self.server, "commit", COMMIT), "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                               "Content-Type": "application/octet-stream"}, body)

    def _send(self, status, data, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    server.repos, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_hf_address_downloads_only_what_it_needs_then_converts(tmp_path, fake_hub):
    fake_hub.repos["MCG-NJU/videomae-tiny-finetuned-kinetics"] = save_hub_style(tmp_path / "repo", hf.CLASSIFIER)
    (tmp_path / "repo" / "README.md").write_text("not needed")
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{fake_hub.server_port}", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
    result = run_cli("--checkpoint", "hf://MCG-NJU/videomae-tiny-finetuned-kinetics@main", "--output-dir",
                     tmp_path / "out", "--no-xla", "--no-float64", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    fetched = {p.rsplit("/", 1)[-1] for p in fake_hub.seen}
    assert fetched == {"config.json", "model.safetensors", "pytorch_model.bin"}  # safetensors asked, absent
    report = _report(tmp_path / "out", "TFVideoMAE_hf_videomae-tiny-finetuned-kinetics")
    assert report["passed"] and report["checkpoint"]["container"] == "bin"
    # A repo that is not there: one line, nothing written.
    result = run_cli("--checkpoint", "hf://MCG-NJU/no-such-repo", "--output-dir", tmp_path / "out2", "--quiet",
                     env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot download hf://MCG-NJU/no-such-repo: ")
    assert len(result.stderr.strip().splitlines()) == 1
