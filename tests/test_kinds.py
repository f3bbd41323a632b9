"""Kinds by name: lazy loading, install hints, entry points, refusing unknown names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
    with pytest.raises(MissingDependencyError, match=r'pip install "handles\[torch\]"') as info:
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
