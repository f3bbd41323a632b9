"""Kinds by name: lazy loading, install hints, entry points, refusing unknown names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import handles
from handles import MissingDependencyError, SpecError
from handles._kinds import register_kind
from support.kinds import EchoSpec


def test_defined_classes_are_known_kinds():
    assert handles.load_kind("test-echo") is EchoSpec
    assert "test-echo" in handles.known_kinds()
    assert "sqlite" in handles.known_kinds()


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown kind 'nope'; known kinds: .*test-echo"):
        handles.spec_from_json('{"kind": "nope"}')


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "a spec is a JSON object"),
        ('{"name": "x"}', "kind: missing"),
    ],
)
def test_malformed_json_is_a_spec_error(data, message):
    with pytest.raises(SpecError, match=message):
        handles.spec_from_json(data)


def test_missing_package_names_the_extra():
    register_kind("test-missing-dep", "handles_not_installed_pkg.mod:Spec", extra="torch")
    with pytest.raises(
        MissingDependencyError, match=r'pip install "handle-specs\[torch\]"'
    ) as info:
        handles.load_kind("test-missing-dep")
    assert isinstance(info.value, ImportError)


def test_registering_over_a_name_needs_clobber():
    register_kind("test-clobber", "a.b:C")
    register_kind("test-clobber", "a.b:C")  # same target: fine
    with pytest.raises(ValueError, match="clobber=True"):
        register_kind("test-clobber", "x.y:Z")
    register_kind("test-clobber", "x.y:Z", clobber=True)
    assert handles.known_kinds()["test-clobber"].target == "x.y:Z"


def test_two_classes_cannot_claim_one_kind():
    from typing import Literal

    with pytest.raises(TypeError, match="already defined by"):

        class Impostor(handles.Spec[int]):
            kind: Literal["test-echo"] = "test-echo"


def test_a_subclass_inheriting_a_taken_kind_is_a_second_claim():
    claimed = r"'test-echo' is already defined by support\.kinds\.EchoSpec"
    with pytest.raises(TypeError, match=claimed):

        class QuietEcho(EchoSpec):  # declares no kind: claims EchoSpec's
            pass


# A kind and a kind subclassing it, both in __main__ (a notebook, a script run with a
# process pool): cloudpickle sends them by value, and rebuilding them in the same
# process first makes an empty class on the same bases, which inherits the base's kind.
SUBCLASS_KIND_SCRIPT = """
import json
import subprocess
import sys
from typing import Annotated, Literal

import cloudpickle

import handles
from handles import Identity, Spec, testing


class GreetingSpec(Spec[str]):
    kind: Literal["test-greeting"] = "test-greeting"
    name: Annotated[str, Identity]

    def build(self) -> str:
        return "hello " + self.name


class LoudGreetingSpec(GreetingSpec):
    kind: Literal["test-loud-greeting"] = "test-loud-greeting"

    def build(self) -> str:
        return super().build().upper()


WORKER = (
    "import json, sys, cloudpickle, handles\\n"
    "spec = cloudpickle.loads(sys.stdin.buffer.read())\\n"
    "again = handles.spec_from_json(spec.model_dump_json())\\n"
    "print(json.dumps([type(again) is type(spec), again.cache_key(), again.get()]))\\n"
)

spec = LoudGreetingSpec(name="ada")
classes = cloudpickle.loads(cloudpickle.dumps((GreetingSpec, LoudGreetingSpec)))
copy = cloudpickle.loads(cloudpickle.dumps(spec))
testing.check_pickle(spec)
testing.check_key_stable_across_processes(spec)  # by value into two fresh interpreters
# A worker that never defined the classes: they arrive by value, and name their kinds there.
worker = subprocess.run(
    [sys.executable, "-c", WORKER], input=cloudpickle.dumps(spec), capture_output=True, check=True
)
try:

    class Impostor(GreetingSpec):  # a real second class: inherits the taken kind
        pass

except TypeError as exc:
    impostor = str(exc)
else:
    impostor = "defined"
