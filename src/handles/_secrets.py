"""Secret references: a spec carries where a secret lives, never the secret.

The value is read by `SecretRef.resolve()`, which kinds call inside `build()`,
on the worker. repr, JSON, pickle and cache keys see only the reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from handles.exceptions import SpecError

__all__ = ["SecretRef", "mask_url_password", "split_url_password"]

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
