"""Secret references: a spec carries where a secret lives, never the secret.

The value is read by `SecretRef.resolve()`, which kinds call inside `build()`,
on the worker. repr, JSON, pickle and cache keys see only the reference.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from handles.exceptions import SpecError

__all__ = [
    "DatabaseURL",
    "SecretRef",
    "holds_credential",
    "mask_url_password",
    "parse_database_url",
    "scrub",
    "scrubbed",
    "scrubbed_for",
    "split_url_password",
    "url_has_password",
]

MASK = "***"


class SecretRef(BaseModel):
    """A reference to a secret held in an environment variable or a file.

    Accepts `SecretRef(env="PGPASSWORD")`, `SecretRef(file="/run/secrets/pg")`, or
    the strings `"env:PGPASSWORD"` / `"file:/run/secrets/pg"` wherever a field
    is typed `SecretRef`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            source, sep, name = data.partition(":")
            if not sep or source not in ("env", "file") or not name:
                raise ValueError(
                    "a secret must be a reference such as 'env:NAME' or 'file:/path', "
                    "not a literal value"
                )
            return {source: name}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of env= or file=")
        return self

    @model_serializer
    def _as_reference(self) -> dict[str, str]:
        return {"env": self.env} if self.env is not None else {"file": str(self.file)}

    def __repr__(self) -> str:
        return (
            f"SecretRef(env={self.env!r})"
            if self.env is not None
            else f"SecretRef(file={self.file!r})"
        )

    def __str__(self) -> str:
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"

    def resolve(self, kind: str = "secret", field: str = "") -> str:
        """Read the secret now. Raises SpecError naming the reference (never a value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SpecError.one(kind, field, f"environment variable {self.env} is not set")
            return value
        try:
            return Path(str(self.file)).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SpecError.one(
                kind, field, f"cannot read secret file {self.file}: {exc.strerror}"
            ) from None


def split_url_password(url: str) -> tuple[str, str | None]:
    """Return (url with any password masked, the password or None)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    return urlunsplit(_with_password(parts, MASK)), parts.password


def mask_url_password(url: str) -> str:
    """The URL with any password replaced by `***`, for repr, logs and keys."""
    return split_url_password(url)[0]


def _with_password(parts: SplitResult, password: str) -> SplitResult:
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:{password}@{host}")


def url_has_password(url: str) -> bool:
    """Does any common parser read a password in `url`?

    urlsplit (fsspec's, for ftp and sftp) stops the authority at the first '/',
    '?' or '#'; SQLAlchemy's and other greedy parsers read `user:pass@` up to
    the first '@', so `u:#x@h`, `u:/x@h`, `u:?x@h` and `u:12/x@h` hold a
    password for them. Both readings count.
    """
    if split_url_password(url)[1] is not None:
        return True
    _, sep, rest = url.partition("://")
    return bool(sep) and _GREEDY_USERINFO.match(rest) is not None


_GREEDY_USERINFO = re.compile(r"[^:/@]*:[^@]*@")

# A password inside a connection string: libpq's `password=x` (psycopg's conninfo=,
# psycopg2's dsn=, any option a driver parses as one) or a URI's `user:pass@`.
_CONNINFO_CREDENTIAL = re.compile(r"(?:^|[\s;&?])(?:ssl)?(?:password|passwd|pwd)\s*=", re.I)


def holds_credential(value: str) -> bool:
    """Does `value` (an option's value) carry a password as a driver would read it?

    Broad on purpose: such values show in repr, JSON and keys, so anything that
    reads as `password=...` or `scheme://user:pass@` is refused, not guessed at.
    """
    return bool(_CONNINFO_CREDENTIAL.search(value)) or url_has_password(value.strip())


# -- scrubbing --------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[tuple[str, str]]) -> str:
    """`text` with each secret value replaced by its reference ((value, reference) pairs)."""
    for value, reference in secrets:
        if value:
            text = text.replace(value, f"<{reference}>")
    return text


