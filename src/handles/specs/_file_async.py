"""FileSpec on fsspec's async filesystems (http, s3fs, ...): one filesystem per event loop.

    fs = await spec.aget()                 # this loop's filesystem, asynchronous=True
    data = await fs._cat_file(spec.path)   # fsspec's coroutine methods start with "_"

An async filesystem opens its client session (aiohttp's, aiobotocore's) on the loop
that first awaits it, and fails on any other loop ("attached to a different loop").
So, for a protocol fsspec implements asynchronously, `aget()` gives the running
loop's own instance: built on that loop with `asynchronous=True`, its session
opened there at once (`await fs.set_session()`, for backends that have one), one
per loop for every FileSpec with the same protocol, options and secrets, and
closed on that loop when it shuts down (`await session.close()`). Each file is
checked once per loop, as `get()` checks it once per process. `get()` and `open()`
keep the process's synchronous filesystem, on every protocol.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from copy import deepcopy
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, JsonValue

from handles._fields import Identity
from handles._optional import require
from handles._registry import registry
from handles._secrets import SecretRef, scrubbed
from handles._spec import Scope, Spec
from handles.exceptions import BuildError, SpecError

if TYPE_CHECKING:
    from fsspec.asyn import AsyncFileSystem

__all__ = ["loop_filesystem"]

LABEL = "FileSpec"  # errors name the class users write (no kind imports another)
READ_MODES = frozenset({"rb", "r"})  # FileSpec's

# Files already checked on each loop's filesystem: (path, reading). Goes with the filesystem.
_checked: weakref.WeakKeyDictionary[Any, set[tuple[str, bool]]] = weakref.WeakKeyDictionary()


async def loop_filesystem(
    spec: Any, process_filesystem: Callable[[Any], Any]
) -> AsyncFileSystem | None:
    """The running loop's async filesystem for FileSpec `spec`'s file, checked; None if not async.

    process_filesystem: gives the spec's companion for its process filesystem
    (protocol, options with the URL's own, secrets), checking protocol and codec.
    """
    fsspec = require("fsspec", "file", kind=LABEL)
    try:
        shared = process_filesystem(spec)
    except SpecError as exc:
        raise BuildError.for_spec(spec, exc) from exc
    if not getattr(fsspec.get_filesystem_class(spec.protocol), "async_impl", False):
        return None
    on_loop = _LoopFileSystem(
        protocol=shared.protocol, options=shared.options, secrets=shared.secrets
    )
    first = on_loop not in registry()
    fs = await on_loop.aget()
    file = (spec.path, spec.mode in READ_MODES)
    if file in _checked.get(fs, ()):
        return fs
    try:
        with scrubbed(spec.secrets, spec._resolved_secrets() if spec.secrets else {}):
            await _probe(spec, fs)
    except Exception as exc:
        if first:  # built for this failing spec alone: nothing of it stays
            registry().evict(on_loop)
        raise BuildError.for_spec(spec, exc) from exc
    _checked.setdefault(fs, set()).add(file)
    return fs


async def _probe(spec: Any, fs: AsyncFileSystem) -> None:
    # FileSpec._probe, awaited: one metadata call on this loop's filesystem.
    with spec._probing():
        if spec.mode not in READ_MODES:
            await fs._exists(spec.path)
            return
        info = await fs._info(spec.path)
    spec._refuse_directory(info)


class _LoopFileSystem(Spec["AsyncFileSystem"]):
    """One event loop's async filesystem for a protocol, options and secrets (internal)."""

    kind: Literal["file-system-loop"] = "file-system-loop"
    scope: ClassVar[Scope] = "loop"

    protocol: Annotated[str, Identity]
    options: Annotated[dict[str, JsonValue], Identity]
    secrets: Annotated[dict[str, SecretRef], Identity] = Field(default_factory=dict)

    async def abuild(self) -> AsyncFileSystem:
        fsspec = require("fsspec", "file", kind=LABEL)
        secrets = {
            name: ref.resolve(LABEL, f"secrets.{name}") for name, ref in self.secrets.items()
        }
        with scrubbed(self.secrets, secrets):
            # A deep copy, as for the process's filesystem: backends edit options in place.
            options: dict[str, Any] = {**deepcopy(dict(self.options)), **secrets}
            fs = fsspec.filesystem(
                self.protocol, **options, asynchronous=True, skip_instance_cache=True
            )
            await _session(fs)  # opened on this loop, now
        return fs

    async def ateardown(self, value: AsyncFileSystem) -> None:
        session = await _session(value)  # the one opened at build
        close = getattr(session, "close", None)
        if close is not None:
            await close()
        value.invalidate_cache()


async def _session(fs: AsyncFileSystem) -> Any:
    # http's and s3fs's client session; a backend without set_session opens its
    # own on first use, on this same loop, and is dropped with it.
    set_session = getattr(fs, "set_session", None)
    return None if set_session is None else await set_session()
