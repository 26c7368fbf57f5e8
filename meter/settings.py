"""meter's configuration: read from the environment in one place, frozen, validated at start.

Nothing here runs at import time; `Settings.from_env()` is called by the CLI, and tests build
`Settings(...)` directly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from meter.proxy.http1.pool import Origin

DEFAULT_UPSTREAM = "https://api.anthropic.com"
# An admin token (or key pepper) shorter than this is refused: it guards every tenant's money.
MIN_ADMIN_TOKEN_LENGTH = 32
# The database URL forms meter accepts (meter.db.engine rewrites them for each driver).
POSTGRES_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")
SPOOL_FSYNC = ("off", "interval", "always")


class ConfigError(ValueError):
    """Invalid configuration; the CLI prints its message as one line and exits."""


def flag(value: str) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off, any case."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


class UsdAmount(Decimal):
    """A USD amount read from the environment: exact, and a ValueError (not Decimal's own
    InvalidOperation) when the text is not a number, so `from_env` reports it as a bad value."""

    def __new__(cls, value: str = "0") -> UsdAmount:
        try:
            return super().__new__(cls, value)
        except ArithmeticError:
            raise ValueError(f"not a decimal number: {value!r}") from None


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    # A session of its own, for what a transaction pooler (PgBouncer pool_mode=transaction) cannot
    # carry: LISTEN and the reconciliation's advisory lock. Unset: database_url. Point it at Postgres
    # directly (or a session-mode pool) when database_url goes through a transaction pooler.
    listen_database_url: str | None = None
    # database_url goes through a transaction pooler: no named prepared statements (a statement may
    # run on another server connection than the one it was prepared on) and no session settings.
    database_transaction_pooling: bool = False
    data_dir: Path = Path(".meter")
    upstream_url: str = DEFAULT_UPSTREAM
    upstream_api_key: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    # The server-side secret key hashes are made with (meter/credentials.py); every process and the
    # CLI must have the same one. Generated and kept in the data dir when not set.
    key_pepper: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    # Upstream connection pool size; one meter process must hold hundreds of open streams.
    upstream_max_connections: int = 1000
    upstream_connect_timeout_s: float = 10.0
    # Anthropic's SDK waits up to 10 minutes for a reply; so does meter.
    upstream_read_timeout_s: float = 600.0
    # Anthropic's own body cap on /v1/messages.
    max_body_bytes: int = 32 * 1024 * 1024
    # How long meter keeps reading an upstream stream after its client left, to learn the final usage.
    disconnect_drain_s: float = 60.0
    # Ledger batching: flush when this many rows wait or this much time passed.
    ledger_batch_rows: int = 500
    ledger_flush_interval_s: float = 0.05
    # Past this many unwritten rows (Postgres down), new requests are refused with 529 instead of
    # risking unrecorded usage.
    ledger_max_pending: int = 100_000
    # Months of ledger rows kept before the current one (whole monthly partitions older than that are
    # dropped, meter/db/partitions.py); None keeps every row forever.
    ledger_retention_months: int | None = None
    # The ledger's local spool (meter/spool.py): every row and every request start is appended to a
    # file under data_dir/spool before the response completes, so a killed process loses nothing.
    spool: bool = True
    # fsync policy, for machine crashes (a process kill never loses what reached the page cache):
    # "off" (the kernel writes back), "interval" (one fsync every spool_fsync_interval_ms, off the
    # event loop), "always" (an fsync per append, on the hot path).
    spool_fsync: str = "off"
    spool_fsync_interval_ms: float = 10.0
    # A spool file is rotated past this size (so under steady traffic the spool stays about this
    # big); past spool_max_bytes in all, new requests get 529.
    spool_segment_bytes: int = 1024 * 1024
    spool_max_bytes: int = 1024 * 1024 * 1024
    # Tenant keys are cached per process; changes arrive by LISTEN/NOTIFY at once, and this is the
    # safety net (one second while the notification connection is down).
    key_cache_ttl_s: float = 10.0
    # Reservations of a process that stops renewing them (it was killed) lapse after this long.
    hold_ttl_s: float = 60.0
    # Tenants beyond this many share the metric label value "other", keeping series bounded.
    metrics_max_tenants: int = 100
    # Worker processes of `meter serve` on one port (one per core).
    workers: int = 1
    # SIGTERM: how long in-flight requests may take to finish.
    shutdown_grace_s: float = 30.0
    # The HTTP server's own defences (meter/server.py, proxy/request.py, proxy/gate.py).
    # A request's headers must arrive within this time and fit in this many bytes.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    # A request body may pause this long between two chunks.
    body_timeout_s: float = 30.0
    # Open connections per process (past it a request is answered 503 at once, and its connection
    # closed) and requests in flight per process (529 overloaded_error past it, at once).
    max_connections: int = 4096
    max_in_flight: int = 2000
    # Per tenant and process, whatever its limits: requests in flight (the slot is taken before the
    # body is read), and streams still read after their client left, to learn their final usage.
    tenant_max_in_flight: int = 256
    tenant_max_drains: int = 16
    # The reservation's ceilings for what meter cannot measure (proxy/estimate.py): tokens per image,
    # and uses of a server tool that names no max_uses.
    reserve_image_tokens: int = 4_800
    reserve_server_tool_uses: int = 10
    # Tokens of results one server-tool step may add; None: the model's context window (the true
    # bound). An operator who knows its tools' results are smaller may bound them, and vouches for it.
    reserve_tool_result_tokens: int | None = None
    # meter's URL as tenants reach it, for URLs it hands out (a batch's results_url); unset: the
    # scheme-less http://<Host header> of each request.
    public_url: str | None = None
    # How often the upstream is asked about each message batch not billed yet.
    batch_poll_s: float = 30.0
    # Browser origins allowed to call the tenant endpoints (comma-separated, or *); none by default.
    cors_origins: str = ""
    # Failed authentications an address may make per minute (per process) before it is refused.
    auth_failures_per_minute: int = 30
    # `host:port` where /metrics is also served without the admin token (a network only Prometheus
    # reaches); on the main port /metrics always needs the admin token.
    metrics_address: str | None = None
    # The operator's Admin API key (sk-ant-admin...), for the upstream's usage and cost reports: when
    # set, one meter process per database reconciles the ledger against them (meter/reconcile).
    upstream_admin_key: str | None = field(default=None, repr=False)
    # How often that reconciliation runs, and the USD drift of a (day, model) bucket it tolerates.
    reconcile_interval_s: float = 3600.0
    reconcile_drift_usd: Decimal = Decimal("0.01")
    # How long a sign-in to the operator console (/console) lasts.
    console_session_s: int = 12 * 3600
    # Webhooks (meter/webhooks): how often events are looked for (budget thresholds, credit, key
    # expiry, ended batches) and due deliveries sent, how long one attempt may take, and the pauses
    # between attempts of a delivery that fails (the default retries for about 27 hours; the
    # delivery is given up after the last).
    webhook_check_s: float = 5.0
    webhook_poll_s: float = 1.0
    webhook_timeout_s: float = 10.0
    webhook_retry_s: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

    def __post_init__(self) -> None:
        try:
            Origin.of(self.upstream_url)  # what the upstream client will connect to
        except ValueError:
            raise ConfigError(f"METER_UPSTREAM_URL must be an http(s) URL, got {self.upstream_url!r}") from None
        if self.database_url is not None and not self.database_url.startswith(POSTGRES_SCHEMES):
            raise ConfigError("METER_DATABASE_URL must be a postgresql:// URL")
        if self.listen_database_url is not None and not self.listen_database_url.startswith(POSTGRES_SCHEMES):
            raise ConfigError("METER_LISTEN_DATABASE_URL must be a postgresql:// URL")
        if self.database_transaction_pooling and not self.listen_database_url:
            raise ConfigError(
                "METER_DATABASE_TRANSACTION_POOLING needs METER_LISTEN_DATABASE_URL: LISTEN and the "
                "reconciliation's advisory lock need a session, which a transaction pooler does not keep "
                "(point it at Postgres directly, or at a session-mode pool)"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"METER_PORT must be a port number, got {self.port}")
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ConfigError(
                f"METER_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "(unset it and meter generates one)"
            )
        if self.key_pepper is not None and len(self.key_pepper) < MIN_ADMIN_TOKEN_LENGTH:
            raise ConfigError(f"METER_KEY_PEPPER must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
        if self.metrics_address is not None:
            self.metrics_host_port()
        if self.workers < 1:
            raise ConfigError(f"METER_WORKERS must be at least 1, got {self.workers}")
        for name in ("header_timeout_s", "body_timeout_s", "max_header_bytes", "max_connections", "max_in_flight"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"METER_{name.upper()} must be positive, got {getattr(self, name)}")
        for name in (
            "tenant_max_in_flight",
            "tenant_max_drains",
            "auth_failures_per_minute",
            "reserve_image_tokens",
            "reserve_server_tool_uses",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"METER_{name.upper()} must not be negative, got {getattr(self, name)}")
        if self.ledger_retention_months is not None and self.ledger_retention_months < 1:
            raise ConfigError(
                f"METER_LEDGER_RETENTION_MONTHS must be at least 1 (unset it to keep every row), "
                f"got {self.ledger_retention_months}"
            )
        if self.console_session_s <= 0:
            raise ConfigError(f"METER_CONSOLE_SESSION_S must be positive, got {self.console_session_s}")
        if self.spool_fsync not in SPOOL_FSYNC:
            raise ConfigError(f"METER_SPOOL_FSYNC must be one of {', '.join(SPOOL_FSYNC)}, got {self.spool_fsync!r}")
        for name in ("spool_fsync_interval_ms", "spool_segment_bytes", "spool_max_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"METER_{name.upper()} must be positive, got {getattr(self, name)}")
        if not self.reconcile_interval_s > 0:
            raise ConfigError(f"METER_RECONCILE_INTERVAL_S must be positive, got {self.reconcile_interval_s}")
        for name in ("webhook_check_s", "webhook_poll_s", "webhook_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"METER_{name.upper()} must be positive, got {getattr(self, name)}")
        if any(not pause >= 0 for pause in self.webhook_retry_s):
            raise ConfigError(f"METER_WEBHOOK_RETRY_S must be seconds >= 0, got {self.webhook_retry_s}")
        if not (self.reconcile_drift_usd.is_finite() and self.reconcile_drift_usd >= 0):
            raise ConfigError(f"METER_RECONCILE_DRIFT_USD must be a USD amount >= 0, got {self.reconcile_drift_usd}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from `METER_*` variables; keyword overrides (CLI flags) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, cast in ENV_FIELDS.items():
            raw = env.get(f"METER_{name.upper()}")
            if raw == "" and name == "admin_token":
                raise ConfigError("METER_ADMIN_TOKEN is set but empty (unset it and meter generates one)")
            if raw is None or raw == "":
                continue
            try:
                values[name] = cast(raw)
            except ValueError:
                raise ConfigError(f"METER_{name.upper()} is not a valid value: {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def listen_url(self) -> str:
        """Where meter LISTENs and holds session locks: the listen URL, else the database URL."""
        return self.listen_database_url or self.database_url or ""

    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = (self.metrics_address or "").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"METER_METRICS_ADDRESS must be host:port, got {self.metrics_address!r}")
        return host.strip("[]"), int(port)

    def with_admin_token(self) -> Settings:
        """Fill in the admin token: from the environment, else the one stored in the data dir,
        else a new one written there (printed once by the CLI)."""
        if self.admin_token:
            return self
        return replace(self, admin_token=self._stored_secret("admin_token", "meter-admin-"))

    def with_key_pepper(self) -> Settings:
        """Fill in the key pepper: from the environment, else the data dir's (made on first use)."""
        if self.key_pepper:
            return self
        return replace(self, key_pepper=self._stored_secret("key_pepper", ""))

    def _stored_secret(self, name: str, prefix: str) -> str:
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = prefix + secrets.token_urlsafe(32)
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return secret


