"""Writing artifacts so that a final name only ever holds a finished, checked file.

Everything is written into a staging folder beside the outputs and moved under its final
name with os.replace (atomic on one filesystem) only after every parity check passed.
A failure or an interrupt leaves the staging folder behind at worst, never a final name;
`stale_staging` finds such leftovers so a re-run can clear them.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

from .errors import ExportError

STAGING_PREFIX = ".staging-"


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_os_error(err: OSError, path) -> str:
    if err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {path}: permission denied (choose another --output-dir)"
    return f"cannot write {path}: {err.strerror or err}"


def stale_staging(output_dir) -> list[Path]:
    out = Path(output_dir)
    return sorted(out.glob(STAGING_PREFIX + "*")) if out.is_dir() else []


class Staging:
    """`with Staging(out, name) as st:` write into st.path(...), then st.publish(...)."""

    def __init__(self, output_dir, name: str):
        self.output_dir = Path(output_dir)
        self.name = name
        self.dir = self.output_dir / f"{STAGING_PREFIX}{name}-{os.getpid()}"

    def __enter__(self):
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for old in stale_staging(self.output_dir):
                if old.name.startswith(f"{STAGING_PREFIX}{self.name}-"):
                    shutil.rmtree(old, ignore_errors=True)  # a killed earlier run of this artifact
            self.dir.mkdir()
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ExportError(describe_os_error(err, self.output_dir)) from None
        return self

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def publish(self, filenames: list[str]) -> dict[str, Path]:
        """Move staged files/folders under their final names; returns final paths."""
        final = {}
        try:
            for filename in filenames:
                src, dst = self.dir / filename, self.output_dir / filename
                if src.is_dir():
                    trash = self.dir / (filename + ".old")
                    if dst.exists():
                        os.replace(dst, trash)
                    os.replace(src, dst)
                else:
                    os.replace(src, dst)
                final[filename] = dst
        except OSError as err:
            raise ExportError(describe_os_error(err, self.output_dir)) from None
        return final

    def __exit__(self, exc_type, exc, tb):
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def zip_folder(folder: Path, zip_path: Path) -> None:
    """Zip `folder` with its name as the top entry; fixed timestamps so equal content gives
    equal bytes (and an equal sha256) on every run."""
    folder = Path(folder)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            arcname = str(Path(folder.name) / path.relative_to(folder))
            info = zipfile.ZipInfo(arcname + ("/" if path.is_dir() else ""), date_time=(1980, 1, 1, 0, 0, 0))
            if path.is_dir():
                info.external_attr = 0o40755 << 16
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)  # streamed: variables can be GBs


def write_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ExportError(describe_os_error(err, path)) from None
