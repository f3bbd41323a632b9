"""Tasks and flows for the registry-stats artifact tests (process-pool workers import them)."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, task

from handles import Spec
from handles.integrations.prefect import publish_stats


@task
def use(spec: Spec[Any], index: int) -> int:
    spec.get()
    return os.getpid()


@flow
def use_all(spec: Any, n: int) -> list[int]:
    return [f.result() for f in use.map(spec, range(n))]


@task
def use_and_publish(spec: Spec[Any]) -> str:
    spec.get()
    spec.get()
    return str(publish_stats(key="handles-registry-test"))


@flow
def publish_in_a_task(spec: Any) -> str:
    return use_and_publish(spec)
