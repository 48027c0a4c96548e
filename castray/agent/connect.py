"""Joining the agent's Ray cluster: start the embedded one, or connect to an address."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from castray.errors import (
    CastRayError,
    ClusterUnavailable,
    Forbidden,
    InvalidRequest,
    Unauthorized,
    VersionMismatch,
)
from castray.protocol import AgentConfig

log = logging.getLogger(__name__)

EMBEDDED_NODE_IP = "127.0.0.1"


@dataclass(frozen=True)
class ClusterIdentity:
    """What stays true of a connected cluster for the life of the connection."""

    gcs_address: str
    dashboard_url: str | None
    session_name: str | None


def connect(config: AgentConfig) -> ClusterIdentity:
    """Initialise Ray in this process for the configured cluster; errors become ours."""
    try:
        if config.address is None:
            context = ray.init(
                address="local",
                _temp_dir=str(config.temp_dir),
                _node_ip_address=EMBEDDED_NODE_IP,
                include_dashboard=False,
                num_cpus=config.embedded_num_cpus,
                object_store_memory=config.embedded_object_store_bytes,
                log_to_driver=False,
                namespace="castray",
            )
        else:
            context = ray.init(address=config.address, log_to_driver=False, namespace="castray")
    except ValueError as exc:
        raise InvalidRequest(f"invalid Ray address {config.address!r}: {exc}") from exc
    except Exception as exc:  # every way ray.init fails becomes one of ours
        raise _translate(exc, config.address) from exc
    info = context.address_info  # type: ignore[attr-defined]
    dashboard = context.dashboard_url or None
    if dashboard and "://" not in dashboard:
        dashboard = f"http://{dashboard}"
    session_dir = str(info.get("session_dir") or "")
    return ClusterIdentity(
        gcs_address=str(info.get("gcs_address") or info.get("address") or config.address),
        dashboard_url=dashboard,
        session_name=session_dir.rstrip("/").rsplit("/", 1)[-1] or None,
    )


def _translate(exc: BaseException, address: str | None) -> CastRayError:
    """Ray's start/join failures, most specific first, as errors a user can act on."""
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " | ".join(chain)
    where = address or "an embedded local cluster"
    if "AuthenticationError" in text or "InvalidAuthToken" in text:
        if os.environ.get("RAY_AUTH_TOKEN"):
            return Forbidden(f"the Ray cluster at {where} refused the Ray token given")
        return Unauthorized(
            f'the Ray cluster at {where} requires a Ray token: pass "ray_token", or set '
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token) for CastRay"
        )
    if "version mismatch" in text.lower():
        return VersionMismatch(f"Ray at {where} runs another Ray version: {exc}")
    return ClusterUnavailable(f"could not start or join Ray at {where}: {exc}")
