"""FileSpec on three real stores: the local disk, fsspec's memory filesystem, and S3
(s3fs against moto's standalone server, started on loopback by these tests)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import handles
from handles import BuildError, FileSpec
from handles.specs._paths import absolute

fsspec = pytest.importorskip("fsspec")

KEY_ENV, SECRET_ENV = "HANDLES_TEST_S3_KEY", "HANDLES_TEST_S3_SECRET"
SECRET_VALUE = "s3-secret-value-that-must-not-leak"
MIB = 1 << 20


# -- stores -------------------------------------------------------------------------


@dataclass
class Store:
    name: str
    base: str  # URL prefix of a fresh, empty folder (or bucket)
    fields: dict[str, Any] = field(default_factory=dict)  # storage options and secrets
    raw: Any = None  # an fsspec filesystem for checking behind the spec's back

    def spec(self, name: str, **fields: Any) -> FileSpec:
        return FileSpec(url=f"{self.base}/{name}", **self.fields, **fields)

    def leftovers(self) -> list[str]:
        """Everything in the store's folder, and unfinished uploads."""
        names = sorted(p.rsplit("/", 1)[1] for p in self.raw.ls(self.path(""), detail=False))
        if self.name == "s3":
            bucket = self.base.removeprefix("s3://")
            names += [f"upload:{u['Key']}" for u in self.raw.list_multipart_uploads(bucket)]
        return names

    def path(self, name: str) -> str:
        return fsspec.core.strip_protocol(f"{self.base}/{name}").rstrip("/")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs", reason="S3 tests need s3fs")
    server_module = pytest.importorskip("moto.server", reason="S3 tests need moto[server]")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials under names botocore does not read, so only the spec's secrets work."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(KEY_ENV, "testing-key-id")
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    # These specs travel as JSON too: the worker allows their secrets, sent only
    # to the test buckets on the loopback moto server (see docs/security.md).
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:HANDLES_TEST_S3_*")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "handles-*,127.0.0.1")
    return dict(os.environ)


def s3_store(endpoint: str) -> Store:
    import s3fs

    bucket = f"handles-{uuid.uuid4().hex[:12]}"
    raw = s3fs.S3FileSystem(
        key="testing-key-id", secret=SECRET_VALUE, endpoint_url=endpoint, skip_instance_cache=True
    )
    raw.mkdir(bucket)
    fields = {
        "storage_options": {"endpoint_url": endpoint},
        "secrets": {"key": f"env:{KEY_ENV}", "secret": f"env:{SECRET_ENV}"},
    }
    return Store("s3", f"s3://{bucket}", fields, raw)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        (tmp_path / "store").mkdir()
        yield Store("local", str(tmp_path / "store"), raw=fsspec.filesystem("file"))
    elif request.param == "memory":
        memory = fsspec.filesystem("memory")
        base = f"memory://handles-tests/{uuid.uuid4().hex}"
        yield Store("memory", base, raw=memory)
        with suppress(FileNotFoundError):
            memory.rm(fsspec.core.strip_protocol(base), recursive=True)
    else:
        request.getfixturevalue("s3_env")
        yield s3_store(request.getfixturevalue("moto_endpoint"))


def read_back(spec: FileSpec) -> Any:
    with spec.replace(mode="r" if spec.mode == "w" else "rb").open() as f:
        return f.read()


# -- get() and open() ----------------------------------------------------------------


def test_get_is_the_process_filesystem_and_ours_alone(store: Store) -> None:
    spec = store.spec("data.bin", mode="wb")
    fs = spec.get()
    assert isinstance(fs, fsspec.AbstractFileSystem)
    assert spec.get() is fs
    assert FileSpec.model_validate_json(spec.model_dump_json()).get() is fs
    # Built with skip_instance_cache: closing the registry never pulls a
    # filesystem out from under other fsspec users in the process.
    assert fs is not fsspec.filesystem(spec.protocol, **spec.storage_options)


@pytest.mark.parametrize(
    ("mode", "compression", "payload"),
    [
        ("wb", None, b"\x00binary\xff" * 1000),
        ("w", None, "text, caf\u00e9\n" * 1000),
        ("wb", "gzip", b"gzip me " * 1000),
        ("w", "bz2", "bz2 text\n" * 1000),
    ],
)
def test_write_then_read_round_trip(
    store: Store, mode: str, compression: str | None, payload: Any
) -> None:
    spec = store.spec("dir/data.out", mode=mode, compression=compression)
    with spec.open() as f:
        f.write(payload)
    assert read_back(spec) == payload
    if compression is not None:
        on_store = store.raw.cat_file(store.path("dir/data.out"))
        assert on_store != (payload if mode == "wb" else payload.encode())
    assert store.leftovers() == ["dir"]


