"""Settings: one typed class that owns every port, path, size and timeout.

Precedence, highest first: CLI flags (passed to ``load_settings``), ``CASTRAY_*`` environment
variables (and Ray's own ``RAY_ADDRESS``), a TOML config file, the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from castray.errors import InvalidRequest
from castray.models import Transport
from castray.sizes import (
    MIN_RATE_LIMIT,
    parse_duration,
    parse_rate,
    parse_rate_limit,
    parse_size,
)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/castray``, else ``~/.local/share/castray``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "castray"


class Settings(BaseSettings):
    """Everything CastRay can be told; see README's configuration section."""

    model_config = SettingsConfigDict(
        env_prefix="CASTRAY_", extra="forbid", populate_by_name=True, validate_default=True
    )

    host: str = Field("127.0.0.1", description="Interface the API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port of the API (0 picks a free one).")
    listen_fd: int | None = Field(
        None,
        ge=0,
        description="Serve on this inherited listening socket instead of binding host:port "
        "(how `castray lab` serves from inside a lab host).",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("CASTRAY_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Home Ray cluster (auto, host:port, ray://...); none starts an embedded one.",
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="Storage, history, logs.")
    demo_nodes: int = Field(0, ge=0, le=256, description="Named endpoints node_1..node_N on head.")
    token: SecretStr | None = Field(None, description="Bearer token required by the API.")
    metrics_public: bool = Field(
        False, description="Serve GET /metrics without the API token (for a scraper)."
    )
    token_file: Path | None = Field(
        None, description="A file holding the token (not visible to other users, unlike --token)."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins besides the server's own whose pages may use the API and /ws.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error (the agents log at it too)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line for a log shipper."
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain): serve the API, the UI and /ws over HTTPS."
    )
    tls_key: Path | None = Field(None, description="The PEM private key of tls_cert.")

    node_poll_interval: float = Field(1.0, gt=0, description="Seconds between node-list looks.")
    cluster_timeout: float = Field(
        8.0, gt=0, description="Seconds without a successful look before a cluster is unreachable."
    )
    agent_start_timeout: float = Field(120.0, gt=0, description="Seconds for an agent to connect.")
    agent_request_timeout: float = Field(60.0, gt=0, description="Seconds for an agent to answer.")
    connect_timeout: float = Field(
        45.0,
        gt=0,
        description="Seconds an external cluster that answers gets to accept CastRay's driver "
        "(a Ray Client join gets three tries in that time).",
    )
    cancel_timeout: float = Field(
        30.0, gt=0, description="Seconds a cancel waits for the partial files to be gone."
    )
    node_ready_timeout: float = Field(
        30.0, gt=0, description="Seconds a new endpoint's actor gets to answer."
    )
    agent_stop_timeout: float = Field(
        2.0, gt=0, description="Seconds an agent gets to stop before its processes are killed."
    )
    probe_timeout: float = Field(
        1.0, gt=0, le=30, description="Seconds each check of a Ray address (dashboard, GCS) gets."
    )
    ray_token_trusted_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts that may be sent this machine's Ray token besides the clusters run "
        "here by CastRay's own user.",
    )
    origin_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (names, addresses or networks such as 10.0.0.0/8) a transfer may "
        "fetch from besides public https ones: needed for plain http, and for loopback, "
        "private or link-local addresses, which are refused otherwise (SSRF guard).",
    )

    chunk_size: int = Field(
        8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024, description="Bytes per chunk."
    )
    transfer_window: int = Field(8, ge=1, le=64, description="Chunks in flight per transfer.")
    transport: Transport = Field(
        Transport.STREAM,
        description="How bytes travel unless a transfer says: stream or object-store.",
    )
    data_ports: tuple[int, int] | None = Field(
        None,
        description="Port range of the endpoints' data ports (first, last); none: any free port.",
    )
    data_connect_timeout: float = Field(
        3.0,
        gt=0,
        description="Seconds a data connection gets; a link that cannot be made in "
        "that time makes a transfer fall back to the object store.",
    )
    upload_limit_bytes: int = Field(
        1024**4, ge=0, description="Largest upload accepted (413 beyond)."
    )
    upload_idle_timeout: float = Field(
        60.0, gt=0, description="Seconds an upload may send nothing before it is dropped (408)."
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection gets to send a request's headers (and an idle "
        "keep-alive connection to send the next request); then it is closed.",
    )
    http_max_connections: int = Field(
        1000,
        ge=16,
        description="HTTP and WebSocket connections open at once; one more is closed at once "
        "(kept below the process's file limit).",
    )
    upload_min_rate: int = Field(
        1024,
        ge=0,
        description="Bytes per second an upload must average over each upload_idle_timeout "
        "window, or be dropped (408): a trickle cannot hold a writer slot ('1KB/s'; 0: no floor).",
    )
    generator_max_bytes: int = Field(
        16 * 1024**3, ge=0, description="Largest file the generator makes (422 beyond)."
    )
    disk_reserve_bytes: int = Field(
        512 * 1024**2, ge=0, description="Free space a generated file must leave on its disk."
    )
    max_concurrent_writes: int = Field(
        2, ge=1, le=64, description="Uploads and generations at once (429 beyond)."
    )
    max_endpoints: int = Field(64, ge=1, description="Endpoints this server deploys at most.")
    max_json_bytes: int = Field(
        1024**2, ge=1024, description="Largest JSON request body (413 beyond)."
    )
    ws_send_timeout: float = Field(
        10.0, gt=0, description="Seconds a /ws client may take to accept an event; then it goes."
    )
    shutdown_timeout: float = Field(
        5.0, gt=0, description="Seconds open connections get once the server is asked to stop."
    )
    demo_traffic: bool = Field(False, description="Endpoints send each other generated files.")
    auto_transfer_interval: float = Field(
        10.0, gt=0, description="Seconds between autonomous transfers of one endpoint."
    )

    agent_transfer_threads: int = Field(
        256,
        ge=1,
        le=1024,
        description="Transfers one agent drives at once, each on a thread of its own (a slow "
        "one holds up no other); one more is refused (429) until one ends.",
    )
    chunk_retries: int = Field(
        3, ge=0, le=100, description="Times one chunk is sent again to one recipient."
    )
    progress_interval: float = Field(
        0.25, gt=0, description="Seconds between progress reports of a transfer."
    )
    stall_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds without progress (a byte on stream, a chunk on object-store) before "
        "recipients fail.",
    )
    peer_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a receiving endpoint may leave its transfer's status unanswered "
        "before it is failed as cut off, and the stream re-routed around it.",
    )
    orphan_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a receiving endpoint keeps receiving a transfer no agent asks "
        "about (agent gone, node cut off) before it closes it; its partial file stays, "
        "journaled, for a resume.",
    )
    partial_retention: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="Seconds a resumable partial file (a recipient's verified chunks of a "
        "transfer that did not finish) is kept after its last write; an endpoint removes older "
        "ones when it starts. DELETE /api/transfers/{id} removes them at once.",
    )
    endpoint_egress_limit: int = Field(
        0,
        ge=0,
        description="Bytes per second each endpoint sends at most, shared by all its transfers "
        '("50MB/s" or a number; 0: no limit).',
    )
    endpoint_ingress_limit: int = Field(
        0,
        ge=0,
        description="Bytes per second each endpoint receives at most, shared by all its "
        "transfers (0: no limit).",
    )
    received_retention: float = Field(
        0,
        ge=0,
        description='Received copies older than this are removed ("7d", "12h", seconds; 0: '
        "kept for ever).",
    )
    storage_quota_bytes: int = Field(
        0,
        ge=0,
        description='Bytes of received copies each endpoint keeps at most ("50GB"; 0: no '
        "quota): the oldest go first.",
    )
    storage_sweep_interval: float = Field(
        60.0, gt=0, description="Seconds between sweeps by received_retention and the quota."
    )
    pin_check_interval: float = Field(
        30.0,
        gt=0,
        description="Seconds between checks that each pinned copy is still as it was verified "
        "(size and mtime); one that went or changed is sent again.",
    )
    auto_resume: bool = Field(
        False,
        description="Resume interrupted transfers when the server starts (once their source "
        "and recipients are alive).",
    )
    control_timeout: float = Field(
        60.0, gt=0, description="Seconds for an endpoint to answer a control call (open, commit)."
    )
    endpoint_probe_interval: float = Field(
        5.0, gt=0, description="Seconds between liveness probes of an endpoint actor."
    )
    messages_kept: int = Field(1000, ge=1, description="Received messages each endpoint keeps.")
    message_max_bytes: int = Field(
        64 * 1024, ge=1, le=16 * 1024 * 1024, description="Largest text or JSON message."
    )
    ws_queue_events: int = Field(
        1000, ge=10, description="Events kept for a /ws client that falls behind."
    )
    ws_heartbeat_interval: float = Field(
        15.0, gt=0, description="Seconds of silence after which /ws sends a heartbeat."
    )

    enable_fault_injection: bool = Field(
        False, description="Test hook: POST /api/nodes/{id}/faults corrupts received chunks."
    )

    embedded_num_cpus: int | None = Field(None, ge=0, description="CPUs of the embedded Ray.")
    embedded_object_store_bytes: int | None = Field(
        None, ge=78_643_200, description="Object store of the embedded Ray (Ray's minimum: 75 MiB)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("ray_address", mode="before")
    @classmethod
    def _blank_address_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "endpoint_egress_limit",
        "endpoint_ingress_limit",
        "upload_min_rate",
        "received_retention",
        "storage_quota_bytes",
        mode="before",
    )
    @classmethod
    def _in_words(cls, value: Any, info: ValidationInfo) -> Any:
        """``"50MB/s"``, ``"7d"``, ``"50GB"`` as users write them, or plain numbers."""
        if not isinstance(value, str):
            return value
        try:
            return _READERS[str(info.field_name)](value)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("endpoint_egress_limit", "endpoint_ingress_limit")
    @classmethod
    def _not_too_slow(cls, value: int) -> int:
        if 0 < value < MIN_RATE_LIMIT:
            raise ValueError(
                f"a limit below {MIN_RATE_LIMIT} bytes per second (64KB/s) holds "
                "senders for hours; use at least that, or 0 for none"
            )
        return value

    @field_validator("token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"cannot read the TLS file {path}: no such file")
        return self

    @model_validator(mode="after")
    def _token_from_its_file(self) -> Settings:
        if self.token_file is None:
            return self
        if self.token is not None:
            raise ValueError("give the API token once: --token or --token-file, not both")
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {self.token_file}: {exc}") from None
        if not text:
            raise ValueError(f"the token file {self.token_file} is empty")
        self.token = SecretStr(text)
        return self

    @property
    def storage_root(self) -> Path:
        return self.data_dir / "storage"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def library_dir(self) -> Path:
        return self.data_dir / "library"

    @property
    def history_file(self) -> Path:
        return self.data_dir / "castray.sqlite3"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


_READERS: dict[str, Callable[[str], float | int]] = {
    "endpoint_egress_limit": parse_rate_limit,
    "endpoint_ingress_limit": parse_rate_limit,
    "upload_min_rate": parse_rate,
    "received_retention": parse_duration,
    "storage_quota_bytes": parse_size,
}


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build settings from flags (``None`` means not given), environment and config file."""
    given = {key: value for key, value in flags.items() if value is not None}
    config_file = config_file or _env_config_file()
    if config_file is None:
        return Settings(**given)
    if not config_file.is_file():
        raise InvalidRequest(f"config file {config_file} does not exist or is not a file")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return _FromFile(**given)


def _env_config_file() -> Path | None:
    value = os.environ.get("CASTRAY_CONFIG")
    return Path(value) if value else None
