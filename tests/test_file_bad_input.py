"""FileSpec's share of the bad-input table: each malformed spec fails clearly, naming
FileSpec and the field, at construction (SpecError) or at first get() (BuildError),
and nothing is cached."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import handles
from handles import BuildError, FileSpec, SpecError

LEAK = "hunter2"  # a literal secret some cases pass: it must never appear in an error

# (case, fields, field the error names, words the message holds)
CONSTRUCTION: list[tuple[str, dict[str, Any], str, str]] = [
    ("no url", {}, "url", "Field required"),
    ("empty url", {"url": ""}, "url", "missing path"),
    ("protocol without path", {"url": "s3://"}, "url", "missing path"),
    ("folder, not file", {"url": "memory://data/"}, "url", "names a folder"),
    ("bad URL scheme", {"url": "ht!tp://host/file.csv"}, "url", "bad URL scheme"),
    ("chained URL", {"url": "simplecache::s3://bucket/key"}, "url", "chained URLs"),
    ("password in URL", {"url": f"ftp://user:{LEAK}@host/f.csv"}, "url", "contains a password"),
    ("append mode", {"url": "/tmp/f", "mode": "ab"}, "mode", "cannot be written atomically"),
    ("unknown mode", {"url": "/tmp/f", "mode": "rw"}, "mode", "Input should be"),
    ("unknown codec", {"url": "/tmp/f", "compression": "rar"}, "compression", "Input should be"),
    (
        "unknown encoding",
        {"url": "/tmp/f", "mode": "r", "encoding": "utf-9"},
        "encoding",
        "unknown",
    ),
    ("encoding, binary", {"url": "/tmp/f", "encoding": "utf-8"}, "encoding", "text modes"),
    (
        "track a write",
        {"url": "/tmp/f", "mode": "wb", "track_content": True},
        "track_content",
        "read",
    ),
    ("zero block size", {"url": "/tmp/f", "block_size": 0}, "block_size", "greater than 0"),
    ("negative block size", {"url": "/tmp/f", "block_size": -1}, "block_size", "greater than 0"),
    (
        "literal secret option",
        {"url": "s3://b/k", "storage_options": {"secret": LEAK}},
        "storage_options",
        "'secret' looks like a credential",
    ),
    (
        "nested literal secret",
        {"url": "s3://b/k", "storage_options": {"client_kwargs": {"aws_secret_access_key": LEAK}}},
        "storage_options",
        "'client_kwargs.aws_secret_access_key' looks like a credential",
    ),
    (
        "literal in secrets",
        {"url": "s3://b/k", "secrets": {"secret": LEAK}},
        "secrets.secret",
        "a reference",
    ),
    (
        "option given twice",
        {
            "url": "s3://b/k",
            "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
            "secrets": {"endpoint_url": "env:ENDPOINT"},
        },
        "secrets",
        "given both",
    ),
    (
        "unknown field",
        {"url": "/tmp/f", "path": "/tmp/f"},
        "path",
        "Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [pytest.param(f, field, w, id=case) for case, f, field, w in CONSTRUCTION],
)
def test_construction_refuses_with_a_spec_error(fields: dict[str, Any], field: str, words: str):
    with pytest.raises(SpecError) as info:
        FileSpec(**fields)
    message = str(info.value)
    assert f"FileSpec.{field}: " in message
    assert words in message
    assert LEAK not in message
    assert info.value.kind == "FileSpec"
    assert any(name == field for name, _ in info.value.problems)


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


S3_SECRETS = {"key": "env:HANDLES_TEST_S3_KEY", "secret": "env:HANDLES_TEST_S3_SECRET"}

# (case, fields from a temp folder, field the error names, words, packages needed)
BUILD: list[tuple[str, Callable[[Path], dict[str, Any]], str, str, tuple[str, ...]]] = [
    ("unknown protocol", lambda tmp: {"url": "nosuchproto://b/k"}, "url", "unknown protocol", ()),
    ("missing file", lambda tmp: {"url": str(tmp / "none.csv")}, "url", "no such file", ()),
    ("directory", lambda tmp: {"url": str(tmp)}, "url", "is a directory", ()),
    (
        "missing memory file",
        lambda tmp: {"url": f"memory://bad-input/{tmp.name}/none.csv"},
        "url",
        "no such file",
        (),
    ),
    (
        "secret not set",
        lambda tmp: {"url": "s3://b/k", "secrets": {"key": "env:HANDLES_TEST_UNSET"}},
        "secrets.key",
        "HANDLES_TEST_UNSET is not set",
        ("s3fs",),
    ),
    (
        "codec not installed",
        lambda tmp: {"url": str(tmp / "f.zst"), "mode": "wb", "compression": missing_codec()},
        "compression",
        "not installed",
        (),
    ),
    (
        "unreachable host",
        lambda tmp: {
            "url": "s3://bucket/key.csv",
            "storage_options": {
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "config_kwargs": {"retries": {"max_attempts": 1}},
            },
            "secrets": S3_SECRETS,
        },
        "url",
        "cannot check s3://bucket/key.csv",
        ("s3fs",),
    ),
]


@pytest.fixture
def fake_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDLES_TEST_S3_KEY", "testing")
    monkeypatch.setenv("HANDLES_TEST_S3_SECRET", LEAK)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("HANDLES_TEST_UNSET", raising=False)


@pytest.mark.usefixtures("fake_s3_credentials")
@pytest.mark.parametrize(
    ("make", "field", "words", "needs"),
    [pytest.param(m, field, w, n, id=case) for case, m, field, w, n in BUILD],
)
def test_first_get_raises_a_build_error_and_caches_nothing(
    tmp_path: Path,
    make: Callable[[Path], dict[str, Any]],
    field: str,
    words: str,
    needs: tuple[str, ...],
):
    pytest.importorskip("fsspec")
    for module in needs:
        pytest.importorskip(module)
    spec = FileSpec(**make(tmp_path))
    for attempt in (1, 2):
        with pytest.raises(BuildError) as info:
            spec.get()
        message = str(info.value)
        assert f"FileSpec.{field}: " in message
        assert words in message
        assert LEAK not in message
        assert isinstance(info.value.__cause__, SpecError)
        stats = handles.registry().stats()[spec.cache_key()]
        assert (stats.builds, stats.errors, stats.live) == (0, attempt, 0)
    assert spec not in handles.registry()


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
