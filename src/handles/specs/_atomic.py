"""Replace one file atomically through an fsspec filesystem.

Readers see the old content or the new content, never a mix, and a writer that
dies (an exception, or SIGKILL) leaves the old content (or no file) in place.

Two ways, chosen by the caller:

- Temp beside the target, then rename (`replace_via_temp`): for local disks,
  SFTP, HDFS and the memory filesystem. The temp file sits in the target's own
  folder, so the final rename stays on one filesystem, where it is atomic. A
  writer killed mid-write leaves a hidden `.NAME.*.tmp` file beside the target.
- A held-back upload (`held_upload`): for object stores (S3), where an upload
  is already atomic: an object only appears when its PUT, or its multipart
  upload, completes. The data goes straight to the target; the upload is
  completed on success and aborted on error. A writer killed mid-write leaves
  at most an incomplete multipart upload, which is invisible and which a bucket
  lifecycle rule (AbortIncompleteMultipartUpload) removes.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

__all__ = ["held_upload", "replace_via_temp", "temp_name_for"]


def temp_name_for(path: str) -> str:
    """A unique hidden name in the same folder as `path`."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def replace_via_temp(fs: Any, path: str, *, local: bool, **open_options: Any) -> Iterator[Any]:
    """Yield a binary file that replaces `path` when the block ends without error."""
    folder = posixpath.dirname(path)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    temp = temp_name_for(path)
    f = fs.open(temp, "wb", **open_options)
    try:
        yield f
        if local:
            _flush_to_disk(f)
        f.close()
        if local:
            _keep_permissions(path, temp)
            # os.replace is the atomic step; fsspec's local mv may fall back to copying.
            os.replace(temp, path)
        else:
            fs.mv(temp, path)
    except BaseException:
        with suppress(Exception):
            f.close()
        with suppress(Exception):
            fs.rm(temp)
        raise


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


def _keep_permissions(path: str, temp: str) -> None:
    # A replaced file keeps its mode bits (a private 0600 file stays private).
    with suppress(FileNotFoundError):
        os.chmod(temp, os.stat(path).st_mode & 0o7777)
