"""The allow-list, tried as an attacker would (issue 21): specs from JSON with an unlisted host,
a secret and endpoints placed in every field and option each kind accepts, under every
documented worker setting, against loopback fakes that record what reaches them.

Two "hosts" on loopback share one port: 127.0.0.1 (the worker lists it) and 127.0.0.2 (the
attacker's, written in every spelling a resolver reads as that address). Each probe loads a
document with `spec_from_json` and, where accepted, builds it; then:

- no secret value reaches the unlisted host (its fake records every byte);
- with HANDLES_ALLOW_HOSTS set, the unlisted host is never contacted at all;
- no secret value shows in any error text, traceback or repr;
- no code runs (a pickle whose unpickling would write a marker file; remote model code).

Hypothesis draws each probe from the tables below (deterministic: derandomize=True). CI runs
a bounded number; `pytest -m load` runs many more. Each test prints its probe count.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import socket
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import handles
from handles import HandlesError
from support.fake_http import FakeHTTP
from support.fake_pg import FakePostgres

SECRET = "adversarial-secret-5e11a7"
SECRET_ENV = "HANDLES_TEST_ADV_SECRET"
GOOD = "127.0.0.1"
EVIL = "127.0.0.2"
# 127.0.0.2 as getaddrinfo (libpq, aiohttp, botocore) reads it, however it is written.
EVIL_SPELLINGS = ["127.0.0.2", "2130706434", "0x7f000002", "127.2", "0177.0.0.2"]
ALL_SETTINGS = (
    "HANDLES_ALLOW_SECRETS",
    "HANDLES_ALLOW_HOSTS",
    "HANDLES_ALLOW_OPTIONS",
    "HANDLES_ALLOW_PATHS",
    "HANDLES_ALLOW_PICKLE_WEIGHTS",
    "HANDLES_ALLOW_ARCHIVES",
    "PGSERVICEFILE",
    "PGHOST",
)
WIDE_OPTIONS = ",".join(
    [
        *(
            f"{kind}:{key}"
            for kind in ("database", "async-database")
            for key in ("host", "hostaddr", "conninfo", "dsn", "service")
        ),
        "file:http.*",
        "file:s3.*",
    ]
)
# Every documented setting, alone and together, that bears on hosts and secrets.
SETTINGS: dict[str, dict[str, str]] = {
    "defaults": {},
    "secret allowed, no host list": {"HANDLES_ALLOW_SECRETS": f"env:{SECRET_ENV}"},
    "host list and secret": {
        "HANDLES_ALLOW_SECRETS": f"env:{SECRET_ENV}",
        "HANDLES_ALLOW_HOSTS": GOOD,
    },
    "widened options, no host list": {
        "HANDLES_ALLOW_SECRETS": f"env:{SECRET_ENV}",
        "HANDLES_ALLOW_OPTIONS": WIDE_OPTIONS,
    },
    "widened options and host list": {
        "HANDLES_ALLOW_SECRETS": f"env:{SECRET_ENV}",
        "HANDLES_ALLOW_HOSTS": f"{GOOD},localhost",
        "HANDLES_ALLOW_OPTIONS": WIDE_OPTIONS,
    },
}
EXAMPLES = 80
LOAD_EXAMPLES = 3000
PROBES: Counter[str] = Counter()


def _loopback_alias_works() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((EVIL, 0))
        except OSError:
            return False
    return True


pytestmark = pytest.mark.skipif(
    not _loopback_alias_works(), reason="127.0.0.2 is not a loopback address here"
)


@pytest.fixture(scope="module", autouse=True)
def _report_probes() -> Iterator[None]:
    yield
    print(f"\nallow-list probes per kind: {dict(sorted(PROBES.items()))}")


@contextmanager
def worker_env(values: dict[str, str]) -> Iterator[None]:
    """The worker's settings for one probe (hypothesis examples cannot use monkeypatch)."""
    saved = {name: os.environ.get(name) for name in (*ALL_SETTINGS, SECRET_ENV)}
    for name in ALL_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(values)
    os.environ[SECRET_ENV] = SECRET
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def shown_texts(spec: handles.Spec[Any] | None, error: BaseException | None) -> list[str]:
    texts = []
    if spec is not None:
        texts += [repr(spec), str(spec), spec.model_dump_json(), json.dumps(spec.identity())]
    if error is not None:
        texts += [str(error), "".join(traceback.format_exception(error))]
    return texts


