"""pyproject.toml claims what nox tests: the Pythons in its classifiers, the Prefect floor."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NOXFILE = (ROOT / "noxfile.py").read_text(encoding="utf-8")


def nox_constant(name: str) -> object:
    """A module-level constant of noxfile.py, read without importing nox."""
    for node in ast.parse(NOXFILE).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"noxfile.py has no {name}")


def test_classifiers_name_the_pythons_nox_tests():
    classified = {
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    # CI's own Python (the floor of requires-python), and one session per other Python.
    floor = re.fullmatch(r">=(3\.\d+)", PROJECT["requires-python"])
    assert floor is not None, PROJECT["requires-python"]
    sessions = set(re.findall(r'@nox\.session\(name="tests-(3\.\d+)"', NOXFILE))
    assert classified == {floor.group(1), *sessions}


def test_the_prefect_floor_is_the_one_nox_tests_and_the_code_checks():
    pytest.importorskip("prefect")
    from handles.integrations import _prefect_version

    (requirement,) = [r for r in PROJECT["optional-dependencies"]["prefect"] if "prefect" in r]
    floor = requirement.removeprefix("prefect>=")
    assert nox_constant("PREFECT_FLOOR")["prefect"] == floor  # type: ignore[index]
    assert tuple(int(p) for p in floor.split(".")) == _prefect_version.PROCESS_POOL_INITIALIZER
