"""Secrets never show (issue 9 item 4): passwords are masked as the connecting parser reads
them, literal credentials in query strings and connect_args are refused, and a secret is
absent from repr, str, JSON, pickles, key input, logs, `handles inspect`, BuildError text
and tracebacks.

What a client really sends is recorded by a fake PostgreSQL server on loopback; the real
server (HANDLES_TEST_POSTGRES_URL) shows that such URLs connect where SQLAlchemy says.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import handles
from handles import BuildError, DatabaseSpec, FileSpec, SpecError
from handles._cli import main
from handles._secrets import parse_database_url
from support.cases_sql import postgres_url
from support.fake_pg import FakePostgres

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

# Passwords that urlsplit (the old masking) read differently from SQLAlchemy.
TRICKY = ["#hunter2", "/hunter2", "?hunter2", "12/hunter2", "hunter2#x?y", "hun:ter2", "hunter%402"]


@pytest.fixture
def pg() -> Iterator[FakePostgres]:
    with FakePostgres() as server:
        yield server


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def everything_shown(spec: handles.Spec[Any], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every place a spec's text reaches, except the pickle; get() is attempted too."""
    shown = [repr(spec), str(spec), spec.model_dump_json(), json.dumps(spec.model_dump())]
    shown += [json.dumps(spec.identity()), json.dumps(spec.placement()), spec.cache_key()]
    _, out, err = cli("inspect", json.dumps(spec.model_dump(mode="json")))
    shown += [out, err]
    try:
        spec.get()
    except BuildError as exc:
        shown += [str(exc), "".join(traceback.format_exception(exc))]
    shown.append(caplog.text)
    return shown


@pytest.mark.parametrize("password", TRICKY)
def test_the_password_sqlalchemy_sends_is_the_one_masked(password, pg, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://app:{password}@127.0.0.1:{pg.port}/sales"
    spec = DatabaseSpec(url=url)
    sent = sqlalchemy.make_url(url).password
    assert "app:***@127.0.0.1" in repr(spec)
    shown = everything_shown(spec, caplog)
    assert [seen.password for seen in pg.seen] == [sent], "SQLAlchemy sent exactly this"
    leaks = [text for text in shown if sent in text or "hunter" in text]
    assert leaks == []
    assert len(handles.registry()) == 0


@pytest.mark.parametrize("password", TRICKY)
def test_the_cli_never_shows_a_url_password(password):
    text = json.dumps({"kind": "database", "url": f"postgresql+psycopg://app:{password}@h/db"})
    code, out, err = cli("inspect", text)
    assert code == 0, err
    assert "hunter" not in out + err
    assert "app:***@h/db" in out


def test_a_tricky_password_connects_to_the_real_server_where_sqlalchemy_says():
    base = sqlalchemy.make_url(postgres_url())
    for password in TRICKY:
        url = base.set(password=None).render_as_string(hide_password=False)
        scheme, rest = url.split("://", 1)
        spec = DatabaseSpec(url=f"{scheme}://{base.username}:{password}@{rest.split('@', 1)[1]}")
        engine = spec.get()  # trust auth: the password is accepted, whatever it is
        assert engine.url.password == sqlalchemy.make_url(spec.url).password
        assert (engine.url.host, engine.url.database) == (base.host, base.database)
        assert "hunter" not in repr(spec) + spec.model_dump_json() + repr(engine)
        handles.registry().evict(spec)


URL_CHARS = st.sampled_from([*"ab1:/@?#%&=[].-_+ ", "%40", "%2F", "::", "@@"])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(URL_CHARS, max_size=24).map("".join))
def test_our_reading_of_a_database_url_is_sqlalchemys(rest):
    url = "postgresql+psycopg://" + rest
    ours = parse_database_url(url)
    try:
        theirs = sqlalchemy.make_url(url)
    except (ValueError, sqlalchemy.exc.ArgumentError):
        # SQLAlchemy cannot read it (a port that is not a number): neither do we
        assert ours is None or not (ours.port or "").isdigit()
        return
    assert ours is not None
    assert (ours.password, ours.host) == (theirs.password, theirs.host)
    assert (int(ours.port) if ours.port else None) == theirs.port
    assert dict(ours.query) == {
        k: v if isinstance(v, str) else v[-1] for k, v in theirs.query.items()
    }
    # Masking replaced exactly the password: SQLAlchemy reads everything else the same.
    masked = sqlalchemy.make_url(ours.masked)
    assert masked.password == ("***" if theirs.password else theirs.password)
    assert (masked.username, masked.host, masked.port) == (
        theirs.username,
        theirs.host,
        theirs.port,
    )
    assert (masked.database, masked.query) == (theirs.database, theirs.query)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": "postgresql+psycopg://app@h/db?password=hunter2"}, "url"),
        ({"url": "postgresql+psycopg://app@h/db?sslmode=require&PASSWORD=hunter2"}, "url"),
        ({"url": "mysql+pymysql://app@h/db?passwd=hunter2"}, "url"),
        ({"url": "postgresql+psycopg://app@h/db?sslpassword=hunter2"}, "url"),
        (
            {"url": "postgresql+psycopg://app@h/db", "connect_args": {"password": "hunter2"}},
            "connect_args",
        ),
        (
            {"url": "postgresql+psycopg://app@h/db", "connect_args": {"Pwd": "hunter2"}},
            "connect_args",
        ),
    ],
)
def test_literal_passwords_in_query_or_connect_args_are_refused(fields, field):
    for make in (
        lambda: DatabaseSpec(**fields),
        lambda: handles.spec_from_json({"kind": "database", **fields}),
    ):
        with pytest.raises(SpecError) as info:
            make()
        message = str(info.value)
        assert f"DatabaseSpec.{field}: " in message
        assert "hunter2" not in message
        assert "password=" in message or "configuration" in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:#hunter2@files.example/data.csv",
        "sftp://user:/hunter2@files.example/data.csv",
        "sftp://user:?hunter2@files.example/data.csv",
        "ftp://user:12/hunter2@files.example/data.csv",
        "sftp://user:hunter2@files.example:22/data.csv",
    ],
)
def test_file_urls_with_a_password_are_refused_however_it_is_written(url):
    with pytest.raises(SpecError) as info:
        FileSpec(url=url)
    assert "FileSpec.url: the URL contains a password" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_secret_reference_value_shows_nowhere(source, pg, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    value = "ref-secret-c0ffee"
    monkeypatch.setenv("HANDLES_TEST_MASK_SECRET", value)
    (tmp_path / "pw").write_text(value + "\n")
    reference = "env:HANDLES_TEST_MASK_SECRET" if source == "env" else f"file:{tmp_path / 'pw'}"
    # The worker allows it, so `handles inspect` (JSON) accepts it as well.
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", reference)
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "127.0.0.1")
    spec = DatabaseSpec(url=f"postgresql+psycopg://app@127.0.0.1:{pg.port}/db", password=reference)
    shown = everything_shown(spec, caplog)
    shown.append(pickle.dumps(spec).decode("latin-1"))
    assert [seen.password for seen in pg.seen] == [value], "the build did use the secret"
    assert [text for text in shown if value in text] == []
    where = reference.partition(":")[2]
    assert any(where in text for text in shown), "where it lives is shown"