def attempt(doc: dict[str, Any]) -> tuple[handles.Spec[Any] | None, BaseException | None]:
    """Load `doc` as untrusted JSON and, if accepted, build it: what happened, never raised."""
    try:
        spec = handles.spec_from_json(json.dumps(doc))
    except HandlesError as exc:
        return None, exc
    try:
        spec.get()
    except HandlesError as exc:
        return spec, exc
    finally:
        handles.registry().evict(spec)
    return spec, None


# -- databases: libpq through psycopg -----------------------------------------------------


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[tuple[FakePostgres, FakePostgres]]:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    with FakePostgres(GOOD) as good, FakePostgres(EVIL, port=good.port) as evil:
        yield good, evil


def _db_url(host: str, port: int, query: str = "") -> str:
    return f"postgresql+psycopg://app@{host}:{port}/db" + (f"?{query}" if query else "")


# Each placement puts the unlisted host somewhere the driver reads one: (port, evil) -> fields.
DB_PLACEMENTS: dict[str, Callable[[int, str], dict[str, Any]]] = {
    "url host": lambda p, e: {"url": _db_url(e, p)},
    "url host list": lambda p, e: {"url": _db_url(f"{GOOD},{e}", p)},
    "query host": lambda p, e: {"url": _db_url(GOOD, p, f"host={e}")},
    "query host list": lambda p, e: {"url": _db_url(GOOD, p, f"host={GOOD},{e}")},
    "query hostaddr": lambda p, e: {"url": _db_url(GOOD, p, f"hostaddr={e}")},
    "query conninfo": lambda p, e: {
        "url": _db_url(GOOD, p, "conninfo=" + quote(f"host={e} port={p}"))
    },
    "connect_args host": lambda p, e: {"url": _db_url(GOOD, p), "connect_args": {"host": e}},
    "connect_args host (number)": lambda p, e: {
        "url": _db_url(GOOD, p),
        "connect_args": {"host": int(e) if e.isdigit() else e},
    },
    "connect_args hostaddr": lambda p, e: {
        "url": _db_url(GOOD, p),
        "connect_args": {"hostaddr": e},
    },
    "connect_args conninfo": lambda p, e: {
        "url": _db_url(GOOD, p),
        "connect_args": {"conninfo": f"host='{e}' port={p}"},
    },
    "connect_args dsn (URI)": lambda p, e: {
        "url": _db_url(GOOD, p),
        "connect_args": {"dsn": f"postgresql://app@{e}:{p}/db"},
    },
    "connect_args service": lambda p, e: {
        "url": _db_url(GOOD, p),
        "connect_args": {"service": "evil"},
    },
    "no host (PGHOST decides)": lambda p, e: {"url": f"postgresql+psycopg://app@:{p}/db"},
}


def _service_file(folder: Path, port: int) -> Path:
    path = folder / "pg_service.conf"
    path.write_text(f"[evil]\nhost={EVIL}\nport={port}\n")
    return path


def _database_doc(port: int, spelling: str, placements: Sequence[str]) -> dict[str, Any]:
    """One document with the unlisted host in every placement named (the first gives the URL)."""
    base, queries, args = "", [], {}
    for name in placements:
        fields = DB_PLACEMENTS[name](port, spelling)
        head, _, query = fields["url"].partition("?")
        base = base or head
        queries += [query] if query else []
        args.update(fields.get("connect_args", {}))
    doc: dict[str, Any] = {
        "kind": "database",
        "url": f"{base}?{'&'.join([*queries, 'connect_timeout=3'])}",
    }
    if args:
        doc["connect_args"] = args
    return doc


def db_probe(
    pair: tuple[FakePostgres, FakePostgres],
    folder: Path,
    *,
    setting: str,
    with_secret: bool,
    placement: str | Sequence[str],
    spelling: str,
) -> None:
    good, evil = pair
    placements = [placement] if isinstance(placement, str) else list(placement)
    doc = _database_doc(good.port, spelling, placements)
    if with_secret:
        doc["password"] = f"env:{SECRET_ENV}"
    env = {
        **SETTINGS[setting],
        "PGSERVICEFILE": str(_service_file(folder, good.port)),
        "PGHOST": EVIL,
    }
    before = len(evil.seen)
    with worker_env(env):
        spec, error = attempt(doc)
    PROBES["database"] += 1
    assert SECRET.encode() not in evil.raw, f"{placements}: the secret reached {EVIL}"
    if "HANDLES_ALLOW_HOSTS" in env:
        assert len(evil.seen) == before, f"{placements} ({setting}): {EVIL} was contacted"
    leaks = [text for text in shown_texts(spec, error) if SECRET in text]
    assert leaks == [], placements


