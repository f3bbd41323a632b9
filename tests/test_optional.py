"""handles.require: the public way for a kind to import an optional package."""

from __future__ import annotations

import sys

import pytest

import handles
from handles import MissingDependencyError


def test_require_returns_the_module():
    assert handles.require("json") is sys.modules["json"]


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ({"extra": "torch"}, 'pip install "handle-specs[torch]"'),
        ({"install": "faiss-cpu"}, 'pip install "faiss-cpu"'),
        ({}, 'pip install "handles_no_such_pkg"'),
    ],
)
def test_a_missing_package_says_what_to_install(options, hint):
    with pytest.raises(MissingDependencyError) as info:
        handles.require("handles_no_such_pkg.sub", kind="VectorSpec", **options)
    assert str(info.value) == f"VectorSpec needs handles_no_such_pkg: {hint}"
    assert info.value.package == "handles_no_such_pkg"
    assert isinstance(info.value, ImportError)


def test_a_broken_install_raises_its_own_error(tmp_path, monkeypatch):
    # The package is there but imports something missing: not "please install it".
    (tmp_path / "handles_broken_pkg.py").write_text("import handles_missing_inner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        handles.require("handles_broken_pkg", install="handles-broken-pkg")
    assert not isinstance(info.value, MissingDependencyError)


def test_spacy_spec_without_spacy_names_the_extra(run_python):
    # Only the core installed: no spaCy, so no pipeline package either.
    out = run_python(
        "import sys\n"
        "sys.modules['spacy'] = None  # as if not installed\n"
        "from handles import MissingDependencyError, SpacySpec\n"
        "try:\n"
        "    SpacySpec(name='en_core_web_sm').get()\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    assert out == 'SpacySpec needs spacy: pip install "handle-specs[spacy]"'