print(json.dumps({
    "same classes": classes == (GreetingSpec, LoudGreetingSpec),
    "copy": [copy == spec, type(copy) is LoudGreetingSpec, copy.get()],
    "kinds": [handles.load_kind(k).__name__ for k in ("test-greeting", "test-loud-greeting")],
    "impostor": impostor,
    "worker": json.loads(worker.stdout),
    "key": spec.cache_key(),
}))
"""


def test_kinds_defined_in_main_round_trip_through_cloudpickle_in_the_same_process(
    tmp_path, subprocess_env
):
    pytest.importorskip("cloudpickle")
    script = tmp_path / "greetings.py"
    script.write_text(SUBCLASS_KIND_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("worker") == [True, out.pop("key"), "HELLO ADA"]
    assert out == {
        "same classes": True,
        "copy": [True, True, "HELLO ADA"],
        "kinds": ["GreetingSpec", "LoudGreetingSpec"],
        "impostor": "spec kind 'test-greeting' is already defined by __main__.GreetingSpec",
    }


def test_third_party_kind_from_an_entry_point(tmp_path):
    # A real installed-distribution layout: a module and a dist-info with entry_points.txt.
    (tmp_path / "thirdparty_kind.py").write_text(
        textwrap.dedent(
            """
            from typing import Literal
            import handles

            class WidgetSpec(handles.Spec[str]):
                kind: Literal["widget"] = "widget"
                size: int

                def build(self) -> str:
                    return "widget" * self.size
            """
        )
    )
    dist = tmp_path / "thirdparty_kind-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-kind\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[handles.kinds]\nwidget = thirdparty_kind:WidgetSpec\n")
    script = (
        "import json, sys, handles\n"
        "assert 'thirdparty_kind' not in sys.modules\n"
        's = handles.spec_from_json(\'{"kind": "widget", "size": 2}\')\n'
        "print(json.dumps([type(s).__name__, s.get(), 'widget' in handles.known_kinds()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == ["WidgetSpec", "widgetwidget", True]


def test_private_helper_kinds_are_never_known_by_name():
    import handles.specs.sqlite  # defines _SqliteEngine, _SqliteMemoryKeeper, _SqliteWriterLock

    private = ["sqlite-engine", "sqlite-memory", "sqlite-writer-lock"]
    assert not set(private) & set(handles.known_kinds())
    for name in private:
        with pytest.raises(SpecError, match=f"unknown kind {name!r}"):
            handles.spec_from_json(json.dumps({"kind": name, "name": "x"}))
    assert handles.specs.sqlite._SqliteMemoryKeeper(name="x").kind == "sqlite-memory"


def test_a_private_class_is_not_registered():
    from typing import Literal

    class _Helper(handles.Spec[int]):
        kind: Literal["test-private-helper"] = "test-private-helper"

    assert "test-private-helper" not in handles.known_kinds()
    with pytest.raises(SpecError, match="unknown kind"):
        handles.load_kind("test-private-helper")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("json:dumps", "not a Spec class"),
        ("support.kinds:EchoSpec", "whose kind is 'test-echo'"),
        ("support.kinds:NoSuchClass", "not found"),
    ],
)
def test_load_kind_checks_what_it_imported(target, message):
    register_kind("test-wrong-target", target, clobber=True)
    with pytest.raises(SpecError, match=message):
        handles.load_kind("test-wrong-target")
    with pytest.raises(SpecError, match=message):
        handles.spec_from_json('{"kind": "test-wrong-target"}')


def test_register_kind_cannot_take_a_built_in_name():
    with pytest.raises(ValueError, match="built in"):
        register_kind("sqlite", "mypackage.db:MySqliteSpec", clobber=True)
    register_kind("sqlite", "handles.specs.sqlite:SqliteSpec")  # the built-in itself: fine
    assert handles.known_kinds()["sqlite"].target == "handles.specs.sqlite:SqliteSpec"


# A user's class declaring a built-in kind name, in a fresh interpreter, before
# and after the built-in's module is imported: a TypeError at once either way,
# and the built-in keeps its name.
CLAIM_SQLITE = """
import json, sys
from typing import Literal
import handles
{before}
try:
    class MySqlite(handles.Spec[int]):
        kind: Literal["sqlite"] = "sqlite"
        path: str
except TypeError as exc:
    outcome = str(exc)
else:
    outcome = "defined"
