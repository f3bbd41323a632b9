"""TorchModelSpec: a torch.nn.Module described as data, loaded once per worker process.

The spec holds no code. It names either a factory that your code registered::

    from handles.specs.torch import model_factory

    @model_factory("tiny-mlp")
    def tiny_mlp(in_features: int, out_features: int) -> torch.nn.Module: ...

    spec = TorchModelSpec(factory="tiny-mlp", kwargs={"in_features": 8, "out_features": 2},
                          weights="tiny.safetensors", device="auto")

or a TorchScript / torch.export archive (`archive="model.pt2"`). A spec read from
untrusted JSON can therefore only call factories the process registered: an
unknown name is a SpecError listing the registered ones, never an import.

`weights` and `archive` follow the path rule of every kind (`handles.specs._paths`):
made absolute and normalized where the spec is validated, so one file named from
two working directories is one key, and a worker with another working directory
loads the same file.

Weights: safetensors (preferred), or a `torch.save` checkpoint only when the
spec says `allow_pickle_weights=True`, and then read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers. A spec read from JSON may say so only where the worker sets
`HANDLES_ALLOW_PICKLE_WEIGHTS=1`. The module is put in `eval()` mode unless
`eval_mode=False`.

Shared weights: on the CPU, safetensors weights stay memory-mapped. The file is
mapped copy-on-write (`mmap.ACCESS_COPY`), its tensors are views of the mapping
(`torch.frombuffer`), and `load_state_dict(assign=True)` makes them the module's
parameters and buffers, so no private copy is made and every process on the
machine that loads the same file shares one copy of its pages. Writing to such
a parameter works and changes only this process's copy of the pages written
(never the file). Copies are made where a tensor's dtype differs from the
module's (`load_state_dict` would convert it), for `dtype=` and for a GPU
device. Tied parameters stay tied. Replace a weights file by writing a new file
(or renaming one over it), never by rewriting it in place: the mapped pages are
the file's.

Devices and the multi-GPU policy are described in `handles.specs._device`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import mmap
import sys
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from handles._allow import ALLOW_ARCHIVES, FromData, archives_allowed
from handles._fields import Identity, Placement
from handles._optional import require
from handles._spec import Spec
from handles._trust import ALLOW_PICKLE_WEIGHTS, FROM_JSON, pickle_weights_allowed
from handles.exceptions import SpecError
from handles.specs._device import (
    check_device,
    check_dtype,
    module_nbytes,
    release_module,
    resolve_device,
    return_freed_memory,
    to_torch_dtype,
)
from handles.specs._paths import LocalPath

if TYPE_CHECKING:
    import torch

__all__ = ["TorchModelSpec", "model_factory", "registered_factories"]

F = TypeVar("F", bound=Callable[..., Any])

# Suffixes of torch.save/pickle checkpoints: refused at construction without the opt-in.
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# -- the factory registry -----------------------------------------------------

_factories: dict[str, Callable[..., Any]] = {}
_factories_lock = threading.Lock()


def model_factory(name: str, *, clobber: bool = False) -> Callable[[F], F]:
    """Register the decorated function as the model factory `name`.

    Registering another function under a taken name needs `clobber=True`; the
    same function registered again (a module imported twice) is accepted.
    """
    if not name or not name.strip():
        raise ValueError("a model factory needs a non-empty name")

    def register(fn: F) -> F:
        with _factories_lock:
            current = _factories.get(name)
            if current is not None and not clobber and _where(current) != _where(fn):
                raise ValueError(
                    f"model factory {name!r} is already registered to {_where(current)}; "
                    "pass clobber=True to replace it"
                )
            _factories[name] = fn
        return fn

    return register


def registered_factories() -> Mapping[str, Callable[..., Any]]:
    """Every registered model factory by name (read-only)."""
    with _factories_lock:
        return MappingProxyType(dict(_factories))


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _factory(name: str) -> Callable[..., Any]:
    fn = _factories.get(name)
    if fn is None:
        known = ", ".join(sorted(_factories)) or "none"
        raise ValueError(
            f"no model factory by that name; registered factories: {known} "
            "(register one with @handles.specs.torch.model_factory(name))"
        )
    return fn


def _check_kwargs_fit(name: str, kwargs: Mapping[str, Any]) -> None:
    fn = _factory(name)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"the factory does not accept these kwargs: {exc}") from None


# -- the spec -----------------------------------------------------------------


class TorchModelSpec(Spec["torch.nn.Module"]):
    """A torch model from a registered factory (+ weights) or an archive; `get()` returns it."""

    kind: Literal["torch"] = "torch"
    from_data: ClassVar[FromData] = FromData(
        paths=("weights", "archive"),
        loaders="safetensors weights into a registered factory's module; archives and "
        "pickle checkpoints only by the worker's settings",
    )
    """What a spec from data may carry: see handles._allow."""
    # 2: `weights` and `archive` are stored absolute and normalized (resolved where
    # validated, not in the worker).
    schema_version = 2

    factory: Annotated[str | None, Identity] = None
    """Name given to `@model_factory`; exactly one of factory and archive."""
    kwargs: Annotated[dict[str, JsonValue], Identity] = Field(default_factory=dict)
    """JSON data passed to the factory as keyword arguments."""
    weights: Annotated[LocalPath | None, Identity] = None
    """State dict loaded into the factory's module: .safetensors, or a torch.save file.
    Stored absolute (relative paths resolve where the spec is validated)."""
    archive: Annotated[LocalPath | None, Identity] = None
    """A TorchScript (`torch.jit.save`) or torch.export (`torch.export.save`) file, stored
    absolute like `weights`."""
    dtype: Annotated[str | None, Identity] = None
    """Cast the module to this floating dtype; None keeps what the module has."""
    eval_mode: Annotated[bool, Identity] = True
    strict: Annotated[bool, Identity] = True
    """Weights must match the module's keys exactly (`load_state_dict(strict=...)`)."""
    device: Annotated[str, Placement] = "auto"
    # A permission, not content: the same file loads to the same model either way.
    allow_pickle_weights: Annotated[bool, Placement] = False
    """Allow torch.save checkpoints, read with `torch.load(weights_only=True)`."""

    @field_validator("factory")
    @classmethod
    def _factory_is_registered(cls, name: str | None) -> str | None:
        if name is not None:
            _factory(name)
        return name

    @field_validator("kwargs")
    @classmethod
    def _kwargs_are_plain_json(cls, kwargs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if _has_non_finite(kwargs):
            raise ValueError("NaN and infinity have no stable JSON form; pass them another way")
        return kwargs

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, value: str) -> str:
        return check_device(value)

    @field_validator("dtype")
    @classmethod
    def _dtype_is_known(cls, value: str | None) -> str | None:
        return check_dtype(value)

    @model_validator(mode="after")
    def _fields_agree(self) -> TorchModelSpec:
        label = type(self).__name__
        if (self.factory is None) == (self.archive is None):
            blamed = "factory" if self.factory is None else "archive"
            raise _field_error(
                label, blamed, "give exactly one of factory= (with kwargs/weights) or archive="
            )
        if self.archive is not None:
            for name in ("weights", "kwargs"):
                if getattr(self, name):
                    raise _field_error(
                        label, name, f"{name}= goes with factory=, not with archive="
                    )
        if self.factory is not None:
            try:
                _check_kwargs_fit(self.factory, self.kwargs)
            except ValueError as exc:
                raise _field_error(label, "kwargs", str(exc)) from None
        if (
            self.weights is not None
            and self.weights.lower().endswith(_PICKLE_SUFFIXES)
            and not self.allow_pickle_weights
        ):
            raise _field_error(label, "weights", _pickle_refused(self.weights))
        return self

    def _untrusted_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        # Even weights_only=True unpickles: from JSON, only where the worker allows it.
        if self.allow_pickle_weights and not pickle_weights_allowed():
            problems.append(
                (
                    "allow_pickle_weights",
                    f"{FROM_JSON} may not read torch.save (pickle) checkpoints: allow it on the "
                    f"worker with {ALLOW_PICKLE_WEIGHTS}=1, or save the weights with safetensors",
                )
            )
        # An archive is a program (TorchScript, an exported graph) for torch's interpreter.
        if self.archive is not None and not archives_allowed():
            problems.append(
                (
                    "archive",
                    f"{FROM_JSON} may not load a TorchScript or torch.export archive (a program "
                    f"torch runs): allow it on the worker with {ALLOW_ARCHIVES}=1, or use a "
                    "registered factory with safetensors weights",
                )
            )
        return problems

    # -- build and close ------------------------------------------------------

    def build(self) -> torch.nn.Module:
        label = type(self).__name__
        require("torch", "torch", kind=label)  # the install hint, if torch is missing
        device = resolve_device(self.device, label)
        if self.archive is not None:
            module = _load_archive(Path(self.archive), device, label)
        else:
            module = self._from_factory()
        if self.dtype is not None:
            module = module.to(to_torch_dtype(self.dtype))
        module = module.to(device)
        if self.eval_mode:
            _eval(module)
        return module

    def teardown(self, value: torch.nn.Module) -> None:
        release_module(value)

    def nbytes(self, value: torch.nn.Module) -> dict[str, int]:
        """Bytes of the module's parameters and buffers by device, each storage once.

        Memory-mapped weights count as host bytes, though their pages are shared
        with every process that maps the same file.
        """
        return module_nbytes(value)

    def _from_factory(self) -> torch.nn.Module:
        import torch  # noqa: PLC0415  (torch; present: build() required it)

        assert self.factory is not None
        label = type(self).__name__
        try:
            fn = _factory(self.factory)  # again: an unpickled spec skipped validation
            _check_kwargs_fit(self.factory, self.kwargs)
        except ValueError as exc:
            field = "kwargs" if self.factory in _factories else "factory"
            raise SpecError.one(label, field, str(exc)) from None
        module = fn(**self.kwargs)
        if not isinstance(module, torch.nn.Module):
            raise SpecError.one(
                label,
                "factory",
                f"factory {self.factory!r} returned {type(module).__name__}, not a torch.nn.Module",
            )
        if self.weights is not None:
            state = _read_state_dict(Path(self.weights), self.allow_pickle_weights, label)
            try:
                _load_weights(module, state, strict=self.strict)
            except RuntimeError as exc:
                raise SpecError.one(
                    label,
                    "weights",
                    f"{self.weights} does not fit the module from factory "
                    f"{self.factory!r}: {_first_problems(exc)}",
                ) from exc
            return_freed_memory()  # the factory's initial weights, replaced by the file's
        return module