@contextmanager
def scrubbed(secrets: Mapping[str, SecretRef | str], values: Mapping[str, str]) -> Iterator[None]:
    """Errors raised in the block never show a resolved secret's value.

    `values` maps a name to the value read for `secrets[name]`. An exception (and
    every exception chained to it) has its message rewritten in place, the value
    replaced by the reference, before it leaves the block: a dependency that echoes
    an option (a path, a protocol name) into its message cannot put a secret into a
    BuildError or a traceback. Where the text cannot be rewritten (a message built
    by the exception's own __str__), a plain RuntimeError with the scrubbed text
    replaces it, unchained.
    """
    pairs = [(v, str(secrets[k])) for k, v in values.items() if v and len(v) >= 1]
    try:
        yield
    except BaseException as exc:
        if not pairs or isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        if _scrub_chain(exc, pairs):
            raise
        shown = scrub(f"{type(exc).__name__}: {exc}", pairs)
        raise RuntimeError(shown) from None


def _scrub_chain(exc: BaseException, pairs: list[tuple[str, str]]) -> bool:
    """Scrub `exc` and what it chains in place; False if a value still shows."""
    seen: set[int] = set()
    current: BaseException | None = exc
    clean = True
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(scrub(a, pairs) if isinstance(a, str) else a for a in current.args)
        if isinstance(current, OSError):
            for name in ("filename", "filename2", "strerror"):
                value = getattr(current, name, None)
                if isinstance(value, str):
                    setattr(current, name, scrub(value, pairs))
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [scrub(n, pairs) if isinstance(n, str) else n for n in notes]
        try:
            text = f"{current!s} {current!r}"
        except Exception:
            text = ""
        if any(value in text for value, _ in pairs):
            clean = False
        current = current.__cause__ or current.__context__
    return clean


# SQLAlchemy's own URL pattern (sqlalchemy.engine.url._parse_url, the same from
# 1.4 to 2.1), copied so that making a DatabaseSpec needs no SQLAlchemy import.
# DatabaseSpec.build() checks that SQLAlchemy reads the same password, and
# tests/test_hostile_input.py compares the two on generated URLs.
_DATABASE_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True)
class DatabaseURL:
    """A database URL as SQLAlchemy reads it: the parts handles checks and masks."""

    masked: str  # the URL as written, with a non-empty password replaced by ***
    password: str | None  # unquoted, as SQLAlchemy passes it to the driver
    host: str | None
    port: str | None
    query: tuple[tuple[str, str], ...]  # (name, value) pairs, as SQLAlchemy reads them


def parse_database_url(url: str) -> DatabaseURL | None:
    """`url` read the way `sqlalchemy.engine.make_url` reads it; None if it cannot."""
    match = _DATABASE_URL.match(url)
    if match is None:
        return None
    raw_password = match["password"]
    password = None if raw_password is None else unquote(raw_password)
    masked = url
    if raw_password:
        start, end = match.span("password")
        masked = url[:start] + MASK + url[end:]
    query = tuple(parse_qsl(match["query"])) if match["query"] is not None else ()
    return DatabaseURL(
        masked=masked,
        password=password,
        host=match["ipv4host"] or match["ipv6host"],
        port=match["port"],
        query=query,
    )


def scrubbed_for(fields: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
    """`scrubbed()` for every secret reference among `fields` (a spec's `__dict__`).

    For code that runs a kind's own hooks without knowing its fields (the
    registry's teardown): a teardown that echoes a secret into its error never
    logs the value. References that cannot be read now are left out.
    """
    refs: dict[str, SecretRef] = {}
    for name, value in fields.items():
        if isinstance(value, SecretRef):
            refs[name] = value
        elif isinstance(value, Mapping):
            refs.update(
                (f"{name}.{key}", item)
                for key, item in value.items()
                if isinstance(item, SecretRef)
            )
    if not refs:
        return contextlib.nullcontext()
    values: dict[str, str] = {}
    for name, ref in refs.items():
        with contextlib.suppress(Exception):
            values[name] = ref.resolve()
    return scrubbed(refs, values)
