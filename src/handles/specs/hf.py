"""HFPipelineSpec: a transformers pipeline, loaded once per worker process.

    spec = HFPipelineSpec(task="text-classification", model="/models/sentiment", device="auto")
    spec.get()(["a fine film"])

`model` (and `tokenizer`) is a local directory written by `save_pretrained`, or a
hub id that transformers resolves (from the local cache when `HF_HUB_OFFLINE=1`).
A value that names a local path (absolute, starting with `.` or `~`, or existing
where the spec is validated: the test transformers makes) follows the path rule
of every kind (`handles.specs._paths`): it is stored absolute and normalized, so
one folder named from two working directories is one key, and a worker with
another working directory loads the same model. Hub ids are kept as given.
`trust_remote_code` stays off unless the spec sets it, and a spec read from JSON
can never set it (it runs Python from the model folder): see docs/security.md.

Identity: task, model, tokenizer, revision, dtype, pipeline kwargs and, for
local directories, a fingerprint of their files (config.json as canonical JSON
without the transformers version that saved it; every other file by SHA-256),
so retrained weights at the same path move `cache_key()`. Digests are cached
per file version (path, size, mtime, ctime, inode) in each process, the most
recently used few hundred only; files in a hub cache are known by their blob name
and never read. The device is placement.

Shared weights: on the CPU, transformers 5 maps safetensors weights copy-on-write
and keeps its parameters in the mapping when no dtype conversion is needed, so
the worker processes of one machine share one copy of the pages. A `dtype` other
than the file's converts, and so copies (see docs/gpu.md, "Models at scale").
`nbytes()` counts the model's parameters and buffers by device, mapped ones as
host bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, field_validator

from handles._allow import FromData, allowed, refused
from handles._fields import Identity, Placement
from handles._keys import digest
from handles._optional import require
from handles._spec import Spec
from handles._trust import (
    ALLOW_PICKLE_WEIGHTS,
    FROM_JSON,
    host_problems,
    pickle_weights_allowed,
)
from handles.exceptions import SpecError
from handles.specs._device import (
    check_device,
    check_dtype,
    module_nbytes,
    release_module,
    resolve_device,
    to_torch_dtype,
)
from handles.specs._paths import PathStr, absolute, looks_local

if TYPE_CHECKING:
    from transformers import Pipeline

__all__ = ["HFPipelineSpec", "dir_fingerprint", "file_digest"]

# pipeline() arguments the spec owns as fields (or refuses), never via pipeline_kwargs.
_OWN_ARGUMENTS = {
    "task": "task",
    "model": "model",
    "tokenizer": "tokenizer",
    "revision": "revision",
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "device": "device",
    "device_map": "device",
    "trust_remote_code": "trust_remote_code",
}
# save_pretrained writes these into config.json; they do not change the model.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# pipeline()/from_pretrained() arguments that take a hub token.
_TOKEN_ARGUMENTS = frozenset({"token", "use_auth_token"})
# pipeline_kwargs a spec from data may use: how the pipeline runs, never where it loads
# from (model_kwargs carries use_safetensors=False, proxies, cache_dir, ...).
_SAFE_PIPELINE_KWARGS = frozenset(
    {
        "aggregation_strategy",
        "batch_size",
        "function_to_apply",
        "max_length",
        "max_new_tokens",
        "padding",
        "return_all_scores",
        "stride",
        "top_k",
        "truncation",
    }
)


class HFPipelineSpec(Spec["Pipeline"]):
    """A `transformers.pipeline(task, model, ...)`; `get()` returns the live Pipeline."""

    kind: Literal["hf-pipeline"] = "hf-pipeline"
    from_data: ClassVar[FromData] = FromData(
        paths=("model", "tokenizer"),
        options={"pipeline_kwargs": _SAFE_PIPELINE_KWARGS},
        loaders="safetensors weights only (use_safetensors=True), never remote code",
        hosts="the hub (`HF_ENDPOINT`, else huggingface.co) for hub ids, unless HF_HUB_OFFLINE=1",
    )
    """What a spec from data may carry: see handles._allow."""
    # 2: local `model` and `tokenizer` directories are stored absolute and normalized
    # (resolved where validated, not in the worker).
    schema_version = 2

    task: Annotated[str, Identity]
    model: Annotated[PathStr, Identity]
    """A directory written by save_pretrained (stored absolute), or a hub id (kept as given)."""
    tokenizer: Annotated[PathStr | None, Identity] = None
    """A directory or hub id, like `model`; defaults to the model's own tokenizer."""
    revision: Annotated[str | None, Identity] = None
    """Hub revision (pin a commit hash for exact identity); ignored for directories."""
    dtype: Annotated[str, Identity] = "auto"
    """'auto' keeps the dtype in the model's config."""
    trust_remote_code: Annotated[bool, Identity] = False
    pipeline_kwargs: Annotated[dict[str, JsonValue], Identity] = Field(default_factory=dict)
    """Further JSON keyword arguments for `transformers.pipeline()`, e.g. {"top_k": 2}."""
    device: Annotated[str, Placement] = "auto"
    # A permission, not content, like TorchModelSpec's.
    allow_pickle_weights: Annotated[bool, Placement] = False
    """Let transformers read pickle checkpoints (pytorch_model.bin); off: safetensors only."""

    @field_validator("task", "model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("model", "tokenizer")
    @classmethod
    def _local_path_is_absolute(cls, value: str | None) -> str | None:
        # The path rule for a local directory; a hub id ("org/model") stays as given.
        if value is not None and looks_local(value):
            return absolute(value)
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype_is_known(cls, value: str) -> str:
        checked = check_dtype(value, extra=("auto",))
        assert checked is not None
        return checked

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, value: str) -> str:
        return check_device(value)

    @field_validator("pipeline_kwargs")
    @classmethod
    def _no_field_in_kwargs(cls, kwargs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for name in sorted(kwargs):
            field = _OWN_ARGUMENTS.get(name)
            if field is not None:
                raise ValueError(
                    f"{name!r} is set with the spec's own field {field}=, not in pipeline_kwargs"
                )
        for where, name, value in _nested_items(kwargs):
            # model_kwargs={"trust_remote_code": true} reaches from_pretrained too.
            if name == "trust_remote_code":
                raise ValueError(f"{where} is set with the spec's own field trust_remote_code=")
            if name in _TOKEN_ARGUMENTS and isinstance(value, str):
                raise ValueError(
                    f"{where} is a literal hub token, which would show in repr, JSON and the "
                    "key: set HF_TOKEN in the worker's environment instead"
                )
        return kwargs

    def _untrusted_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        # Remote code is Python from the model folder: never from JSON, whatever
        # the worker's settings.
        if self.trust_remote_code:
            problems.append(
                (
                    "trust_remote_code",
                    f"{FROM_JSON} may never run a model's own code; no setting allows it: "
                    "make this spec in the worker's Python code instead",
                )
            )
        if self.allow_pickle_weights and not pickle_weights_allowed():
            problems.append(
                (
                    "allow_pickle_weights",
                    f"{FROM_JSON} may not read pickle checkpoints (pytorch_model.bin): allow "
                    f"it on the worker with {ALLOW_PICKLE_WEIGHTS}=1, or save with safetensors",
                )
            )
        safe = self.from_data.options["pipeline_kwargs"]
        for name in sorted(self.pipeline_kwargs):
            if name not in safe and not allowed(self.kind, name):
                problems.append(
                    (f"pipeline_kwargs.{name}", refused(self.kind, "the argument", name, safe))
                )
        hub = [("model", self.model), ("tokenizer", self.tokenizer)]
        hosts = [(f, _hub_host()) for f, v in hub if v is not None and not looks_local(v)]
        return problems + host_problems([h for h in hosts if h[1]], carries_secret=False)

    def fingerprint(self) -> Any:
        """The files behind local `model`/`tokenizer` directories (None for hub ids)."""
        found = {
            name: dir_fingerprint(Path(value))
            for name, value in (("model", self.model), ("tokenizer", self.tokenizer))
            if value is not None and Path(value).is_dir()
        }
        return found or None

    # -- build and close ------------------------------------------------------

    def build(self) -> Pipeline:
        label = type(self).__name__
        transformers = require("transformers", "hf", kind=label)
        require("torch", "hf", kind=label)
        _check_task(transformers, self.task, label)
        _check_local(self.model, label, "model", need_config=True)
        if self.tokenizer is not None:
            _check_local(self.tokenizer, label, "tokenizer", need_config=False)
        device = resolve_device(self.device, label)
        dtype = self.dtype if self.dtype == "auto" else to_torch_dtype(self.dtype)
        kwargs = dict(self.pipeline_kwargs)
        if not self.allow_pickle_weights:
            # Tensors only: transformers refuses pytorch_model.bin rather than unpickle it.
            model_kwargs = kwargs.get("model_kwargs")
            kwargs["model_kwargs"] = {
                **(model_kwargs if isinstance(model_kwargs, dict) else {}),
                "use_safetensors": True,
            }
        pipe: Pipeline = transformers.pipeline(
            task=self.task,
            model=self.model,
            tokenizer=self.tokenizer,
            revision=self.revision,
            dtype=dtype,
            device=device,
            trust_remote_code=self.trust_remote_code,
            **kwargs,
        )
        return pipe

    def teardown(self, value: Pipeline) -> None:
        release_module(getattr(value, "model", None))

    def nbytes(self, value: Pipeline) -> dict[str, int]:
        """Bytes of the pipeline model's parameters and buffers by device, each storage once.

        The tokenizer and other processors are not counted (small next to the model).
        """
        return module_nbytes(getattr(value, "model", None))


def _hub_host() -> str:
    """The host a hub id is fetched from here, or "" when the hub is offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return ""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return urlsplit(endpoint).hostname or endpoint


def _nested_items(
    value: JsonValue, prefix: str = "pipeline_kwargs"
) -> list[tuple[str, str, JsonValue]]:
    """(dotted place, name, value) for every key at any depth of `value`."""
    found: list[tuple[str, str, JsonValue]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            where = f"{prefix}.{name}"
            found += [(where, name, item), *_nested_items(item, where)]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nested_items(item, f"{prefix}.{index}")
    return found


def _check_task(transformers: ModuleType, task: str, label: str) -> None:
    try:
        transformers.pipelines.check_task(task)
    except KeyError:
        known = ", ".join(sorted(transformers.pipelines.get_supported_tasks()))
        raise SpecError.one(
            label,
            "task",
            f"unknown task {task!r} for transformers {transformers.__version__}; "
            f"known tasks: {known}",
        ) from None


def _check_local(value: str, label: str, field: str, *, need_config: bool) -> None:
    """A value that names a local path must be a usable directory (hub ids pass)."""
    if not looks_local(value):
        return
    path = Path(value).expanduser()
    if not path.exists():
        raise SpecError.one(label, field, f"no such directory: {value}")
    if not path.is_dir():
        raise SpecError.one(
            label, field, f"{value} is a file; give the directory save_pretrained wrote"
        )
    if need_config and not (path / "config.json").is_file():
        raise SpecError.one(
            label, field, f"{value} has no config.json: not a directory written by save_pretrained"
        )


# -- fingerprints -------------------------------------------------------------


def dir_fingerprint(folder: Path) -> dict[str, str]:
    """Digest per file directly in `folder` (hidden files skipped)."""
    result = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        read = _config_digest if path.name == "config.json" else _content_digest
        result[path.name] = _once_per_version(path, read)
    return result


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, computed once per file version in this process."""
    return _once_per_version(path, _content_digest)


# The most recently used digests, by file version. Bounded: a long-lived worker
# that keys many folders, or one folder rewritten many times, must not keep every
# stale version. A few hundred covers the files of the models a process holds.
_DIGESTS_KEPT = 512
_digests: OrderedDict[tuple[str, str, int, int, int, int], str] = OrderedDict()
_digests_lock = threading.Lock()


def _once_per_version(path: Path, read: Callable[[Path], str]) -> str:
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and _BLOB_NAME.fullmatch(resolved.name):
        return resolved.name  # a hub cache blob is named by its content hash
    stat = resolved.stat()
    # ctime too: copying with copy2 can restore an old mtime, but never a ctime.
    version = (
        read.__name__,
        str(resolved),
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
        stat.st_ino,
    )
    with _digests_lock:
        known = _digests.get(version)
        if known is not None:
            _digests.move_to_end(version)
    if known is None:
        known = read(resolved)  # outside the lock: hashing a large file takes a while
        with _digests_lock:
            _digests[version] = known
            _digests.move_to_end(version)
            while len(_digests) > _DIGESTS_KEPT:
                _digests.popitem(last=False)  # the least recently used
    return known


def _content_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _config_digest(path: Path) -> str:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _content_digest(path)  # the build will report what is wrong with it
    if not isinstance(config, dict):
        return _content_digest(path)
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    try:
        return digest(config)
    except ValueError:  # NaN or infinity in the config: no canonical form, use the bytes
        return _content_digest(path)
