"""Joining the agent's Ray cluster: start the embedded one, or connect to an address."""

from __future__ import annotations

import logging
import os
import re
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
from castray.ray_address import clean_version, version_mismatch

log = logging.getLogger(__name__)

EMBEDDED_NODE_IP = "127.0.0.1"
SESSION_LOOKUP_TIMEOUT = 30.0
"""Seconds for a first task on a cluster joined through Ray Client (a worker must start)."""


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
    dashboard = context.dashboard_url or None
    if dashboard and "://" not in dashboard:
        dashboard = f"http://{dashboard}"
    info = getattr(context, "address_info", None)
    if info is None:  # Ray Client: the driver runs on the cluster, this process only talks to it
        return ClusterIdentity(
            gcs_address=str(ray.get_runtime_context().gcs_address),
            dashboard_url=dashboard,
            session_name=_session_name_from_the_cluster(),
        )
    session_dir = str(info.get("session_dir") or "")
    return ClusterIdentity(
        gcs_address=str(info.get("gcs_address") or info.get("address") or config.address),
        dashboard_url=dashboard,
        session_name=session_dir.rstrip("/").rsplit("/", 1)[-1] or None,
    )


def _session_name_from_the_cluster() -> str | None:
    """Ray Client has no session of its own to show; a task on the cluster reads it there."""

    @ray.remote(num_cpus=0)
    def session_name() -> str | None:
        node = ray._private.worker.global_worker.node
        return None if node is None else str(node.session_name)

    try:
        name: str | None = ray.get(session_name.remote(), timeout=SESSION_LOOKUP_TIMEOUT)
    except Exception:  # noqa: BLE001 - the session only sharpens identity; go on without it
        log.warning("could not read the cluster's session name through Ray Client")
        return None
    return name


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
        rays = [clean_version(v) for v in re.findall(r"Ray: (\S+)", text)]
        pythons = [clean_version(v) for v in re.findall(r"Python: (\S+)", text)]
        if len(set(rays)) == 1 and len(pythons) == 2 and pythons[0] != pythons[1]:
            return VersionMismatch(
                f"the Ray cluster at {where} runs Python {pythons[0]}, CastRay's agents run "
                f"Python {pythons[1]}: Ray lets a driver join only a cluster of its own Python "
                "version; run CastRay with the cluster's Python"
            )
        return version_mismatch(where, rays[0] if rays and rays[0] else "another version")
    return ClusterUnavailable(f"could not start or join Ray at {where}: {exc}")
