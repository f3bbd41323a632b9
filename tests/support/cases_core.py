from __future__ import annotations

from support.cases import KindCase
from support.kinds import EchoSpec, ThreadEchoSpec

CASES = [
    KindCase(
        name="test-echo",
        make=lambda tmp: EchoSpec(name=str(tmp / "echo")),
        placement_variant=lambda s: s.replace(delay=0.001),
        identity_variant=lambda s: s.replace(version=2),
        broken=lambda tmp: EchoSpec(name="broken", fail_if_exists=str(tmp)),
        alive=lambda obj: obj.ping(),
    ),
    KindCase(
        name="test-thread-echo",
        make=lambda tmp: ThreadEchoSpec(name=str(tmp / "echo")),
        placement_variant=lambda s: s.replace(delay=0.001),
        identity_variant=lambda s: s.replace(name=s.name + "-other"),
        broken=lambda tmp: ThreadEchoSpec(name="broken", fail_if_exists=str(tmp)),
        alive=lambda obj: obj.ping(),
    ),
]
