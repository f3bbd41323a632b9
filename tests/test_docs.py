"""Every Python block in README.md and docs/ (subfolders too) runs, and the README demos run.

Blocks of one page share a namespace and run in order, in a fresh working directory.
Blocks that include a file (`--8<--`) come from examples/, which run on their own.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

from handles._kinds import BUILTIN
from support.scripts import run_script

ROOT = Path(__file__).resolve().parent.parent

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("**/*.md"))]
_HOOKS = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
assert _HOOKS is not None
assert _HOOKS.loader is not None
mkdocs_hooks = importlib.util.module_from_spec(_HOOKS)  # loaded from its file, as mkdocs does
_HOOKS.loader.exec_module(mkdocs_hooks)
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def page_id(page: Path) -> str:
    """README.md, index.md, kinds/sqlite.md: pages in docs/ by their path there."""
    return page.relative_to(DOCS if page.is_relative_to(DOCS) else ROOT).as_posix()


def python_blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text(encoding="utf-8")) if "--8<--" not in b]


@pytest.mark.parametrize("page", PAGES, ids=[page_id(p) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page_id(page)} has no Python blocks of its own")
    # Pythons with no CPU torch wheel here (nox -s tests-3.12, tests-3.13) lack torch.
    if any(re.search(r"^\s*(import|from) torch\b", block, re.MULTILINE) for block in blocks):
        pytest.importorskip("torch", reason=f"{page_id(page)} needs torch")
    monkeypatch.chdir(tmp_path)
    # A real module, as a user's file would be (pydantic generics look their module up).
    name = page_id(page).removesuffix(".md").replace("/", "_").replace("-", "_")
    module = types.ModuleType(f"docs_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{page_id(page)} block {number}", "exec")
        exec(code, module.__dict__)


def test_core_quickstart_runs(tmp_path):
    out = run_script(ROOT / "examples" / "quickstart.py", tmp_path, timeout=270)
    assert out.count("builds=1") == 3, out  # two workers and this process


@pytest.mark.slow
def test_readme_main_demo_runs(tmp_path):
    # The README's first quick-start command runs this script (nox -s demo).
    pytest.importorskip("prefect")
    pytest.importorskip("spacy")
    out = run_script(ROOT / "examples" / "prefect_specs.py", tmp_path, timeout=270)
    assert "second run, task states: ['Cached']" in out
    assert "loads 1" in out
    assert "pass SqliteSpec(path=...) instead" in out
    # One server for the parent and every worker, and nothing that looks like a failure.
    assert out.count("Starting temporary server") == 1, out
    assert "Traceback" not in out
    assert "| ERROR" not in out


def test_reference_has_one_heading_per_public_name():
    import handles

    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert mkdocs_hooks.MARKER in reference, "the built-in kinds' entries come from the table"
    reference = mkdocs_hooks.on_page_markdown(reference)
    documented = re.findall(r"^::: handles\.(\w+)$", reference, re.MULTILINE)
    assert sorted(set(documented)) == sorted(documented), "a name documented twice"
    assert set(handles.__all__) <= set(documented)
    # mkdocstrings gives each `:::` entry its own heading and signature only with these.
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "show_root_heading: true" in config
    assert "separate_signature: true" in config


def test_every_page_is_in_the_site_and_the_command_line_is_linked():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {page_id(p) for p in PAGES if p.is_relative_to(DOCS)}
    in_nav = {path for entry in mkdocs_hooks.kinds_nav() for path in entry.values()}
    assert {p for p in pages if f": {p}" not in config and p not in in_nav} == set()
    assert f"{mkdocs_hooks.SECTION}: []" in config, "kinds' pages come from the table"


def test_every_builtin_kind_has_its_page():
    for name, info in BUILTIN.items():
        assert info.page is not None, f"{name} has no docs page in the table of kinds"
        assert (DOCS / "kinds" / info.page).is_file(), f"{name}: docs/kinds/{info.page} is missing"
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
