"""A two-address LAN inside a throwaway network namespace, for the broadcast tests.

This kernel has no dummy module, so the LAN is a veth pair with both ends in one namespace;
the namespace (and so the pair) is deleted afterwards, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def veth_lan(name: str, server: str, client: str, ifprefix: str) -> Iterator[str]:
    """Namespace ``name`` with ``server``/24 on ``{ifprefix}0`` and ``client``/24 on
    ``{ifprefix}1`` (broadcast address set); skips the test without root or netns."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        sh("ip", "netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        a, b = f"{ifprefix}0", f"{ifprefix}1"
        setup = (
            f"ip link set lo up && ip link add {a} type veth peer name {b} && "
            f"ip addr add {server}/24 brd + dev {a} && "
            f"ip addr add {client}/24 brd + dev {b} && "
            f"ip link set {a} up && ip link set {b} up"
        )
        sh("ip", "netns", "exec", name, "sh", "-c", setup)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
