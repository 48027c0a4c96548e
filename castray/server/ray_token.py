"""Which Ray token, if any, CastRay may send to a Ray cluster.

Ray keeps one token per machine user (``RAY_AUTH_TOKEN``, else the file at
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``). It is a credential to every cluster of
that user, so CastRay sends it only where it belongs: to a cluster whose raylets run on this
machine under CastRay's own user, or at a host the operator named as trusted
(``ray_token_trusted_hosts``). A token given with a request goes to the address that request
names, nowhere else. Callers send a token only to a cluster that asked for one.
"""

from __future__ import annotations

import os
from pathlib import Path

from castray.ray_address import RayAddress
from castray.server.local_clusters import LocalCluster


def local_ray_token() -> str | None:
    """The token Ray itself would use on this machine, if there is one."""
    direct = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if direct:
        return direct
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


class RayTokens:
    """Hands out the token a given cluster may see; see the module docstring for the rule."""

    def __init__(self, trusted_hosts: list[str]) -> None:
        self._trusted = {host.strip().strip("[]").lower() for host in trusted_hosts if host}

    def for_cluster(
        self, local: LocalCluster | None, address: RayAddress | None, given: str | None
    ) -> str | None:
        """``given`` when the user gave one; else the machine's token, where it belongs."""
        if given:
            return given
        own = local is not None and local.is_own
        trusted = address is not None and address.bare_host.lower() in self._trusted
        return local_ray_token() if own or trusted else None
