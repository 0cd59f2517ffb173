"""Writing artifacts so that a final name only ever holds a finished, checked file.

Everything is written into a staging folder beside the outputs and moved under its final
name with os.replace (atomic on one filesystem) only after every parity check passed.
A failure or an interrupt leaves the staging folder behind at worst, never a final name;
`stale_staging` finds such leftovers so a re-run can clear them.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import ExportError

STAGING_PREFIX = ".staging-"
LOCK_NAME = ".lock"


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_size(folder) -> int:
    """Bytes in all the files under `folder` (a SavedModel)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def describe_os_error(err: OSError, path) -> str:
    if err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}: free some space or choose another --output-dir"
    if err.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}: free some space or choose another --output-dir"
    if err.errno == errno.EFBIG:
        return f"file size limit exceeded while writing {path} (see ulimit -f): raise it or choose another --output-dir"
    if err.errno == errno.EROFS:
        return f"cannot write to {path}: read-only file system (choose another --output-dir)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write to {path}: permission denied (choose another --output-dir)"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot write to {path}: it (or a parent) is a file, not a folder (choose another --output-dir)"
    return f"cannot write {path}: {err.strerror or err}"


def check_writable(output_dir) -> None:
    """Create the output folder and write a probe file, so an unusable --output-dir fails in a
    second instead of after the whole conversion."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as err:
        raise ExportError(describe_os_error(err, out)) from None


def stale_staging(output_dir) -> list[Path]:
    out = Path(output_dir)
    return sorted(out.glob(STAGING_PREFIX + "*")) if out.is_dir() else []


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier conversion in this process: its `with` is over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _in_use(staging: Path, pid: int) -> bool:
    """A staging folder is live while its writer holds the flock on its `.lock` (the kernel drops
    it when the process dies, SIGKILL included); a folder without one falls back to the pid."""
    try:
        fd = os.open(staging / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return _pid_alive(pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def clear_stale(output_dir, name: str) -> list[Path]:
    """Remove what killed runs for artifact `name` left: `.staging-<name>-<pid>` folders and
    `.<name>.*.<pid>.tmp` files whose writer is gone. Never a final name, never a live run's."""
    out, removed = Path(output_dir), []
    prefix = f"{STAGING_PREFIX}{name}-"
    for old in stale_staging(out):
        pid = old.name[len(prefix):]
        if old.name.startswith(prefix) and pid.isdigit() and not _in_use(old, int(pid)):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    for tmp in out.glob(f".{name}.*.tmp") if out.is_dir() else ():
        pid = tmp.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_weights_h5(model, path) -> None:
    """`model.save_weights(path)`, except that HDF5 writes into memory and Python writes the file.

    HDF5 crashes the process (a segfault in h5py's File.close) when the OS refuses one of its
    writes, disk full or ulimit -f; Python's own write raises an OSError that ends in one line."""
    try:
        from keras.src.saving import saving_lib

        store_cls, save_state = saving_lib.H5IOStore, saving_lib._save_state
    except (ImportError, AttributeError):  # keras internals moved: the plain call
        model.save_weights(path)
        return
    buffer = io.BytesIO()
    store = store_cls(buffer, mode="w")
    save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    Path(path).write_bytes(buffer.getbuffer())


class Staging:
    """`with Staging(out, name) as st:` write into st.path(...), then st.publish(...)."""

    def __init__(self, output_dir, name: str):
        self.output_dir = Path(output_dir)
        self.name = name
        self.dir = self.output_dir / f"{STAGING_PREFIX}{name}-{os.getpid()}"

    def __enter__(self):
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            clear_stale(self.output_dir, self.name)  # what a killed earlier run of this artifact left
            self.dir.mkdir()
            self._lock = os.open(self.dir / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # held until we exit, or the kernel drops it
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            self.__exit__(None, None, None)
            raise ExportError(describe_os_error(err, self.output_dir)) from None
        return self

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def publish(self, filenames: list[str], stale=()) -> dict[str, Path]:
        """Move staged files/folders under their final names; returns final paths.

        `stale` (the previous report) is removed before the first move: a run cut off between
        two moves must not leave an older report vouching for a mix of old and new files."""
        final = {}
        try:
            for old in stale:
                Path(old).unlink(missing_ok=True)
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
        if getattr(self, "_lock", None) is not None:
            os.close(self._lock)
            self._lock = None
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
                # Weights are stored as they are: float32 values deflate by under 10% and
                # deflating gigabytes was most of an export's time. The graph still deflates.
                stored = path.parent.name == "variables" and path.name.startswith("variables.data")
                info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
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
