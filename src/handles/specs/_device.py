"""Devices, dtypes, GPU slots and memory shared by the model kinds (torch, hf-pipeline).

Device strings
    "auto"    CUDA when `torch.cuda.is_available()`, else CPU.
    "cpu"     always the CPU.
    "cuda"    a CUDA GPU chosen by the spreading policy below.
    "cuda:N"  GPU N exactly; checked at build (a missing GPU is a BuildError).
    "mps"     Apple's Metal device.

Spreading worker processes over several GPUs ("auto" and "cuda")
    The first process on a machine to build a model takes worker slot 0, the
    next slot 1, and so on; slot k uses GPU k % (number of visible GPUs). A slot
    is an exclusive `flock` on a file in the temporary directory, held until the
    process ends, so a replacement for a dead worker reuses the freed slot and
    the spread stays even. Every model a process builds goes to its slot's GPU,
    so the process keeps one CUDA context. Choosing needs no CUDA call; probing
    free memory instead would create a context on every GPU in every worker.
    Where `fcntl` is missing (Windows), the slot is the process id. To place a
    process yourself, name `cuda:N` or narrow `CUDA_VISIBLE_DEVICES`.

Closing a model (`release_module`) empties its parameters and buffers in place,
so its memory is returned even while a caller still holds the module, then gives
cached CUDA blocks back to the driver with `torch.cuda.empty_cache()`.

Memory (`module_nbytes`) is counted per device from the module's parameters and
buffers, each storage once: tied weights and views of one storage count once.
Memory-mapped weights count as host bytes, although their pages are shared with
every other process that maps the same file.
"""

from __future__ import annotations

import ctypes
import difflib
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handles import _fork
from handles._registry import refs
from handles.exceptions import SpecError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "module_nbytes",
    "return_freed_memory",
    "tensors_nbytes",
    "check_device",
    "check_dtype",
    "claim_slot",
    "empty_cuda_cache",
    "gpu_for_slot",
    "release_module",
    "resolve_device",
    "to_torch_dtype",
]

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DTYPES = ("bfloat16", "float16", "float32", "float64")
# Other spellings, only to suggest the accepted name: one spelling keeps keys stable.
_DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
}
_MAX_SLOTS = 4096


# -- validation at construction (no torch import) -----------------------------