def seconds_list(raw: str) -> tuple[float, ...]:
    """`5,300,1800` -> (5.0, 300.0, 1800.0); a ValueError for anything else."""
    return tuple(float(part) for part in raw.split(","))


def _boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "on", "yes"):
        return True
    if raw.lower() in ("0", "false", "off", "no"):
        return False
    raise ValueError(raw)


ENV_FIELDS: dict[str, Callable[[str], object]] = {
    "database_url": str,
    "listen_database_url": str,
    "database_transaction_pooling": flag,
    "data_dir": Path,
    "upstream_url": str,
    "upstream_api_key": str,
    "admin_token": str,
    "key_pepper": str,
    "host": str,
    "port": int,
    "upstream_max_connections": int,
    "max_body_bytes": int,
    "disconnect_drain_s": float,
    "ledger_max_pending": int,
    "ledger_retention_months": int,
    "spool": _boolean,
    "spool_fsync": str,
    "spool_fsync_interval_ms": float,
    "spool_segment_bytes": int,
    "spool_max_bytes": int,
    "upstream_read_timeout_s": float,
    "shutdown_grace_s": float,
    "hold_ttl_s": float,
    "metrics_max_tenants": int,
    "workers": int,
    "key_cache_ttl_s": float,
    "header_timeout_s": float,
    "max_header_bytes": int,
    "body_timeout_s": float,
    "max_connections": int,
    "max_in_flight": int,
    "tenant_max_in_flight": int,
    "tenant_max_drains": int,
    "metrics_address": str,
    "auth_failures_per_minute": int,
    "cors_origins": str,
    "public_url": str,
    "batch_poll_s": float,
    "reserve_image_tokens": int,
    "reserve_server_tool_uses": int,
    "reserve_tool_result_tokens": int,
    "upstream_admin_key": str,
    "reconcile_interval_s": float,
    "reconcile_drift_usd": UsdAmount,
    "console_session_s": int,
    "webhook_check_s": float,
    "webhook_poll_s": float,
    "webhook_timeout_s": float,
    "webhook_retry_s": seconds_list,
}
