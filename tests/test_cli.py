"""The command line, run as users run it: `python -m handles ...` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from handles import SqliteSpec


def run(
    *args: str, stdin: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handles", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_help_everywhere():
    for args in ([], ["inspect"], ["schema"], ["kinds"], ["check"]):
        out = run(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "usage: handles" in out.stdout


def test_inspect_json_string_and_file(tmp_path):
    spec = SqliteSpec(path=str(tmp_path / "app.db"))
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    for source in (spec.model_dump_json(), str(path)):
        out = run("inspect", "--json", source)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["kind"] == "sqlite"
        assert report["cache_key"] == spec.cache_key()
        assert report["identity"] == spec.identity()
        assert report["placement"] == spec.placement()
        assert report["repr"] == repr(spec)
    text = run("inspect", "-", stdin=spec.model_dump_json()).stdout
    assert f"cache_key  {spec.cache_key()}" in text


def test_inspect_never_prints_a_secret(monkeypatch):
    spec_json = json.dumps(
        {"kind": "database", "url": "postgresql+psycopg://u:plain-secret@127.0.0.1/test"}
    )
    out = run("inspect", spec_json)
    assert "plain-secret" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", '{"kind": "nope"}'], "unknown kind 'nope'"),
        (["inspect", "/no/such/file.json"], "neither spec JSON nor a readable file"),
        (["inspect", '{"kind": "sqlite", "path": 3}'], "SqliteSpec.path"),
        (["schema", "nope"], "unknown kind 'nope'"),
        (["check", "no_colon"], "expected MODULE:FUNCTION"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_schema_marks_roles():
    out = run("schema", "sqlite")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    roles = {name: prop.get("x-handles-role") for name, prop in schema["properties"].items()}
    assert roles["path"] == "identity"


def test_kinds_lists_what_each_kind_needs():
    out = run("kinds")
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert 'pip install "handle-specs[spacy]"' in lines["spacy"]
    # As docs/kinds/sqlite.md says: SqliteSpec needs only the standard library.
    assert "standard library only" in lines["sqlite"]
    assert '.engine() needs pip install "handle-specs[sql]"' in lines["sqlite"]
    assert not {"sqlite-engine", "sqlite-memory", "sqlite-writer-lock"} & set(lines)


def test_check_reports_each_bad_argument(tmp_path):
    (tmp_path / "mytasks.py").write_text(
        "import sqlite3, threading\n"
        "def arguments():\n"
        "    return ([sqlite3.connect(':memory:'), threading.Lock()], {'f': lambda x: x})\n"
        "def fine():\n"
        "    return {'n': 3, 'name': 'x'}\n"
    )
    out = run("check", "mytasks:arguments", cwd=str(tmp_path))
    assert out.returncode == 1, out.stderr
    assert "args[0]" in out.stdout
    assert "SqliteSpec" in out.stdout
    assert "args[1]" in out.stdout
    out = run("check", "mytasks:fine", cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every argument can be pickled and hashed" in out.stdout
