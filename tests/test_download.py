"""Downloads against a local HTTP server on 127.0.0.1: resume, truncation, checksum, Drive confirm page.

No test reaches beyond 127.0.0.1: the Drive URL template is pointed at a closed local port for every
test, and the ones that exercise the Drive path point it at the local server.
"""
from __future__ import annotations

import dataclasses
import os
import hashlib
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from converter import download as dl
from converter.errors import DownloadError
from converter.registry import DEFAULT_PATH, load_registry

PAYLOAD = random.Random(0).randbytes(3 * (1 << 20) + 12345)  # several chunks, not chunk-aligned
SHA = hashlib.sha256(PAYLOAD).hexdigest()
HALF = len(PAYLOAD) // 2


class _Handler(BaseHTTPRequestHandler):
    """/file serves PAYLOAD (Range-aware unless told otherwise); /confirm mimics Drive's warning
    page, whose form leads to /file; /quota is an HTML page with no way through."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Range")))
        path = urlparse(self.path).path
        if path == "/confirm":
            self._send(200, b'<html><body><form id="download-form" action="/file" method="get">'
                            b'<input type="hidden" name="id" value="abc">'
                            b'<input type="hidden" name="confirm" value="t">'
                            b'<input type="hidden" name="uuid" value="u-1">'
                            b'<input type="submit" value="Download anyway"></form></body></html>',
                       {"Content-Type": "text/html; charset=utf-8"})
        elif path == "/quota":
            self._send(200, b"<html><body>Too many users have viewed or downloaded this file.</body></html>",
                       {"Content-Type": "text/html"})
        elif path == "/file":
            self._serve_file()
        else:
            self._send(404, b"not here", {})

    def _serve_file(self):
        srv, size = self.server, len(PAYLOAD)
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m is None or srv.ignore_range:
            status, start, extra = 200, 0, {}
        elif int(m.group(1)) >= size:
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
        else:
            start = int(m.group(1))
            status, extra = 206, {"Content-Range": f"bytes {start}-{size - 1}/{size}"}
        body = PAYLOAD[start:]
        # Announce the full length but stop early: what a dropped connection looks like to the client.
        sent = body if srv.truncate_to is None else body[:srv.truncate_to]
        self._send(status, sent, {"Content-Type": "application/octet-stream", **extra}, length=len(body))

    def _send(self, status, body, headers, length=None):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.seen, httpd.ignore_range, httpd.truncate_to = [], False, None
    port = httpd.server_address[1]
    httpd.url = lambda path: f"http://127.0.0.1:{port}{path}"
    # A short poll interval: shutdown() waits up to one interval, per test.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(autouse=True)
def _offline_drive_and_private_cache(monkeypatch, tmp_path):
    # Belt and braces: no test can reach Google Drive or write to the user's real cache.
    monkeypatch.setattr(dl, "DRIVE_DOWNLOAD_URL", f"http://127.0.0.1:{_closed_port()}/drive?id={{id}}")
    monkeypatch.setenv("VMAE_CACHE", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith(dl.ENV_URL_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def entry():
    e = next(e for e in load_registry(DEFAULT_PATH) if e.name == "k400-b-1600-ft")
    return dataclasses.replace(e, sha256=SHA)


def _part(dest):
    return dest.with_name(dest.name + ".part")


# ---------------------------------------------------------------- download()


def test_download_with_checksum(server, tmp_path, capfd):
    dest = tmp_path / "sub" / "model.pth"
    assert dl.download(server.url("/file"), dest, SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert server.seen == [("/file", None)]
    assert capfd.readouterr().err == ""  # stderr is not a TTY here: no progress bar output


def test_resume_requests_only_the_rest(server, tmp_path):
    dest = tmp_path / "model.pth"
    _part(dest).write_bytes(PAYLOAD[:HALF])
    dl.download(server.url("/file"), dest, SHA)
    assert server.seen == [("/file", f"bytes={HALF}-")]
    assert dest.read_bytes() == PAYLOAD and not _part(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "model.pth"
    _part(dest).write_bytes(b"\0" * HALF)  # wrong bytes: must be discarded, not appended to
    dl.download(server.url("/file"), dest, SHA)
    assert server.seen == [("/file", f"bytes={HALF}-")]
    assert dest.read_bytes() == PAYLOAD


def test_truncated_response_fails_then_resumes(server, tmp_path):
    server.truncate_to = HALF
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError, match="resume") as err:
        dl.download(server.url("/file"), dest, SHA)
    assert "\n" not in str(err.value)
    assert not dest.exists()
    kept = _part(dest).stat().st_size
    assert 0 < kept < len(PAYLOAD)

    server.truncate_to = None  # the next run picks up where the last one stopped
    dl.download(server.url("/file"), dest, SHA)
    assert server.seen[-1] == ("/file", f"bytes={kept}-")
    assert dest.read_bytes() == PAYLOAD


def test_truncated_response_without_checksum_still_fails(server, tmp_path):
    server.truncate_to = 1000
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError):
        dl.download(server.url("/file"), dest)  # only the size check can catch this one
    assert not dest.exists()


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "model.pth"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError) as err:
        dl.download(server.url("/file"), dest, wrong)
    assert wrong in str(err.value) and SHA in str(err.value)
    assert not dest.exists() and not _part(dest).exists()


def test_complete_part_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "model.pth"
    _part(dest).write_bytes(PAYLOAD)
    dl.download(server.url("/file"), dest, SHA)  # server answers 416: nothing left to send
    assert server.seen == [("/file", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_part_longer_than_file_is_restarted(server, tmp_path):
    dest = tmp_path / "model.pth"
    _part(dest).write_bytes(PAYLOAD + b"junk")
    dl.download(server.url("/file"), dest, SHA)
    assert [r for _, r in server.seen] == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_no_network_tells_user_to_download_by_hand(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/file"
    with pytest.raises(DownloadError) as err:
        dl.download(url, tmp_path / "model.pth")
    msg = str(err.value)
    assert "--checkpoint" in msg and url in msg and "\n" not in msg
    assert not (tmp_path / "model.pth").exists()


def test_http_error_and_html_page_are_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(server.url("/missing"), tmp_path / "a.pth")
    with pytest.raises(DownloadError, match="web page"):
        dl.download(server.url("/quota"), tmp_path / "b.pth")
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()


# ---------------------------------------------------------------- fetch_checkpoint()


def test_fetch_follows_drive_confirm_page(server, tmp_path, entry, monkeypatch):
    monkeypatch.setattr(dl, "DRIVE_DOWNLOAD_URL", server.url("/confirm?id={id}"))
    path = dl.fetch_checkpoint(entry, cache=tmp_path)
    assert path == tmp_path / "k400-b-1600-ft.pth" and path.read_bytes() == PAYLOAD
    first, second = server.seen[0][0], server.seen[1][0]
    assert first == f"/confirm?id={entry.source.id}"
    assert urlparse(second).path == "/file"
    assert parse_qs(urlparse(second).query) == {"id": ["abc"], "confirm": ["t"], "uuid": ["u-1"]}


def test_fetch_uses_cache_and_reverifies_it(server, tmp_path, entry):
    path = dl.fetch_checkpoint(entry, cache=tmp_path, url_override=server.url("/file"))
    assert path.read_bytes() == PAYLOAD
    assert dl.fetch_checkpoint(entry, cache=tmp_path, url_override=server.url("/file")) == path
    assert len(server.seen) == 1  # the second call was served from the cache

    path.write_bytes(PAYLOAD[:-1] + b"x")  # rot on disk
    with pytest.raises(DownloadError, match="cached .* sha256"):
        dl.fetch_checkpoint(entry, cache=tmp_path, url_override=server.url("/file"))
    assert len(server.seen) == 1


def test_fetch_url_from_environment_and_default_cache(server, entry, monkeypatch, tmp_path):
    monkeypatch.setenv("VMAE_DOWNLOAD_URL_K400_B_1600_FT", server.url("/file"))
    path = dl.fetch_checkpoint(entry)
    assert path == tmp_path / "cache" / "k400-b-1600-ft.pth"  # $VMAE_CACHE from the autouse fixture
    assert path.read_bytes() == PAYLOAD


def test_fetch_without_network_names_the_drive_page(tmp_path, entry):
    with pytest.raises(DownloadError) as err:
        dl.fetch_checkpoint(entry, cache=tmp_path)  # Drive template points at a closed local port
    msg = str(err.value)
    assert f"https://drive.google.com/file/d/{entry.source.id}/view" in msg
    assert "--checkpoint PATH" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VMAE_CACHE", str(tmp_path / "c"))
    assert dl.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VMAE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dl.cache_dir() == tmp_path / ".cache" / "vmae-convert"
