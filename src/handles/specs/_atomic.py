"""Replace one file atomically through an fsspec filesystem.

Readers see the old content or the new content, never a mix, and a writer that
dies (an exception, or SIGKILL) leaves the old content (or no file) in place.

Two ways, chosen by the caller:

- Temp beside the target, then rename (`replace_via_temp`): for local disks,
  SFTP, HDFS and the memory filesystem. The temp file sits in the target's own
  folder, so the final rename stays on one filesystem, where it is atomic. It is
  named `.NAME.TAG.PID.RANDOM.tmp` (TAG ties it to this target on this host).
  On a local disk it is created with the target's mode (a private 0600 file
  is never copied into a wider one; a new target gets what the umask allows),
  removed when the write fails, and held under an advisory lock while written:
  a writer killed mid-write leaves it behind, and the next write of the same
  target on this host removes every such leftover whose writer is gone (its
  process has exited and its lock is free). Elsewhere (SFTP, HDFS) leftovers
  stay: the writer's liveness cannot be seen from here.
- A held-back upload (`held_upload`): for object stores (S3), where an upload
  is already atomic: an object only appears when its PUT, or its multipart
  upload, completes. The data goes straight to the target; the upload is
  completed on success and aborted on error. A writer killed mid-write leaves
  at most an incomplete multipart upload, which is invisible and which a bucket
  lifecycle rule (AbortIncompleteMultipartUpload) removes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, no leftover cleaning
    fcntl = None  # type: ignore[assignment]

__all__ = ["held_upload", "replace_via_temp", "temp_name_for"]

# Bytes of the target's name kept in a temp name: the rest stays under NAME_MAX (255).
_NAME_BYTES = 100


def temp_name_for(path: str) -> str:
    """A unique hidden name in the same folder as `path`, naming this process."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f"{_temp_prefix(name)}{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _temp_prefix(name: str) -> str:
    # `.NAME.TAG.`: NAME shortened to fit, TAG a digest of host and full name, so
    # the prefix finds this target's temp files written on this host, and only those.
    short = name.encode("utf-8", "surrogateescape")[:_NAME_BYTES].decode("utf-8", "ignore")
    tag = hashlib.sha256(f"{socket.gethostname()}\0{name}".encode("utf-8", "surrogatepass"))
    return f".{short}.{tag.hexdigest()[:8]}."


@contextmanager
def replace_via_temp(fs: Any, path: str, *, local: bool, **open_options: Any) -> Iterator[Any]:
    """Yield a binary file that replaces `path` when the block ends without error."""
    folder = posixpath.dirname(path)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    temp = temp_name_for(path)
    if local:
        remove_leftovers(path)
        f: Any = _create_local_temp(temp, path)
    else:
        f = fs.open(temp, "wb", **open_options)
    try:
        yield f
        if local:
            _flush_to_disk(f)
        f.close()
        if local:
            # os.replace is the atomic step; fsspec's local mv may fall back to copying.
            os.replace(temp, path)
        else:
            fs.mv(temp, path)
    except BaseException:
        with suppress(Exception):
            f.close()
        with suppress(Exception):
            if local:
                os.remove(temp)
            else:
                fs.rm(temp)
        raise


def _create_local_temp(temp: str, target: str) -> IO[bytes]:
    """Open `temp` for writing, new, with `target`'s mode from the first byte, and locked."""
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None  # a new target: what the umask allows
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    # Created no wider than the target (the umask may narrow it further) ...
    fd = os.open(temp, flags, 0o666 if mode is None else mode & 0o777)
    try:
        if mode is not None:
            # ... then given exactly its mode, before any byte is written.
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # pragma: no cover - Windows
                os.chmod(temp, mode)
        if fcntl is not None:
            # Held until close: a leftover whose lock is free has lost its writer.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.remove(temp)
        raise


def remove_leftovers(path: str) -> list[str]:
    """Remove temp files of `path` left by writers on this host that are gone; return them.

    A temp file is removed only when the process named in it has exited and
    nobody holds its lock, so a live writer's file (in this or another process,
    between creating and locking it, or after closing it) is never touched.
    POSIX only.
    """
    if fcntl is None or os.name != "posix":
        return []
    folder, name = os.path.split(path)
    prefix = _temp_prefix(name)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        candidate = os.path.join(folder, entry)
        if _remove_if_unlocked(candidate):
            removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _remove_if_unlocked(path: str) -> bool:
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a writer holds it
        try:
            os.remove(path)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


@contextmanager
def held_upload(fs: Any, path: str, **open_options: Any) -> Iterator[Any]:
    """Yield a binary file whose upload becomes visible only when the block ends without error."""
    # s3fs sends a small file in one PUT at close() and a large one as a
    # multipart upload completed at close(): either way nothing is visible
    # before close(), so close() is the one atomic step, and it must not run
    # when the block fails.
    f = fs.open(path, "wb", **open_options)
    try:
        yield f
    except BaseException:
        with suppress(Exception):
            f.discard()  # aborts the multipart upload, if one was started
        f.closed = True  # so no finalizer calls close() and uploads the rest
        raise
    f.close()


def _flush_to_disk(f: Any) -> None:
    # Without fsync, a power cut after the rename can leave an empty file on
    # some filesystems; SIGKILL alone could not, but the cost is one sync per write.
    f.flush()
    os.fsync(f.fileno())