def test_compression_inferred_from_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "table.csv.xz"
    spec = FileSpec(url=str(target), mode="w", compression="infer")
    with spec.open() as f:
        f.write("a,b\n1,2\n")
    import lzma

    assert lzma.decompress(target.read_bytes()) == b"a,b\n1,2\n"
    assert read_back(spec) == "a,b\n1,2\n"


def write_then_fail(spec: FileSpec, data: bytes) -> None:
    with spec.open() as f:
        f.write(data)
        raise RuntimeError("task failed")


def test_a_failed_write_keeps_the_previous_content(store: Store) -> None:
    spec = store.spec("data.bin", mode="wb")
    with spec.open() as f:
        f.write(b"previous")
    with pytest.raises(RuntimeError, match="task failed"):
        write_then_fail(spec, b"half of the new content" * 100_000)
    assert read_back(spec) == b"previous"
    assert store.leftovers() == ["data.bin"], "no temp file and no pending upload left behind"


def test_a_failed_first_write_leaves_no_file(store: Store) -> None:
    spec = store.spec("new.bin", mode="wb")
    with pytest.raises(RuntimeError, match="task failed"):
        write_then_fail(spec, b"x" * MIB)
    assert not store.raw.exists(store.path("new.bin"))
    assert store.leftovers() == []


def test_a_multipart_s3_write_stays_invisible_until_it_completes(
    s3_env: dict[str, str], moto_endpoint: str
) -> None:
    store = s3_store(moto_endpoint)
    spec = store.spec("big.bin", mode="wb", block_size=5 * MIB)
    with spec.open() as f:
        f.write(b"a" * (11 * MIB))  # two parts are uploaded here, before the block ends
        assert not store.raw.exists(store.path("big.bin"))
        assert len(store.raw.list_multipart_uploads(store.base.removeprefix("s3://"))) == 1
    assert store.raw.info(store.path("big.bin"))["size"] == 11 * MIB
    assert store.leftovers() == ["big.bin"]


