"""Contract cases for the spaCy kind: tiny local pipelines, saved per test."""

from __future__ import annotations

from pathlib import Path

from handles.specs.spacy import SpacySpec
from support.cases import KindCase
from support.tiny_spacy import TEXT, entities, save_tiny_pipeline


def _broken(tmp: Path) -> SpacySpec:
    # A valid meta.json (so the key is computed) but no config.cfg: spacy.load
    # fails inside build(), which is what the contract's failure tests need.
    path = save_tiny_pipeline(tmp / "broken-pipeline")
    (path / "config.cfg").unlink()
    return SpacySpec(path=str(path))


CASES = [
    KindCase(
        name="spacy",
        make=lambda tmp: SpacySpec(path=str(save_tiny_pipeline(tmp / "tiny-pipeline"))),
        placement_variant=lambda s: s.replace(batch_size=16),
        identity_variant=lambda s: s.replace(disable=["merge_entities"]),
        broken=_broken,
        alive=lambda nlp: entities(nlp, TEXT),
        requires=("spacy",),
    ),
]