def check_device(value: str) -> str:
    """Field validator: one of auto, cpu, cuda, cuda:N, mps."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(
            "is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'"
        )
    return value


def check_dtype(value: str | None, *, extra: tuple[str, ...] = ()) -> str | None:
    """Field validator: a floating dtype name such as 'float16', with a hint for typos."""
    allowed = (*extra, *DTYPES)
    if value is None or value in allowed:
        return value
    close = _DTYPE_ALIASES.get(value.lower()) or next(
        iter(difflib.get_close_matches(value, allowed, n=1)), None
    )
    hint = f"did you mean {close!r}? " if close else ""
    raise ValueError(f"unknown dtype; {hint}use one of {', '.join(allowed)}")


# -- resolution at build ------------------------------------------------------


def resolve_device(value: str, label: str, field: str = "device") -> torch.device:
    """The torch.device for a validated device string, checked against this machine.

    `label` names the spec class in errors ("TorchModelSpec.device: ...").
    """
    import torch  # noqa: PLC0415  (torch)

    if value == "cpu":
        return torch.device("cpu")
    if value == "mps":
        if not torch.backends.mps.is_available():
            raise SpecError.one(label, field, "'mps' requested but this machine has no MPS device")
        return torch.device("mps")
    if not torch.cuda.is_available():
        if value == "auto":
            return torch.device("cpu")
        raise SpecError.one(
            label, field, f"{value!r} requested but no CUDA device is available on this machine"
        )
    count = torch.cuda.device_count()
    if value in ("auto", "cuda"):
        return torch.device("cuda", gpu_for_slot(_process_slot(), count))
    index = int(value.partition(":")[2])
    if index >= count:
        raise SpecError.one(
            label,
            field,
            f"{value!r} requested but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})",
        )
    return torch.device("cuda", index)


def to_torch_dtype(name: str) -> torch.dtype:
    """torch.float16 for 'float16' (names were validated at construction)."""
    import torch  # noqa: PLC0415  (torch)

    dtype: torch.dtype = getattr(torch, name)
    return dtype


# -- spreading over GPUs ------------------------------------------------------


def gpu_for_slot(slot: int, gpu_count: int) -> int:
    """The GPU for worker slot `slot`: round robin over the visible GPUs."""
    return slot % gpu_count


def claim_slot(folder: Path) -> tuple[int, int | None]:
    """Take the lowest free slot in `folder`: (slot, the open file holding its lock).

    Without `fcntl` (or with no free slot) the process id serves as the slot and
    no file is held.
    """
    try:
        import fcntl  # noqa: PLC0415  (not on Windows)
    except ImportError:  # pragma: no cover - Windows
        return os.getpid(), None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(_MAX_SLOTS):
            fd = os.open(folder / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return slot, fd
    except OSError:  # an unwritable temporary directory must not stop a build
        pass
    return os.getpid(), None


# This process's slot, claimed on its first automatic CUDA placement.
_slot: int | None = None
_slot_fd: int | None = None
_slot_lock = threading.Lock()  # two models building at once claim one slot


def _process_slot() -> int:
    global _slot, _slot_fd
    with _slot_lock:
        if _slot is None:
            uid = os.getuid() if hasattr(os, "getuid") else 0
            folder = Path(tempfile.gettempdir()) / f"handles-gpu-slots-{uid}"
            _slot, _slot_fd = claim_slot(folder)
        return _slot


def _forget_slot_in_child() -> None:
    # A forked child shares the parent's lock; it claims its own slot, and drops
    # its copy so the parent's slot frees when the parent ends.
    global _slot, _slot_fd
    if _slot_fd is not None:
        os.close(_slot_fd)
    _slot, _slot_fd = None, None


_fork.in_child(_forget_slot_in_child)


# -- closing ------------------------------------------------------------------


def release_module(module: Any) -> None:
    """Empty a module's parameters and buffers in place, then free cached GPU memory.

    Called once the registry has seen that nobody holds the module itself. Someone
    may still hold a part of it (a task that kept `spec.get()[0]`, or one
    parameter): those parts, and everything under them, are left intact, and
    their memory goes when their holder lets go. The rest is emptied in place,
    rather than only dereferenced, so its memory is freed even where a framework
    object still points at the module.
    """
    torch = sys.modules.get("torch")
    if torch is None:  # nothing built by torch can exist in this process
        return
    if isinstance(module, torch.nn.Module):
        with torch.no_grad():
            _empty_unheld(module, torch)
    empty_cuda_cache()


def _empty_unheld(root: Any, torch: Any) -> None:
    # A part held only by its parent's registry of children (`_modules`,
    # `_parameters`, `_buffers`) has a known reference count; anything above it is
    # a holder outside the module tree, or a part shared within it (tied
    # weights), which is left alone either way.
    seen: set[int] = set()
    stack = [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for table in (module._parameters, module._buffers):
            for name in list(table):
                if table[name] is not None and _held_elsewhere(table, name):
                    continue
                tensor = table[name]
                if tensor is not None:
                    tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
                del tensor
        for name in list(module._modules):
            if module._modules[name] is None or _held_elsewhere(module._modules, name):
                continue
            stack.append(module._modules[name])


def _held_elsewhere(table: dict[str, Any], name: str) -> bool:
    """Is `table[name]` referenced from anywhere but `table` (and the stack, if queued)?"""
    if not refs.EXACT:
        return True  # cannot tell: leave every part alone, free by dereference only
    # getrefcount's argument and the table's own reference.
    return sys.getrefcount(table[name]) > 2


def empty_cuda_cache() -> None:
    """Return cached, unused CUDA blocks to the driver, if CUDA was ever used here."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# -- memory ---------------------------------------------------------------------


def module_nbytes(module: Any) -> dict[str, int]:
    """Bytes held by a module's parameters and buffers, by device ("cpu", "cuda:0", ...)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(module, torch.nn.Module):
        return {}
    return tensors_nbytes([*module.parameters(), *module.buffers()])


def tensors_nbytes(tensors: Any) -> dict[str, int]:
    """Bytes held by `tensors` by device, counting each storage once.

    A storage shared by several tensors (tied weights, views such as the halves
    of a fused matrix) counts once, at its full size. Meta tensors hold nothing.
    """
    seen: set[tuple[str, int]] = set()
    sizes: dict[str, int] = {}
    for tensor in tensors:
        device = str(tensor.device)
        if tensor.device.type == "meta":
            continue
        try:
            storage = tensor.untyped_storage()
            where, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # sparse, quantized: no plain storage
            where, size = id(tensor), tensor.element_size() * tensor.numel()
        if (device, where) in seen or size == 0:
            continue
        seen.add((device, where))
        sizes[device] = sizes.get(device, 0) + size
    return sizes


def return_freed_memory() -> None:
    """Give freed heap memory back to the operating system (glibc's `malloc_trim`).

    A factory's module is allocated with random weights that loading replaces;
    glibc keeps such freed blocks for reuse, so without this a process would hold
    a second, unused copy's worth of memory. Does nothing where glibc is absent.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return
    trim(0)
