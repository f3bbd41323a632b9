"""The trust boundary: what a spec read from JSON may do on this worker.

A spec made in Python code (`DatabaseSpec(...)`, `spec.replace(...)`, an
unpickled spec) is trusted: the code that made it could run anything anyway.
A spec validated from data (`spec_from_json`, `model_validate`,
`model_validate_json`, a Prefect flow parameter) is untrusted unless the
caller passes `context={"handles_trust": "trusted"}`: the JSON may come from a
deployment, the UI or the API, which the worker's owner does not control.

From untrusted input, and unless the worker's environment says otherwise:

    HANDLES_ALLOW_SECRETS=env:PGPASSWORD,file:/run/secrets/*
        secret references a spec from JSON may use (fnmatch patterns; none by default)
    HANDLES_ALLOW_HOSTS=db.internal,*.corp.example
        hosts a spec from JSON may reach (unset: any host, but a secret from
        JSON goes only to a host listed here)
    HANDLES_ALLOW_PICKLE_WEIGHTS=1
        pickle checkpoints: torch.save files (still read with weights_only=True),
        a transformers model's pytorch_model.bin

What else a spec from JSON may carry (driver and filesystem options, local
paths, archives) each kind declares: see handles._allow, whose settings widen it.

`trust_remote_code=True` is never accepted from JSON. The settings are read at
each validation, in the process that validates the JSON.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from handles._allow import FROM_JSON, UNKNOWN_HOST, host_matches
from handles._secrets import SecretRef

if TYPE_CHECKING:
    from pydantic import ValidationInfo

__all__ = [
    "ALLOW_HOSTS",
    "ALLOW_PICKLE_WEIGHTS",
    "ALLOW_SECRETS",
    "FROM_JSON",
    "TRUSTED",
    "UNTRUSTED",
    "host_problems",
    "pickle_weights_allowed",
    "secret_problems",
    "untrusted",
]

TRUST_KEY = "handles_trust"
TRUSTED: dict[str, str] = {TRUST_KEY: "trusted"}
UNTRUSTED: dict[str, str] = {TRUST_KEY: "untrusted"}

ALLOW_SECRETS = "HANDLES_ALLOW_SECRETS"
ALLOW_HOSTS = "HANDLES_ALLOW_HOSTS"
ALLOW_PICKLE_WEIGHTS = "HANDLES_ALLOW_PICKLE_WEIGHTS"


def untrusted(info: ValidationInfo) -> bool:
    """Is this validation of untrusted data? Only an explicit trusted marker says no."""
    context = info.context
    return not (isinstance(context, Mapping) and context.get(TRUST_KEY) == "trusted")


def _patterns(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [p.strip() for p in raw.replace("\n", ",").split(",") if p.strip()]


# -- secrets --------------------------------------------------------------------------


def secret_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each secret reference the worker does not allow from JSON."""
    allowed = _patterns(ALLOW_SECRETS)
    return [
        (where, message)
        for where, ref in _secret_refs(fields)
        if (message := _secret_refused(ref, allowed)) is not None
    ]


def _secret_refs(fields: Mapping[str, Any]) -> Iterable[tuple[str, SecretRef]]:
    for name, value in fields.items():
        if isinstance(value, SecretRef):
            yield name, value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, SecretRef):
                    yield f"{name}.{key}", item
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, SecretRef):
                    yield f"{name}.{index}", item


def _secret_refused(ref: SecretRef, allowed: list[str]) -> str | None:
    if ref.file is not None:
        path = ref.file
        if not os.path.isabs(path) or ".." in re.split(r"[\\/]", path):
            return (
                f"{FROM_JSON} may read a secret file only by an absolute path without '..', "
                f"not {path!r}"
            )
    reference = str(ref)
    if any(_secret_matches(reference, pattern) for pattern in allowed):
        return None
    return (
        f"{FROM_JSON} may not read the secret {reference!r}: allow it on the worker with "
        f"{ALLOW_SECRETS}={reference} (comma-separated; * matches any run of characters)"
    )


def _secret_matches(reference: str, pattern: str) -> bool:
    source, _, name = reference.partition(":")
    want_source, sep, want = pattern.partition(":")
    return bool(sep) and source == want_source and fnmatchcase(name, want)


# -- hosts ----------------------------------------------------------------------------


def host_problems(
    hosts: Iterable[tuple[str, str]], *, carries_secret: bool
) -> list[tuple[str, str]]:
    """(field, message) for each host a spec from JSON may not reach.

    `hosts` holds (field, host) pairs, every host the driver will contact as it
    reads them (UNKNOWN_HOST where the spec's data cannot tell). With
    HANDLES_ALLOW_HOSTS unset any host is reachable, except by a spec that
    carries a secret reference: a secret allowed from JSON goes only to hosts the
    worker listed. Hosts compare as resolvers read them (`2130706433` is
    127.0.0.1); a host no resolver reads the same way (spaces, NUL) never matches.
    """
    allowed = _patterns(ALLOW_HOSTS)
    problems: list[tuple[str, str]] = []
    for field, host in hosts:
        if host == UNKNOWN_HOST:
            if allowed or carries_secret:
                problems.append(
                    (
                        field,
                        f"{FROM_JSON} names no host the worker can check (the driver would "
                        "pick one from the worker's environment or files): give the host in "
                        "the URL",
                    )
                )
        elif allowed:
            if not any(host_matches(host, p) for p in allowed):
                problems.append(
                    (
                        field,
                        f"{FROM_JSON} may not reach host {host!r}: allow it on the worker "
                        f"with {ALLOW_HOSTS} (now {','.join(allowed)!r})",
                    )
                )
        elif carries_secret:
            problems.append(
                (
                    field,
                    f"{FROM_JSON} sends a secret to host {host!r}, and this worker names no "
                    f"hosts that may receive one: set {ALLOW_HOSTS}={host} on the worker",
                )
            )
    return problems


# -- capabilities ---------------------------------------------------------------------


def pickle_weights_allowed() -> bool:
    """May a spec from JSON read torch.save checkpoints (with weights_only=True)?"""
    return os.environ.get(ALLOW_PICKLE_WEIGHTS, "").strip().lower() in ("1", "true", "yes")