def probes(examples: int) -> Any:
    """Hypothesis settings for a probe test: repeatable, no deadline, fixtures reused."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@probes(EXAMPLES)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placement=st.sampled_from(sorted(DB_PLACEMENTS)),
    spelling=st.sampled_from(EVIL_SPELLINGS),
)
def test_no_database_spec_from_json_sends_a_secret_or_connects_where_not_allowed(
    pg_pair, tmp_path, *, setting, with_secret, placement, spelling
):
    db_probe(
        pg_pair,
        tmp_path,
        setting=setting,
        with_secret=with_secret,
        placement=placement,
        spelling=spelling,
    )


COMBINED = st.lists(st.sampled_from(sorted(DB_PLACEMENTS)), min_size=2, max_size=4, unique=True)


@probes(EXAMPLES // 2)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placements=COMBINED,
    spelling=st.sampled_from(EVIL_SPELLINGS),
)
def test_several_placements_at_once_change_nothing(
    pg_pair, tmp_path, *, setting, with_secret, placements, spelling
):
    db_probe(
        pg_pair,
        tmp_path,
        setting=setting,
        with_secret=with_secret,
        placement=placements,
        spelling=spelling,
    )


def test_every_database_placement_and_setting_once(pg_pair, tmp_path):
    # The whole table at one spelling each way, so no placement is left to chance.
    for setting in SETTINGS:
        for placement in DB_PLACEMENTS:
            for with_secret in (False, True):
                db_probe(
                    pg_pair,
                    tmp_path,
                    setting=setting,
                    with_secret=with_secret,
                    placement=placement,
                    spelling=EVIL,
                )
    print(f"\nprobes so far: {dict(PROBES)}")


# -- files: fsspec over HTTP and S3 ------------------------------------------------------


@pytest.fixture(scope="module")
def web_pair() -> Iterator[tuple[FakeHTTP, FakeHTTP]]:
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    with FakeHTTP(GOOD) as good, FakeHTTP(EVIL, port=good.port) as evil:
        yield good, evil


FILE_PLACEMENTS: dict[str, Callable[[int, str], dict[str, Any]]] = {
    "http url": lambda p, e: {"url": f"http://{e}:{p}/file.txt"},
    "http proxy option": lambda p, e: {
        "url": f"http://{GOOD}:{p}/file.txt",
        "storage_options": {"proxy": f"http://{e}:{p}"},
    },
    "http secret as a header-ish option": lambda p, e: {
        "url": f"http://{e}:{p}/file.txt",
        "secrets": {"headers_token": f"env:{SECRET_ENV}"},
    },
    "http secret as the proxy": lambda p, e: {
        "url": f"http://{GOOD}:{p}/file.txt",
        "secrets": {"proxy": f"env:{SECRET_ENV}"},
    },
    "s3 endpoint_url": lambda p, e: {
        "url": "s3://bucket/file.txt",
        "storage_options": {
            "endpoint_url": f"http://{e}:{p}",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        },
    },
    "s3 client_kwargs.endpoint_url": lambda p, e: {
        "url": "s3://bucket/file.txt",
        "storage_options": {
            "client_kwargs": {"endpoint_url": f"http://{e}:{p}"},
            "config_kwargs": {"retries": {"max_attempts": 1}},
        },
    },
}


def file_probe(
    pair: tuple[FakeHTTP, FakeHTTP],
    *,
    setting: str,
    with_secret: bool,
    placement: str,
    spelling: str,
) -> None:
    good, evil = pair
    doc: dict[str, Any] = {"kind": "file", **FILE_PLACEMENTS[placement](good.port, spelling)}
    if placement.startswith("s3") and "secrets" not in doc:
        if not with_secret:
            doc["storage_options"]["anon"] = True
        else:
            doc["secrets"] = {"key": f"env:{SECRET_ENV}", "secret": f"env:{SECRET_ENV}"}
    elif with_secret and "secrets" not in doc:
        doc["secrets"] = {"token": f"env:{SECRET_ENV}"}
    if doc.get("secrets") and not with_secret:
        del doc["secrets"]
    env = dict(SETTINGS[setting])
    if placement.startswith("s3"):
        if not (doc.get("secrets") or doc["storage_options"].get("anon")):
            doc["storage_options"]["anon"] = True
        env["HANDLES_ALLOW_HOSTS"] = env.get("HANDLES_ALLOW_HOSTS", "") and (
            env["HANDLES_ALLOW_HOSTS"] + ",bucket"
        )
        if not env["HANDLES_ALLOW_HOSTS"]:
            del env["HANDLES_ALLOW_HOSTS"]
    before = len(evil.seen)
    with worker_env(env):
        spec, error = attempt(doc)
    PROBES["file"] += 1
    assert SECRET.encode() not in evil.raw, f"{placement}: the secret reached {EVIL}"
    if "HANDLES_ALLOW_HOSTS" in env:
        assert len(evil.seen) == before, f"{placement} ({setting}): {EVIL} was contacted"
    leaks = [text for text in shown_texts(spec, error) if SECRET in text]
    assert leaks == [], placement


@probes(EXAMPLES // 10)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placement=st.sampled_from(sorted(FILE_PLACEMENTS)),
    spelling=st.sampled_from(EVIL_SPELLINGS[:3]),
)
def test_no_file_spec_from_json_sends_a_secret_or_connects_where_not_allowed(
    web_pair, *, setting, with_secret, placement, spelling
):
    file_probe(
        web_pair, setting=setting, with_secret=with_secret, placement=placement, spelling=spelling
    )


def test_every_file_placement_and_setting_once(web_pair):
    for setting in SETTINGS:
        for placement in FILE_PLACEMENTS:
            for with_secret in (False, True):
                file_probe(
                    web_pair,
                    setting=setting,
                    with_secret=with_secret,
                    placement=placement,
                    spelling=EVIL,
                )
    print(f"\nprobes so far: {dict(PROBES)}")


def test_an_allowed_http_secret_reaches_only_the_listed_host(web_pair, monkeypatch):
    # The positive side: the worker widened http and listed 127.0.0.1, so the fake there
    # sees the request and the unlisted one nothing.
    good, evil = web_pair
    before = (len(good.seen), len(evil.seen))
    doc = {"kind": "file", "url": f"http://{GOOD}:{good.port}/file.txt"}
    with worker_env({"HANDLES_ALLOW_HOSTS": GOOD}):
        spec, error = attempt(doc)
    assert error is None
    assert spec is not None
    assert len(good.seen) > before[0], "the listed host was reached"
    assert len(evil.seen) == before[1], "the unlisted one never"


# -- local paths --------------------------------------------------------------------------


def test_local_paths_from_json_stay_inside_the_allowed_folders(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.db").write_text(SECRET)
    (allowed / "data.txt").write_text("fine")
    (allowed / "link.txt").symlink_to(outside / "secret.db")
    sneaky = [
        str(outside / "secret.db"),
        f"{allowed}/../outside/secret.db",
        str(allowed / "link.txt"),
    ]
    docs: list[dict[str, Any]] = []
    for path in sneaky:
        docs += [
            {"kind": "file", "url": path},
            {"kind": "file", "url": f"file://{path}"},
            {"kind": "sqlite", "path": path},
            {"kind": "database", "url": f"sqlite:///{path}"},
            {"kind": "torch", "factory": "tiny-mlp", "weights": path},
        ]
    if importlib.util.find_spec("torch") is not None:
        import support.tiny_models  # noqa: F401  (registers tiny-mlp)
    else:
        docs = [d for d in docs if d["kind"] != "torch"]
    with worker_env({"HANDLES_ALLOW_PATHS": f"{allowed}/*"}):
        for doc in docs:
            PROBES["paths"] += 1
            spec, error = attempt(doc)
            assert spec is None, doc
            assert "HANDLES_ALLOW_PATHS" in str(error)
            assert SECRET not in str(error)
        assert attempt({"kind": "file", "url": str(allowed / "data.txt")})[1] is None
    with worker_env({}):  # unset: as before, any path
        assert attempt({"kind": "file", "url": str(allowed / "data.txt")})[1] is None
    print(f"\nprobes so far: {dict(PROBES)}")


# -- code: pickles, archives, remote model code -------------------------------------------


class _Marker:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.path, "code ran"))


@pytest.fixture(scope="module")
def evil_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    import torch

    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "code-ran"
    files = {"marker": marker}
    for name in ("weights.pt", "weights.bin", "weights.safetensors", "weights.pkl"):
        torch.save({"fc1.weight": _Marker(marker)}, folder / name)
        files[name] = folder / name
    plain = folder / "plain.pickle"
    plain.write_bytes(pickle.dumps(_Marker(marker)))
    files["plain.pickle"] = plain
    return files


MODEL_SETTINGS = {
    "defaults": {},
    "pickle weights allowed": {"HANDLES_ALLOW_PICKLE_WEIGHTS": "1"},
    "archives allowed": {"HANDLES_ALLOW_ARCHIVES": "1"},
    "everything allowed": {
        "HANDLES_ALLOW_PICKLE_WEIGHTS": "1",
        "HANDLES_ALLOW_ARCHIVES": "1",
        "HANDLES_ALLOW_OPTIONS": "torch:*,hf-pipeline:*",
    },
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_no_torch_spec_from_json_runs_code(evil_files):
    pytest.importorskip("torch")
    import support.tiny_models  # noqa: F401  (registers tiny-mlp)

    marker = evil_files["marker"]
    names = [n for n in evil_files if n != "marker"]
    for setting, env in MODEL_SETTINGS.items():
        for name in names:
            for field in ("weights", "archive"):
                for allow in (False, True):
                    doc: dict[str, Any] = {"kind": "torch", field: str(evil_files[name])}
                    if field == "weights":
                        doc["factory"] = "tiny-mlp"
                        doc["allow_pickle_weights"] = allow
                    elif allow:
                        continue
                    with worker_env(env):
                        attempt(doc)
                    PROBES["torch"] += 1
                    assert not marker.exists(), f"{setting}: {field}={name} ran code"
    print(f"\nprobes so far: {dict(PROBES)}")


def test_no_hf_spec_from_json_unpickles_or_runs_remote_code(tmp_path):
    pytest.importorskip("transformers")
    import torch

    from support import tiny_models as tm

    folder = tm.save_tiny_hf(tmp_path / "model")
    marker = tmp_path / "code-ran"
    # The weights only as a pickle checkpoint whose unpickling writes the marker.
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(
        {"bert.embeddings.word_embeddings.weight": _Marker(marker)}, folder / "pytorch_model.bin"
    )
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    base = {"kind": "hf-pipeline", "task": "text-classification", "model": str(folder)}
    variants = [
        {},
        {"allow_pickle_weights": True},
        {"trust_remote_code": True},
        {"pipeline_kwargs": {"model_kwargs": {"use_safetensors": False}}},
    ]
    for setting in ("defaults", "everything allowed"):
        env = MODEL_SETTINGS[setting]
        for extra in variants:
            with worker_env(env):
                attempt({**base, **extra})
            PROBES["hf-pipeline"] += 1
            assert not marker.exists(), f"{setting}: {extra} ran code"
    print(f"\nprobes so far: {dict(PROBES)}")


# -- the bigger run -----------------------------------------------------------------------


@pytest.mark.load
@probes(LOAD_EXAMPLES)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placement=st.sampled_from(sorted(DB_PLACEMENTS)),
    spelling=st.sampled_from(EVIL_SPELLINGS),
)
def test_many_more_database_probes(pg_pair, tmp_path, *, setting, with_secret, placement, spelling):
    db_probe(
        pg_pair,
        tmp_path,
        setting=setting,
        with_secret=with_secret,
        placement=placement,
        spelling=spelling,
    )


@pytest.mark.load
@probes(LOAD_EXAMPLES // 6)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placement=st.sampled_from(sorted(FILE_PLACEMENTS)),
    spelling=st.sampled_from(EVIL_SPELLINGS),
)
def test_many_more_file_probes(web_pair, *, setting, with_secret, placement, spelling):
    file_probe(
        web_pair, setting=setting, with_secret=with_secret, placement=placement, spelling=spelling
    )


@pytest.mark.load
@probes(LOAD_EXAMPLES)
@given(
    setting=st.sampled_from(sorted(SETTINGS)),
    with_secret=st.booleans(),
    placements=COMBINED,
    spelling=st.sampled_from(EVIL_SPELLINGS),
)
def test_many_more_combined_database_probes(
    pg_pair, tmp_path, *, setting, with_secret, placements, spelling
):
    db_probe(
        pg_pair,
        tmp_path,
        setting=setting,
        with_secret=with_secret,
        placement=placements,
        spelling=spelling,
    )