# -- scrubbing: a resolved value never leaves a build in an error's text ----------------------

SCRUBBED = "scrubbed-value-77ab"


class _Stubborn(Exception):
    """A dependency's error whose text comes from an attribute, not from args."""

    def __init__(self, detail: str) -> None:
        super().__init__("stubborn")
        self.detail = detail

    def __str__(self) -> str:
        return f"failed with {self.detail}"


@pytest.mark.parametrize(
    "raise_it",
    [
        lambda: (_ for _ in ()).throw(ValueError(f"unknown protocol {SCRUBBED}")),
        lambda: (_ for _ in ()).throw(OSError(2, "No such file", f"/mnt/{SCRUBBED}/x")),
        lambda: (_ for _ in ()).throw(_Stubborn(SCRUBBED)),
    ],
    ids=["args", "OSError filename", "own __str__"],
)
def test_scrubbed_replaces_a_value_with_its_reference(raise_it):
    from handles._secrets import SecretRef, scrubbed

    refs = {"token": SecretRef(env="HANDLES_TEST_TOKEN")}
    with (
        pytest.raises((ValueError, OSError, RuntimeError)) as info,
        scrubbed(refs, {"token": SCRUBBED}),
    ):
        raise_it()
    text = "".join(traceback.format_exception(info.value))
    assert SCRUBBED not in text
    assert "<env:HANDLES_TEST_TOKEN>" in text


def test_scrubbed_cleans_the_whole_chain():
    from handles._secrets import SecretRef, scrubbed

    def fail() -> None:
        try:
            raise ValueError(f"inner {SCRUBBED}")
        except ValueError as exc:
            raise KeyError(f"outer {SCRUBBED}") from exc

    with pytest.raises(KeyError) as info, scrubbed({"t": SecretRef(env="X")}, {"t": SCRUBBED}):
        fail()
    assert SCRUBBED not in "".join(traceback.format_exception(info.value))