def _field_error(label: str, field: str, message: str) -> ValidationError:
    # A check across fields that blames one of them: pydantic keeps the location
    # of a ValidationError raised in a model validator, so SpecError names the field.
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", "{message}", {"message": message}),
        loc=(field,),
        input=None,
    )
    return ValidationError.from_exception_data(label, [detail])


# -- reading files ------------------------------------------------------------


def _sniff(path: Path) -> str:
    """'safetensors', 'pickle' (torch.save: zip or legacy pickle) or 'unknown', by content."""
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _read_state_dict(path: Path, allow_pickle: bool, label: str) -> Mapping[str, Any]:
    """The state dict in `path`; errors name `label`'s weights field."""
    import torch  # noqa: PLC0415  (torch)

    if not path.is_file():
        raise SpecError.one(label, "weights", f"no such file: {path}")
    fmt = _sniff(path)
    if fmt == "safetensors":
        safetensors = require("safetensors", "torch", kind=label)
        try:
            with safetensors.safe_open(str(path), framework="pt") as checked:  # validates
                names = list(checked.keys())
            return _map_safetensors(path, names)
        except Exception as exc:
            raise SpecError.one(
                label, "weights", f"{path} is not a readable safetensors file: {exc}"
            ) from exc
    if fmt == "pickle":
        if not allow_pickle:
            raise SpecError.one(label, "weights", _pickle_refused(str(path)))
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SpecError.one(
                label,
                "weights",
                f"torch.load(weights_only=True) refused {path}: it holds more than tensors "
                f"({type(exc).__name__})",
            ) from exc
        if not isinstance(loaded, Mapping):
            raise SpecError.one(
                label, "weights", f"{path} holds a {type(loaded).__name__}, not a state dict"
            )
        return loaded
    raise SpecError.one(
        label, "weights", f"{path} is neither a safetensors file nor a torch.save checkpoint"
    )


