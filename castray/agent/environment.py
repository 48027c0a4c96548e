"""The agent's process environment, set before Ray is imported (Ray reads some at import).

The embedded home cluster is private to CastRay: it stays on loopback, never picks up a
cluster named by ``RAY_ADDRESS`` or Ray's "current cluster" file, and runs with Ray token
authentication using a token CastRay generated for it, so that no other local user can
submit work to it. The token lives in a file of CastRay's own (``RAY_AUTH_TOKEN_PATH``), so
the user's ``~/.ray/auth_token`` is neither read nor created: starting CastRay does not
change how the user's own ``ray start`` clusters behave.
"""

from __future__ import annotations

import os

from castray.protocol import AgentConfig

SINGLE_MACHINE_MODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray keeps 127.0.0.1 as the node IP (and as the address to join) instead of
replacing it with the machine's primary IP: the embedded cluster binds loopback only, and a
driver can join a cluster that was started that way."""


AUTO_CONNECT = "RAY_ENABLE_AUTO_CONNECT"
"""Set to 0, a Ray call made while not connected (such as a kill while a lost Ray Client
connection closes) raises instead of silently starting a local Ray, which would also write
a token to the user's ``~/.ray``."""


def prepare_environment(config: AgentConfig) -> None:
    """Set the Ray environment variables this agent's cluster mode needs."""
    os.environ[AUTO_CONNECT] = "0"
    if config.address is not None:
        if config.stay_on_loopback:
            os.environ[SINGLE_MACHINE_MODE] = "0"
        return
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ[SINGLE_MACHINE_MODE] = "0"
    if config.ray_token_file is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(config.ray_token_file)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
