"""Tiny, real models built locally for the torch and hf-pipeline tests (no network).

Imports only torch, safetensors, tokenizers and transformers (and handles), so the
GPU tests can use it on a machine that has nothing else. Everything is seeded:
the same call writes the same bytes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import save_file

import handles
from handles.specs.torch import model_factory

IN_FEATURES = 8
WORDS = ["the", "a", "good", "bad", "movie", "film", "great", "awful", "plot", "not", "very"]
LABELS = {0: "NEG", 1: "POS"}


class TinyMLP(torch.nn.Module):
    def __init__(self, in_features: int = IN_FEATURES, hidden: int = 16, out_features: int = 2):
        super().__init__()
        self.fc1 = torch.nn.Linear(in_features, hidden)
        self.fc2 = torch.nn.Linear(hidden, out_features)
        self.dropout = torch.nn.Dropout(0.5)  # makes train vs eval mode visible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


@model_factory("tiny-mlp")
def tiny_mlp(in_features: int = IN_FEATURES, hidden: int = 16, out_features: int = 2) -> TinyMLP:
    return TinyMLP(in_features, hidden, out_features)


class SquareStack(torch.nn.Sequential):
    """`layers` square Linear layers: width * width * layers * 4 bytes of float32 weights."""

    def __init__(self, width: int = 2048, layers: int = 4):
        super().__init__(*(torch.nn.Linear(width, width) for _ in range(layers)))


@model_factory("square-stack")
def square_stack(width: int = 2048, layers: int = 4) -> SquareStack:
    return SquareStack(width, layers)


def save_square_stack(path: Path, seed: int = 0, **kwargs: Any) -> Path:
    """Weights for `square-stack` (width=2048, layers=4: 64 MiB and 32 KiB of biases)."""
    torch.manual_seed(seed)
    save_file(SquareStack(**kwargs).state_dict(), str(path))
    return path


class TiedLM(torch.nn.Module):
    """An embedding tied to the output layer (one weight under two names) and a buffer."""

    def __init__(self, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.out = torch.nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("scale", torch.full((width,), 2.0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids) * self.scale)


@model_factory("tied-lm")
def tied_lm(vocab: int = 50, width: int = 16) -> TiedLM:
    return TiedLM(vocab, width)


def save_tied_lm(path: Path, seed: int = 0, **kwargs: Any) -> Path:
    """Weights for `tied-lm` as safetensors' save_model writes them: the tied weight once."""
    from safetensors.torch import save_model

    torch.manual_seed(seed)
    save_model(TiedLM(**kwargs), str(path))
    return path


def seeded_mlp(seed: int = 0, **kwargs: Any) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP(**kwargs)


def save_safetensors(path: Path, seed: int = 0, **kwargs: Any) -> Path:
    """Weights for `tiny-mlp` with `kwargs`, as safetensors."""
    save_file(seeded_mlp(seed, **kwargs).state_dict(), str(path))
    return path


def save_pickle(path: Path, seed: int = 0, **kwargs: Any) -> Path:
    """The same weights as a torch.save checkpoint."""
    torch.save(seeded_mlp(seed, **kwargs).state_dict(), path)
    return path


def save_torchscript(path: Path, seed: int = 0) -> Path:
    torch.jit.save(torch.jit.script(seeded_mlp(seed).eval()), str(path))
    return path


def save_exported(path: Path, seed: int = 0) -> Path:
    module = seeded_mlp(seed).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        module, (torch.zeros(2, IN_FEATURES),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return path


def sample_input(rows: int = 4) -> torch.Tensor:
    return torch.linspace(-1, 1, rows * IN_FEATURES).reshape(rows, IN_FEATURES)


def save_tiny_hf(folder: Path, seed: int = 0, hidden: int = 16) -> Path:
    """A text-classification model: 1-layer BERT and a word-level tokenizer built here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=32,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# -- run in worker processes (importable by spawn children) -------------------


def call_models(specs: list[handles.Spec[Any]], text: str) -> dict[str, Any]:
    """Use every spec once; report this process's id, devices and the registry's builds."""
    outputs, devices = [], []
    for spec in specs:
        model = spec.get()
        if isinstance(model, torch.nn.Module):
            device = next(model.parameters()).device
            with torch.inference_mode():
                outputs.append(model(sample_input(1).to(device)).tolist())
        else:
            device = model.device
            outputs.append(model(text))
        devices.append(str(device))
    stats = handles.registry().stats()
    return {
        "pid": os.getpid(),
        "builds": [stats[s.cache_key()].builds for s in specs],
        "devices": devices,
        "outputs": outputs,
    }


def _meet(barrier: Any) -> None:
    barrier.wait(timeout=120)


def run_in_spawn_pool(
    specs: list[handles.Spec[Any]], calls: int = 40, workers: int = 2
) -> list[dict[str, Any]]:
    """`calls` calls of `call_models` on a spawn pool whose workers all start before any call."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_meet, initargs=(barrier,)
    ) as pool:
        return list(pool.map(call_models, [specs] * calls, ["a good film"] * calls))


# -- memory: PSS of spawn workers each holding a model (Linux) ----------------


def pss_bytes(pid: int) -> int:
    """A process's proportional set size: private pages plus its share of shared ones."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


_pool_barrier: Any = None


def _keep_barrier(barrier: Any) -> None:
    global _pool_barrier
    _pool_barrier = barrier


def _touch(model: Any) -> None:
    module = getattr(model, "model", model)  # a pipeline's model
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.sum()  # reads every page, as inference would


def hold_spec(spec: handles.Spec[Any]) -> None:
    """In a worker: get the spec's model (the registry keeps it) and read all its weights."""
    _touch(spec.get())


@functools.cache
def _loaded_by_hand(factory: str, kwargs_items: tuple[Any, ...], weights: str) -> Any:
    from safetensors.torch import load_file

    from handles.specs.torch import registered_factories

    module = registered_factories()[factory](**dict(kwargs_items))
    module.load_state_dict(load_file(weights))
    return module.eval()


def hold_by_hand(factory: str, kwargs: dict[str, Any], weights: str) -> None:
    """In a worker: the hand-written loader, a per-process cache around load_state_dict."""
    _touch(_loaded_by_hand(factory, tuple(sorted(kwargs.items())), weights))


def hold_nothing() -> None:
    """In a worker: nothing (the idle baseline; torch, safetensors, handles imported)."""
    import safetensors.torch  # noqa: F401


def _hold_then_meet(hold: Callable[[], None]) -> int:
    hold()
    _pool_barrier.wait(timeout=120)  # one task per worker: every worker is busy at once
    return os.getpid()


def pss_of_spawn_workers(hold: Callable[[], None], workers: int) -> list[int]:
    """PSS in bytes of each of `workers` spawn workers after each ran `hold` once.

    Read while all of them are alive and holding what `hold` left them, so a page
    they share counts once in the sum.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_keep_barrier, initargs=(barrier,)
    ) as pool:
        pids = list(pool.map(_hold_then_meet, [hold] * workers))
        assert len(set(pids)) == workers, pids
        return [pss_bytes(pid) for pid in pids]


def weight_copies(hold: Callable[[], None], weights_bytes: int, workers: int) -> float:
    """Copies of the weights held by `workers` spawn workers, from PSS.

    (sum of PSS over workers that ran `hold`) minus (the same for workers that
    imported the same modules and hold nothing), divided by the weights' size.
    """
    idle = sum(pss_of_spawn_workers(hold_nothing, workers))
    loaded = sum(pss_of_spawn_workers(hold, workers))
    return (loaded - idle) / weights_bytes
