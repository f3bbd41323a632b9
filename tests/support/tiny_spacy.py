"""Tiny spaCy pipelines built locally for the tests, and worker functions for process pools.

A blank English pipeline with rule-based components only (sentencizer, an entity
ruler with a few patterns, merge_entities): real spaCy objects, no training, no
download, saved with `nlp.to_disk` in well under a second. spaCy is imported
inside the functions, so importing this module (as the contract suite does in
every child) stays cheap.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import handles
from handles.specs.spacy import SpacySpec

COMPONENTS = ("sentencizer", "entity_ruler", "merge_entities")
PATTERNS = [
    {"label": "PERSON", "pattern": "Ada Lovelace"},
    {"label": "PERSON", "pattern": "Grace Hopper"},
    {"label": "GPE", "pattern": "London"},
    {"label": "ORG", "pattern": [{"LOWER": "analytical"}, {"LOWER": "engine"}]},
]
TEXT = "Ada Lovelace wrote about the Analytical Engine in London. Grace Hopper read it."
ENTS = [
    ("Ada Lovelace", "PERSON"),
    ("Analytical Engine", "ORG"),
    ("London", "GPE"),
    ("Grace Hopper", "PERSON"),
]


def save_tiny_pipeline(path: Path, *, name: str = "tiny_ner", version: str = "1.0.0") -> Path:
    """Write a tiny rule-based pipeline to `path` (a new directory) and return it."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(PATTERNS)  # type: ignore[attr-defined]
    nlp.add_pipe("merge_entities")
    nlp.meta["name"] = name
    nlp.meta["version"] = version
    nlp.to_disk(path)
    return path


def set_meta_version(path: Path, version: str) -> None:
    """Change the version in a saved pipeline's meta.json, as a model release would.

    The file's mtime is moved a whole second on: a rewrite within the file
    system's timestamp granularity must not depend on timing to be noticed.
    """
    meta_file = path / "meta.json"
    before = meta_file.stat().st_mtime_ns
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["version"] = version
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    os.utime(meta_file, ns=(before + 1_000_000_000, before + 1_000_000_000))


def entities(nlp: Any, text: str = TEXT) -> list[tuple[str, str]]:
    return [(ent.text, ent.label_) for ent in nlp(text).ents]


# -- process-pool workers (importable by spawned children) -----------------------

_start_together: Any = None


def init_pool_worker(barrier: Any) -> None:
    """Pool initializer: keep the barrier that the first calls wait on."""
    global _start_together
    _start_together = barrier


def ner_in_worker(spec: SpacySpec, text: str, wait: bool) -> dict[str, Any]:
    """One task: NER through `spec.get()`, reporting what this process's registry did.

    The first call on each worker waits at a barrier, so every worker is
    certainly busy at once and takes part (with no sleeps or timing).
    """
    if wait:
        _start_together.wait(timeout=120)
    nlp = spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "ents": entities(nlp, text),
        "builds": stats.builds,
        "errors": stats.errors,
        "pipeline_id": id(nlp),
    }