# safetensors dtype names -> torch dtype attribute names.
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _map_safetensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of a (validated) safetensors file as views of one copy-on-write mapping.

    Pages are read on first touch and shared with every process mapping the
    file; a write copies the page written for this process only. A tensor that
    cannot be a view (a dtype unknown here, misaligned data, a big-endian
    machine) is read by safetensors instead, as a private copy.
    """
    import torch  # noqa: PLC0415  (torch)

    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + size
    state: dict[str, torch.Tensor] = {}
    for name in names:
        info = header[name]
        dtype = getattr(torch, _SAFETENSORS_DTYPES.get(info["dtype"], ""), None)
        begin, end = info["data_offsets"]
        if dtype is None or sys.byteorder != "little":
            state[name] = _read_one(path, name)
        elif begin == end:
            state[name] = torch.empty(info["shape"], dtype=dtype)
        elif (start + begin) % dtype.itemsize:
            state[name] = _read_one(path, name)
        else:
            flat = torch.frombuffer(
                mapped, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
            )
            state[name] = flat.view(info["shape"])
    return state


def _read_one(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open  # noqa: PLC0415  (safetensors)

    with safe_open(str(path), framework="pt") as f:
        tensor: torch.Tensor = f.get_tensor(name).clone()
    return tensor


def _load_weights(module: torch.nn.Module, state: Mapping[str, Any], *, strict: bool) -> None:
    """`load_state_dict` that keeps the state's tensors instead of copying them.

    What load_state_dict would convert (another dtype) is converted first; tied
    parameters and buffers (one tensor under several names) stay one tensor.
    """
    own = module.state_dict(keep_vars=True)
    fitted = {
        name: tensor.to(own[name].dtype)
        if name in own and own[name].dtype != tensor.dtype and own[name].shape == tensor.shape
        else tensor
        for name, tensor in state.items()
    }
    places = _tensor_places(module)
    module.load_state_dict(fitted, strict=strict, assign=True)
    for names in places.values():
        if len(names) < 2:
            continue
        loaded = [name for name in names if name in fitted] or names
        keep = _get_at(module, loaded[-1])  # several loaded: the last, as copying would leave
        for name in names:
            _set_at(module, name, keep)


def _tensor_places(module: torch.nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter and buffer, by the tensor's identity."""
    places: dict[int, list[str]] = {}
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        places.setdefault(id(tensor), []).append(name)
    return places


