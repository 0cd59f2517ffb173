"""Fetch official checkpoints into a local cache: resumable, size- and sha256-checked, atomic.

Official files are 100 MB to 2.5 GB on Google Drive, so an interrupted transfer is resumed from its
`.part` file rather than restarted, and nothing ever appears under the final name until its size
(and sha256, when the registry knows it) has been checked.

gdown was considered for the Drive step, but it owns the whole transfer (its own temp files,
progress and retries), which would bypass the resume/size/sha256 guarantees here; its confirm-page
handling is not public API. The Drive-specific part is therefore the two URL templates and
`_drive_confirm_url` below.
"""
from __future__ import annotations

import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlparse

import requests
from tqdm import tqdm

from .errors import DownloadError
from .export import sha256_file

CHUNK = 1 << 20
TIMEOUT = (15, 60)  # (connect, between bytes) seconds
# confirm=t skips Drive's "cannot scan this large file for viruses" page for files over ~100 MB.
DRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
DRIVE_VIEW_URL = "https://drive.google.com/file/d/{id}/view"
ENV_CACHE = "VMAE_CACHE"
ENV_URL_PREFIX = "VMAE_DOWNLOAD_URL_"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/vmae-convert").expanduser()


def url_override_env(name: str) -> str:
    """The variable that redirects one entry's download, e.g. VMAE_DOWNLOAD_URL_K400_B_1600_FT."""
    return ENV_URL_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def manual_url(entry) -> str:
    """Where a person can fetch the file by hand (a browser handles Drive's pages itself)."""
    src = entry.source
    return DRIVE_VIEW_URL.format(id=src.id) if src.type == "gdrive" else src.url


def fetch_checkpoint(entry, cache=None, progress=True, url_override=None) -> Path:
    """The local path of an entry's official file, downloading it into the cache if needed."""
    dest = Path(cache or cache_dir()) / f"{entry.name}.pth"
    if dest.exists():
        # A cached file may predate the registry learning its hash, or have rotted on disk.
        if entry.sha256:
            actual = sha256_file(dest)
            if actual != entry.sha256:
                raise DownloadError(
                    f"cached {dest} has sha256 {actual} but the registry expects {entry.sha256}; "
                    f"delete it to download again, or pass --checkpoint PATH")
        return dest
    url = url_override or os.environ.get(url_override_env(entry.name))
    if not url:
        url = DRIVE_DOWNLOAD_URL.format(id=entry.source.id) if entry.source.type == "gdrive" else entry.source.url
    return download(url, dest, entry.sha256, progress, manual=manual_url(entry))


def download(url, dest, expected_sha256=None, progress=True, *, manual=None) -> Path:
    """Download url to dest via dest.part, resuming a previous .part; `manual` is the URL to suggest
    to the user when the network is unreachable (defaults to url)."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    manual = manual or url
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest.parent}: {exc.strerror}; set {ENV_CACHE} to a writable folder") from None

    with requests.Session() as session:
        # A Drive confirm page or a refused resume each cost one extra request; more means a loop.
        for _ in range(4):
            offset = part.stat().st_size if part.exists() else 0
            # identity: a compressed body would make byte counts and Range offsets meaningless.
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                resp = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
            except (requests.ConnectionError, requests.Timeout):
                raise DownloadError(
                    f"cannot reach {urlparse(url).netloc} (no network?); download {manual} yourself "
                    f"and pass --checkpoint PATH") from None
            with resp:
                if resp.status_code == 416 and offset:
                    if _content_range(resp)[2] == offset:
                        break  # the .part already holds the whole file
                    part.unlink(missing_ok=True)  # the .part is longer than the file: it cannot be resumed
                    continue
                if resp.status_code >= 400:
                    raise DownloadError(f"HTTP {resp.status_code} from {url}; download {manual} yourself "
                                        f"and pass --checkpoint PATH")
                if "text/html" in resp.headers.get("Content-Type", ""):
                    # A web page instead of a checkpoint: Drive's confirm page, or a quota/permission page.
                    next_url = _drive_confirm_url(resp.text, resp.url)
                    if next_url is None:
                        raise DownloadError(f"{url} returned a web page, not the checkpoint (quota exceeded "
                                            f"or access denied?); download {manual} yourself and pass --checkpoint PATH")
                    url = next_url
                    continue
                if resp.status_code == 206 and _content_range(resp)[0] != offset:
                    part.unlink(missing_ok=True)  # a range we did not ask for: start clean
                    continue
                _receive(resp, part, offset, dest.name, progress)
                break
        else:
            raise DownloadError(f"gave up downloading {url} after repeated redirects or restarts; "
                                f"download {manual} yourself and pass --checkpoint PATH")

    if expected_sha256:
        actual = sha256_file(part)
        if actual != expected_sha256.lower():
            part.unlink()  # a complete file with the wrong bytes: resuming it could never help
            raise DownloadError(f"sha256 mismatch for {dest.name}: expected {expected_sha256}, got {actual}; "
                                f"the download was deleted, try again or check the registry entry")
    os.replace(part, dest)
    return dest


def _content_range(resp):
    """(start, end, total) from 'Content-Range: bytes a-b/total' or 'bytes */total'; None where absent."""
    m = re.fullmatch(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
    if not m:
        return None, None, None
    return tuple(int(g) if g and g != "*" else None for g in m.groups())


def _receive(resp, part: Path, offset: int, label: str, progress: bool) -> None:
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if resp.status_code == 206:
        mode = "ab"
        total = _content_range(resp)[2] or (offset + length if length is not None else None)
    else:
        # 200 to a Range request: the server ignored it and sends the whole file, so start over.
        mode, offset, total = "wb", 0, length

    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
               file=sys.stderr, disable=not (progress and sys.stderr.isatty()))
    try:
        with bar, open(part, mode) as fh:
            for chunk in resp.iter_content(CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
    except requests.RequestException as exc:  # connection dropped, read timeout, short body
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"download of {label} interrupted after {have} of {total or '?'} bytes "
                            f"({type(exc).__name__}); run the same command again to resume") from None
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror}; free some space or set {ENV_CACHE}") from None

    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()  # more bytes than the file has: the .part is garbage
        raise DownloadError(f"download of {label} incomplete: got {size} of {total} bytes; "
                            f"run the same command again to resume")


class _ConfirmForm(HTMLParser):
    """Collects the first form's action and hidden inputs."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self._in_form = None, {}, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self._in_form = a.get("action"), True
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


def _drive_confirm_url(html: str, base: str) -> str | None:
    """The URL behind Drive's "download anyway" button, or None if the page is not that warning."""
    form = _ConfirmForm()
    form.feed(html)
    if not form.action or "confirm" not in form.fields:
        return None
    return urljoin(base, form.action) + "?" + urlencode(form.fields)
