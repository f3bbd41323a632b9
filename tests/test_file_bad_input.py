"""FileSpec's share of the bad-input table: each malformed spec fails clearly, naming
FileSpec and the field, at construction (SpecError) or at first get() (BuildError),
and nothing is cached. The table has the shape every kind shares
(tests/support/bad_input.py)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from handles import FileSpec
from support.bad_input import Bad, check, params

LEAK = "hunter2"  # a literal secret some cases pass: it must never appear in an error
S3_SECRETS = {"key": "env:HANDLES_TEST_S3_KEY", "secret": "env:HANDLES_TEST_S3_SECRET"}


def free_port() -> int:
    # A port nothing listens on: bound, then released.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_codec() -> str:
    import fsspec

    for codec in ("zstd", "lz4"):
        if codec not in fsspec.available_compressions():
            return codec
    pytest.skip("every optional codec is installed here")


def needs(*modules: str) -> Callable[[], object]:
    """Skips a build case where fsspec or one of `modules` is not installed."""

    def importable() -> object:
        for module in ("fsspec", *modules):
            pytest.importorskip(module)
        return None

    return importable


CONSTRUCTION = [
    Bad("no url", FileSpec, lambda t: FileSpec(), "url", "construct", "Field required"),
    Bad("empty url", FileSpec, lambda t: FileSpec(url=""), "url", "construct", "missing path"),
    Bad(
        "protocol without path",
        FileSpec,
        lambda t: FileSpec(url="s3://"),
        "url",
        "construct",
        "missing path",
    ),
    Bad(
        "folder, not file",
        FileSpec,
        lambda t: FileSpec(url="memory://data/"),
        "url",
        "construct",
        "names a folder",
    ),
    Bad(
        "bad URL scheme",
        FileSpec,
        lambda t: FileSpec(url="ht!tp://host/file.csv"),
        "url",
        "construct",
        "bad URL scheme",
    ),
    Bad(
        "chained URL",
        FileSpec,
        lambda t: FileSpec(url="simplecache::s3://bucket/key"),
        "url",
        "construct",
        "chained URLs",
    ),
    Bad(
        "password in URL",
        FileSpec,
        lambda t: FileSpec(url=f"ftp://user:{LEAK}@host/f.csv"),
        "url",
        "construct",
        "contains a password",
    ),
    Bad(
        "NUL in path",
        FileSpec,
        lambda t: FileSpec(url="/tmp/a\0b.csv"),
        "url",
        "construct",
        "contains a NUL character",
    ),
    Bad(
        "append mode",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", mode="ab"),
        "mode",
        "construct",
        "cannot be written atomically",
    ),
    Bad(
        "unknown mode",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", mode="rw"),
        "mode",
        "construct",
        "Input should be",
    ),
    Bad(
        "unknown codec",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", compression="rar"),
        "compression",
        "construct",
        "Input should be",
    ),
    Bad(
        "unknown encoding",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", mode="r", encoding="utf-9"),
        "encoding",
        "construct",
        "unknown",
    ),
    Bad(
        "encoding, binary",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", encoding="utf-8"),
        "encoding",
        "construct",
        "text modes",
    ),
    Bad(
        "track a write",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", mode="wb", track_content=True),
        "track_content",
        "construct",
        "read",
    ),
    Bad(
        "zero block size",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", block_size=0),
        "block_size",
        "construct",
        "greater than 0",
    ),
    Bad(
        "negative block size",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", block_size=-1),
        "block_size",
        "construct",
        "greater than 0",
    ),
    Bad(
        "literal secret option",
        FileSpec,
        lambda t: FileSpec(url="s3://b/k", storage_options={"secret": LEAK}),
        "storage_options",
        "construct",
        "'secret' looks like a credential",
    ),
    Bad(
        "nested literal secret",
        FileSpec,
        lambda t: FileSpec(
            url="s3://b/k", storage_options={"client_kwargs": {"aws_secret_access_key": LEAK}}
        ),
        "storage_options",
        "construct",
        "'client_kwargs.aws_secret_access_key' looks like a credential",
    ),
    Bad(
        "literal in secrets",
        FileSpec,
        lambda t: FileSpec(url="s3://b/k", secrets={"secret": LEAK}),
        "secrets.secret",
        "construct",
        "a reference",
    ),
    Bad(
        "option given twice",
        FileSpec,
        lambda t: FileSpec(
            url="s3://b/k",
            storage_options={"endpoint_url": "http://127.0.0.1:9000"},
            secrets={"endpoint_url": "env:ENDPOINT"},
        ),
        "secrets",
        "construct",
        "given both",
    ),
    Bad(
        "unknown field",
        FileSpec,
        lambda t: FileSpec(url="/tmp/f", path="/tmp/f"),
        "path",
        "construct",
        "Extra inputs are not permitted",
    ),
]

BUILD = [
    Bad(
        "unknown protocol",
        FileSpec,
        lambda t: FileSpec(url="nosuchproto://b/k"),
        "url",
        "build",
        "unknown protocol",
        needs=needs(),
    ),
    Bad(
        "missing file",
        FileSpec,
        lambda t: FileSpec(url=str(t / "none.csv")),
        "url",
        "build",
        "no such file",
        needs=needs(),
    ),
    Bad(
        "directory",
        FileSpec,
        lambda t: FileSpec(url=str(t)),
        "url",
        "build",
        "is a directory",
        needs=needs(),
    ),
    Bad(
        "missing memory file",
        FileSpec,
        lambda t: FileSpec(url=f"memory://bad-input/{t.name}/none.csv"),
        "url",
        "build",
        "no such file",
        needs=needs(),
    ),
    Bad(
        "secret not set",
        FileSpec,
        lambda t: FileSpec(url="s3://b/k", secrets={"key": "env:HANDLES_TEST_UNSET"}),
        "secrets.key",
        "build",
        "HANDLES_TEST_UNSET is not set",
        needs=needs("s3fs"),
    ),
    Bad(
        "codec not installed",
        FileSpec,
        lambda t: FileSpec(url=str(t / "f.zst"), mode="wb", compression=missing_codec()),
        "compression",
        "build",
        "not installed",
        needs=needs(),
    ),
    Bad(
        "unreachable host",
        FileSpec,
        lambda t: FileSpec(
            url="s3://bucket/key.csv",
            storage_options={
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "config_kwargs": {"retries": {"max_attempts": 1}},
            },
            secrets=S3_SECRETS,
        ),
        "url",
        "build",
        "cannot check s3://bucket/key.csv",
        needs=needs("s3fs"),
    ),
]

# Every message is checked for the literal secret some inputs hold.
CASES = [dataclasses.replace(case, secret=LEAK) for case in CONSTRUCTION + BUILD]


@pytest.fixture
def fake_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDLES_TEST_S3_KEY", "testing")
    monkeypatch.setenv("HANDLES_TEST_S3_SECRET", LEAK)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("HANDLES_TEST_UNSET", raising=False)


@pytest.mark.usefixtures("fake_s3_credentials")
@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Bad, tmp_path: Path) -> None:
    check(case, tmp_path)


def test_a_missing_driver_package_names_the_extra(run_python: Callable[[str], str]) -> None:
    pytest.importorskip("fsspec")
    # A fresh interpreter where s3fs cannot be imported, as on a machine without it.
    script = (
        "import sys\n"
        "sys.modules['s3fs'] = None\n"
        "import handles\n"
        "spec = handles.FileSpec(url='s3://bucket/key.csv')\n"
        "try:\n"
        "    spec.get()\n"
        "except handles.MissingDependencyError as exc:\n"
        "    print(type(exc).__name__, exc, spec in handles.registry(), sep='|')\n"
    )
    out = run_python(script)
    assert out == 'MissingDependencyError|FileSpec needs s3fs: pip install "handle-specs[s3]"|False'