def test_a_replaced_local_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "private.txt"
    target.write_text("old")
    target.chmod(0o600)
    with FileSpec(url=str(target), mode="w").open() as f:
        f.write("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# -- keys ----------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="pinned keys of POSIX absolute paths")
def test_keys_are_pinned() -> None:
    # Pinned: a change here silently invalidates every cache users persisted.
    pinned = {
        FileSpec(url="/data/x.csv"): (
            "ed4e65631233f8f21c6325841bfba059c52b7b0ecf1912266786e3e3024b5ba0"
        ),
        FileSpec(url="file:///data/../data/y.csv.gz", compression="gzip"): (
            "83bf70ce616c971bab6fd644b3a962946c7f992e365536b58b74fcd9b9f6e3a4"
        ),
        FileSpec(
            url="s3://bucket/k.csv",
            storage_options={"endpoint_url": "http://x:9000"},
            secrets={"key": "env:K"},
        ): "ab52b09ffe6fac995a32c43252becfe4cecf30d828dc5f7141d1df74f73eac3b",
        FileSpec(url="memory://a/b.bin", mode="wb"): (
            "cb2a931f2fe3323801077175ff1ef68f802b581c0885f06747029a2ba1bfc956"
        ),
    }
    assert {spec: spec.cache_key() for spec in pinned} == pinned


def test_local_paths_follow_the_path_rule_every_kind_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for spelling in ["data.csv", "./x/../data.csv", "~/data.csv"]:
        assert FileSpec(url=spelling).url == absolute(spelling)
        assert FileSpec(url=f"file://{spelling}").url == absolute(spelling)
    # A URL's path has no backslashes: fsspec reads them as separators, so FileSpec does.
    assert FileSpec(url="dir\\sub\\f.bin").url == absolute("dir/sub/f.bin")


def test_local_paths_resolve_in_the_creating_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subprocess_env: dict[str, str]
) -> None:
    monkeypatch.chdir(tmp_path)
    spellings = ["data.csv", "./data.csv", "sub/../data.csv", f"file://{tmp_path}/data.csv"]
    specs = [FileSpec(url=s) for s in spellings]
    assert {s.url for s in specs} == {f"{tmp_path.as_posix()}/data.csv"}
    assert len({s.cache_key() for s in specs}) == 1
    # A worker started elsewhere rebuilds the same absolute path from the JSON.
    (tmp_path / "data.csv").write_text("x")
    script = (
        "import sys, handles; s = handles.spec_from_json(sys.stdin.read()); "
        "print(s.url); print(s.cache_key()); print(s.get().cat_file(s.path).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=specs[0].model_dump_json(),
        env=subprocess_env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == [specs[0].url, specs[0].cache_key(), "x"]


def test_content_tracking_moves_the_key_when_the_data_changes(store: Store) -> None:
    writer = store.spec("data.bin", mode="wb")
    tracked = store.spec("data.bin", track_content=True)
    absent_key = tracked.cache_key()

    with writer.open() as f:
        f.write(b"version one")
    first = store.spec("data.bin", track_content=True)
    assert first.cache_key() != absent_key, "the file appearing moves the key"
    assert store.spec("data.bin", track_content=True).cache_key() == first.cache_key()
    assert first.replace(block_size=1024).cache_key() == first.cache_key(), "placement"

    with writer.open() as f:
        f.write(b"version two")  # same size: only the version tells them apart
    second = store.spec("data.bin", track_content=True)
    assert second.cache_key() != first.cache_key()
    assert first.cache_key() == first.cache_key(), "an instance keeps the key it computed"
    assert store.spec("data.bin").cache_key() == store.spec("data.bin").cache_key()


def test_untracked_keys_ignore_content_and_never_touch_the_store(tmp_path: Path) -> None:
    spec = FileSpec(url=str(tmp_path / "nowhere" / "data.bin"))
    assert spec.fingerprint() is None
    assert len(spec.cache_key()) == 64


def test_identity_and_placement_fields() -> None:
    assert FileSpec.identity_fields == (
        "url",
        "mode",
        "compression",
        "encoding",
        "storage_options",
        "track_content",
    )
    assert FileSpec.placement_fields == ("secrets", "block_size")


# -- secrets -------------------------------------------------------------------------


def test_secret_values_stay_out_of_repr_json_pickle_keys_and_logs(
    s3_env: dict[str, str], moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = s3_store(moto_endpoint)
    spec = store.spec("data.bin", mode="wb", track_content=False)
    with caplog.at_level(logging.DEBUG, logger="handles"), spec.open() as f:
        f.write(b"payload")
    assert read_back(spec) == b"payload", "the credentials came from the secret references"
    seen = [
        repr(spec),
        str(spec),
        spec.model_dump_json(),
        json.dumps(spec.identity()),
        json.dumps(spec.placement()),
        spec.cache_key(),
        caplog.text,
    ]
    assert all(SECRET_VALUE not in text for text in seen)
    assert SECRET_VALUE.encode() not in pickle.dumps(spec)
    assert spec.placement()["secrets"] == {"key": {"env": KEY_ENV}, "secret": {"env": SECRET_ENV}}


def test_building_leaves_nested_storage_options_untouched(
    s3_env: dict[str, str], moto_endpoint: str
) -> None:
    store = s3_store(moto_endpoint)
    options = {"endpoint_url": moto_endpoint, "config_kwargs": {"retries": {"max_attempts": 2}}}
    spec = store.spec("data.bin", mode="wb").replace(storage_options=options)
    before = (spec.model_dump_json(), spec.cache_key())
    with spec.open() as f:
        f.write(b"x")
    assert (spec.model_dump_json(), spec.cache_key()) == before
    assert FileSpec.model_validate_json(before[0]).cache_key() == before[1]


def test_other_credentials_build_another_filesystem(
    s3_env: dict[str, str], moto_endpoint: str
) -> None:
    store = s3_store(moto_endpoint)
    spec = store.spec("data.bin", mode="wb")
    other = spec.replace(secrets={"key": f"env:{KEY_ENV}", "secret": "env:HANDLES_OTHER"})
    assert other.cache_key() == spec.cache_key(), "who reads does not change what is read"
    assert other._instance_key() != spec._instance_key(), "but never shares a live client"


# -- processes -----------------------------------------------------------------------

# Writes 1 MiB chunks through a FileSpec given as JSON: prints "writing" after
# `mark` MiB, goes on to `limit` MiB, then blocks, still inside open(), so the
# parent's SIGKILL always lands before the write completes.
KILLED_WRITER = """
import sys
from handles import FileSpec
spec = FileSpec.model_validate_json(sys.argv[1])
mark, limit = int(sys.argv[2]), int(sys.argv[3])
chunk = bytes(range(256)) * 4096
with spec.open() as f:
    for i in range(1, limit + 1):
        f.write(chunk)
        if i == mark:
            f.flush()
            print("writing", flush=True)
    print("blocked", flush=True)
    sys.stdin.read()
"""


def kill_mid_write(spec: FileSpec, env: dict[str, str], mark: int, limit: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, spec.model_dump_json(), str(mark), str(limit)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line == "writing\n", (line, child.stderr.read() if child.stderr else "")
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("previous", [b"the previous content\n" * 1000, None])
def test_sigkill_mid_write_leaves_the_previous_file_or_none(
    tmp_path: Path, subprocess_env: dict[str, str], previous: bytes | None
) -> None:
    target = tmp_path / "big.bin"
    if previous is not None:
        target.write_bytes(previous)
    kill_mid_write(FileSpec(url=str(target), mode="wb"), subprocess_env, mark=32, limit=256)

    if previous is None:
        assert not target.exists()
    else:
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(previous).digest()
    # The killed writer really was mid-write: its temp file holds what it got to.
    (temp,) = [p for p in tmp_path.iterdir() if p.name != "big.bin"]
    assert temp.name.startswith(".big.bin.")
    assert temp.name.endswith(".tmp")
    assert temp.stat().st_size >= 32 * MIB
    temp.unlink()


def test_sigkill_mid_upload_leaves_the_previous_s3_object(
    s3_env: dict[str, str], moto_endpoint: str, subprocess_env: dict[str, str]
) -> None:
    store = s3_store(moto_endpoint)
    previous = b"the previous object\n" * 1000
    store.raw.pipe(store.path("big.bin"), previous)
    spec = store.spec("big.bin", mode="wb", block_size=5 * MIB)
    kill_mid_write(spec, {**subprocess_env, **s3_env}, mark=12, limit=40)

    assert store.raw.cat_file(store.path("big.bin")) == previous
    # It was mid-upload: parts went up, the upload was never completed.
    bucket = store.base.removeprefix("s3://")
    (upload,) = store.raw.list_multipart_uploads(bucket)
    assert upload["Key"] == "big.bin"
    store.raw.clear_multipart_uploads(bucket)


# Rewrites the file `rounds` times, each time wholly with its own byte.
WRITER = """
import sys
from handles import FileSpec
spec = FileSpec.model_validate_json(sys.argv[1])
fill, rounds = int(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    with spec.open() as f:
        for _ in range(4):
            f.write(bytes([fill]) * 65536)
"""


def test_readers_see_whole_versions_while_processes_rewrite(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    target = tmp_path / "shared.bin"
    target.write_bytes(bytes([0]) * 4 * 65536)
    writer = FileSpec(url=str(target), mode="wb")
    reader = FileSpec(url=str(target))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, writer.model_dump_json(), str(fill), "25"],
            env=subprocess_env,
        )
        for fill in (1, 2, 3)
    ]
    seen: set[int] = set()
    try:
        while any(c.poll() is None for c in children) or not seen:
            with reader.open() as f:
                data = f.read()
            assert len(data) == 4 * 65536
            assert data == bytes([data[0]]) * len(data), "a read mixed two versions"
            seen.add(data[0])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=60)
    assert [c.returncode for c in children] == [0, 0, 0]
    assert target.read_bytes()[0] in (1, 2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]
    print(f"\nreader saw versions {sorted(seen)}")