def _get_at(module: torch.nn.Module, name: str) -> Any:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner), attr)


def _set_at(module: torch.nn.Module, name: str, tensor: Any) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(module.get_submodule(owner), attr, tensor)


def _load_archive(path: Path, device: torch.device, label: str) -> torch.nn.Module:
    """The module in a TorchScript or torch.export archive; errors name `label`'s archive field."""
    import torch  # noqa: PLC0415  (torch)

    if not path.is_file():
        raise SpecError.one(label, "archive", f"no such file: {path}")
    names = _zip_names(path)
    if any(n.rpartition("/")[2] == "archive_format" for n in names):
        return torch.export.load(str(path)).module()
    if any("/code/" in n for n in names):
        scripted: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=device
        )
        return scripted
    hint = (
        " (it looks like a torch.save checkpoint: pass it as weights= with a factory)"
        if any(n.endswith("data.pkl") for n in names)
        else ""
    )
    raise SpecError.one(
        label, "archive", f"{path} is not a TorchScript or torch.export archive{hint}"
    )


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return []


def _eval(module: torch.nn.Module) -> None:
    # Modules from torch.export refuse eval(): they keep the mode they were exported in.
    with contextlib.suppress(NotImplementedError):
        module.eval()


def _pickle_refused(path: str) -> str:
    return (
        f"{path} is a pickle (torch.save) checkpoint; save the state dict with "
        "safetensors, or set allow_pickle_weights=True to read it with "
        "torch.load(weights_only=True)"
    )


def _first_problems(exc: RuntimeError, limit: int = 3) -> str:
    # torch lists every mismatched key; the first few say what is wrong.
    lines = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
    shown = "; ".join(lines[:limit]) or str(exc)
    more = len(lines) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False
