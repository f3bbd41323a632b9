"""FileSpec's contract cases: a local file, one in fsspec's memory filesystem, and a tracked one.

S3 is left out here (it needs a server per test session); tests/test_file.py covers it.
"""

from __future__ import annotations

from pathlib import Path

from support.cases import KindCase

try:
    import fsspec
except ImportError:  # the cases are then skipped through `requires`
    fsspec = None

from handles import FileSpec


def local_file(tmp: Path, **fields: object) -> FileSpec:
    path = tmp / "data.bin"
    path.write_bytes(b"local bytes\n")
    return FileSpec(url=str(path), **fields)


def memory_file(tmp: Path) -> FileSpec:
    # Named after tmp, so cases in one process never share a memory file.
    url = f"memory://handles-tests/{tmp.name}/data.bin"
    fsspec.filesystem("memory").pipe(url, b"memory bytes\n")
    return FileSpec(url=url)


def alive(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(fs.exists("/"))


CASES = [
    KindCase(
        name="file-local",
        make=local_file,
        placement_variant=lambda s: s.replace(block_size=4096),
        # Files of one filesystem share one live object: a second object needs
        # other filesystem options.
        identity_variant=lambda s: s.replace(storage_options={"auto_mkdir": True}),
        broken=lambda tmp: FileSpec(url=str(tmp / "missing.bin")),
        alive=alive,
        requires=("fsspec",),
    ),
    KindCase(
        name="file-memory",
        make=memory_file,
        placement_variant=lambda s: s.replace(block_size=4096),
        identity_variant=lambda s: s.replace(storage_options={"use_listings_cache": False}),
        broken=lambda tmp: FileSpec(url=f"memory://handles-tests/{tmp.name}/missing.bin"),
        alive=alive,
        requires=("fsspec",),
    ),
    KindCase(
        name="file-tracked",
        make=lambda tmp: local_file(tmp, track_content=True),
        placement_variant=lambda s: s.replace(block_size=4096),
        identity_variant=lambda s: s.replace(storage_options={"auto_mkdir": True}),
        broken=lambda tmp: FileSpec(url=str(tmp / "missing.bin"), track_content=True),
        alive=alive,
        requires=("fsspec",),
    ),
]