def test_importing_handles_and_making_specs_does_not_import_fsspec(
    run_python: Callable[[str], str],
) -> None:
    script = (
        "import sys, handles\n"
        "s = handles.FileSpec(url='s3://bucket/key.csv', mode='r', track_content=False)\n"
        "s.cache_key(); s.model_dump_json()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs')))\n"
    )
    out = run_python(script)
    assert out == "[]"


def test_closing_the_registry_drops_the_filesystem(tmp_path: Path) -> None:
    spec = FileSpec(url=str(tmp_path / "data.bin"), mode="wb")
    first = spec.get()
    handles.registry().close()
    assert spec not in handles.registry()
    assert spec.get() is not first


def test_failed_builds_raise_build_error_and_cache_nothing(tmp_path: Path) -> None:
    spec = FileSpec(url=str(tmp_path / "missing.bin"))
    with pytest.raises(BuildError, match=r"FileSpec\.url: no such file"):
        spec.get()
    (tmp_path / "missing.bin").write_bytes(b"now here")
    with spec.open() as f:
        assert f.read() == b"now here"


def test_a_missing_file_fails_its_own_get_on_a_filesystem_already_built(tmp_path: Path) -> None:
    present = tmp_path / "present.bin"
    present.write_bytes(b"here")
    fs = FileSpec(url=str(present)).get()  # builds the folder's one filesystem
    missing = FileSpec(url=str(tmp_path / "missing.bin"))
    for _attempt in range(2):  # checked on the shared filesystem, and never cached
        with pytest.raises(BuildError, match="no such file"):
            missing.get()
    assert FileSpec(url=str(present)).get() is fs
    stats = handles.registry().stats()[missing.cache_key()]
    assert (stats.builds, stats.errors) == (0, 2)