from handles import SqliteSpec
spec = handles.spec_from_json(json.dumps({{"kind": "sqlite", "path": "x.db"}}))
print(json.dumps([outcome, type(spec) is SqliteSpec]))
"""


@pytest.mark.parametrize("before", ["", "from handles import SqliteSpec"], ids=["first", "after"])
def test_a_built_in_kind_name_always_means_the_built_in(before, run_python):
    outcome, rebuilt_builtin = json.loads(run_python(CLAIM_SQLITE.format(before=before)))
    assert outcome.startswith("spec kind 'sqlite' is built in (handles.specs.sqlite:SqliteSpec)")
    assert "must declare a kind name of its own" in outcome
    assert rebuilt_builtin


def test_deep_nesting_is_a_spec_error_not_a_recursion_error():
    deep = '{"kind": "sqlite", "path": ' + "[" * 5000 + "]" * 5000 + "}"
    # Python 3.11 and 3.12's json parser gives up first ("nested too deeply"); 3.13's
    # reads it, and the key check refuses it ("nested more than 64 levels deep").
    with pytest.raises(SpecError, match=r"nested (too deeply|more than)"):
        handles.spec_from_json(deep)
    nested: object = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(SpecError):
        handles.spec_from_json({"kind": "sqlite", "path": nested})


def test_kind_info_says_what_is_needed():
    kinds = handles.known_kinds()
    assert kinds["spacy"].needs() == 'pip install "handle-specs[spacy]"'
    assert kinds["sqlite"].extra is None
    assert kinds["sqlite"].needs().startswith("standard library only")


def test_an_internal_class_cannot_be_registered_into_json():
    register_kind("test-internal", "handles.specs.sqlite:_SqliteMemoryKeeper", clobber=True)
    with pytest.raises(SpecError, match="an internal class"):
        handles.spec_from_json('{"kind": "test-internal", "name": "x"}')


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        # A package that is not installed: the kind's extra says what to install.
        ("import handles_test_absent\n", MissingDependencyError, "handles_test_absent"),
        # Installed but broken (a name it lacks): that error as it is, not an install hint.
        ("from json import no_such_name\n", ImportError, "no_such_name"),
    ],
    ids=["missing-package", "broken-module"],
)
def test_only_a_missing_package_is_a_missing_dependency(
    source, error, message, tmp_path, monkeypatch
):
    module = f"handles_test_kind_{error.__name__.lower()}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_kind("test-import-failure", f"{module}:ThingSpec", extra="thing", clobber=True)
    with pytest.raises(ImportError, match=message) as info:
        handles.load_kind("test-import-failure")
    assert type(info.value) is error
    if error is MissingDependencyError:
        assert 'pip install "handle-specs[thing]"' in str(info.value)
        assert str(info.value).startswith("ThingSpec needs")


def test_the_table_of_builtin_kinds_is_what_loads():
    from handles._kinds import BUILTIN
    from handles.integrations.preflight import LIVE_TYPES

    for name, info in BUILTIN.items():
        cls = handles.load_kind(name)
        assert (cls.__module__, cls.__name__) == (info.module, info.class_name)
        assert getattr(handles, info.class_name) is cls  # exported, lazily
        assert handles.known_kinds()[name] == info
        for type_name in info.live_types:
            assert LIVE_TYPES[type_name][1] == info.example()
    async_engine = LIVE_TYPES["sqlalchemy.ext.asyncio.engine.AsyncEngine"]
    assert async_engine[1] == "AsyncDatabaseSpec(url=...)"
    assert LIVE_TYPES["sqlite3.Connection"][1] == "SqliteSpec(path=...)"


def _imported_modules(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return imported


def test_no_kind_imports_another_and_shared_modules_import_no_kind():
    # Kinds share code through the core and handles.specs._* modules (paths, devices,
    # the SQLAlchemy base, SQLite's pragmas and lock), never through another kind.
    from handles._kinds import BUILTIN

    kind_modules = {info.module for info in BUILTIN.values()}
    folder = Path(handles.__file__).parent / "specs"
    for path in sorted(folder.glob("*.py")):
        module = f"handles.specs.{path.stem}"
        reached = _imported_modules(path) & (kind_modules - {module})
        assert reached == set(), f"{module} imports the kind module(s) {sorted(reached)}"
