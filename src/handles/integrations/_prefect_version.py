"""The Prefect release a feature needs, checked where the feature is used.

pyproject.toml asks for prefect>=3.8.0, but pip can be told otherwise (an older
pin elsewhere, `--no-deps`), and some features would then fail silently rather
than loudly: ProcessPoolTaskRunner before 3.8.0 has no worker initializer, so
specs bound to its workers would simply never be built there. Those features
call `require_prefect` first.
"""

from __future__ import annotations

import re

import prefect

__all__ = ["PROCESS_POOL_INITIALIZER", "installed_release", "require_prefect"]

# ProcessPoolTaskRunner(initializer=..., initargs=...), run after Prefect's own
# worker setup and carried by duplicate(): new in 3.8.0 (the runner itself, 3.4.14).
PROCESS_POOL_INITIALIZER = (3, 8, 0)


def installed_release(version: str | None = None) -> tuple[int, ...]:
    """The release numbers `version` starts with (Prefect's by default): "3.9.1rc1" is (3, 9, 1)."""
    text = prefect.__version__ if version is None else version
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def require_prefect(minimum: tuple[int, ...], feature: str) -> None:
    """Raise RuntimeError naming `feature` and the release it needs, if Prefect is older."""
    if installed_release() >= minimum:
        return
    needed = ".".join(str(part) for part in minimum)
    raise RuntimeError(
        f"{feature} needs prefect>={needed}; prefect {prefect.__version__} is installed "
        f'(pip install "prefect>={needed}")'
    )
