"""The schema. Alembic migrations are written from these tables; `alembic check` keeps them equal."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

# Deterministic constraint names, so migrations and `alembic check` agree on every database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Money: USD as Postgres' unconstrained numeric, which stores any decimal exactly. A cost is tokens x a
# price of 6 decimals / 1e6, times multipliers (geo, tier, speed) of a few decimals each: its digits
# vary, and none is ever rounded away.
Money = Numeric()
Price = Numeric(12, 6)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('active', 'suspended')", name="status"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", Text),
    Column("prefix", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("status", Text, nullable=False, server_default="active"),
    Column("allowed_models", ARRAY(Text)),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    # Kept up to date by the ledger writer, one statement per batch.
    Column("last_used_at", DateTime(timezone=True)),
    # After a rotation the previous secret keeps working until `previous_valid_until`.
    Column("previous_key_hash", Text, unique=True),
    Column("previous_valid_until", DateTime(timezone=True)),
    CheckConstraint("status IN ('active', 'revoked')", name="status"),
)

prices = Table(
    "prices",
    metadata,
    Column("model", Text, primary_key=True),
    Column("effective_from", DateTime(timezone=True), primary_key=True),
    Column("input_per_mtok", Price, nullable=False),
    Column("output_per_mtok", Price, nullable=False),
    Column("cache_write_5m_per_mtok", Price, nullable=False),
    Column("cache_write_1h_per_mtok", Price, nullable=False),
    Column("cache_read_per_mtok", Price, nullable=False),
    # Per-unit fees of server tools, by the name of their `usage.server_tool_use` counter, USD per
    # unit as decimal text: {"web_search_requests": "0.01"}.
    Column("server_tool_fees", JSONB, nullable=False, server_default="{}"),
    # Multipliers of every token price, by usage field and value, as decimal text:
    # {"inference_geo": {"us": "1.1"}, "service_tier": {"batch": "0.5"}, "speed": {"fast": "2"}}.
    Column("multipliers", JSONB, nullable=False, server_default="{}"),
    # Token prices that replace these for a call whose input (uncached + cache) exceeds a threshold:
    # {"above_input_tokens": 200000, "input_per_mtok": "6", ...} (all five token prices).
    Column("long_context", JSONB),
    # The most input and output tokens one call can have (null: not known).
    Column("context_window", Integer),
    Column("max_output_tokens", Integer),
    # Whether every figure of this price is cited from the provider's own price list; `source` says where.
    Column("verified", Boolean, nullable=False, server_default="false"),
    Column("source", Text),
)

# The id of the current transaction, as a bigint (xid8 is a 64-bit epoch-extended id that never wraps).
TXID = text("(pg_current_xact_id()::text)::bigint")

# The ledger: one row per tenant request that reached authentication, whatever its outcome.
# Partitioned by the UTC month of started_at (migration 0010, meter/db/partitions.py): its key is
# (request_id, started_at), and every writer gives a request the same started_at every time.
usage_events = Table(
    "usage_events",
    metadata,
    # The x-meter-request-id; time-ordered, so it doubles as the pagination cursor.
    Column("request_id", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("model", Text),
    Column("endpoint", Text, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("error_type", Text),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_creation_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_creation_5m_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_creation_1h_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_read_input_tokens", BigInteger, nullable=False, server_default="0"),
    # The rest of the usage object (meter/usage.py): server-tool counters, where and how the call ran,
    # per-sub-call usage, and any field meter does not know yet (kept, never lost).
    Column("server_tool_use", JSONB),
    Column("service_tier", Text),
    Column("inference_geo", Text),
    Column("speed", Text),
    Column("iterations", JSONB),
    Column("usage_extra", JSONB),
    # The model the upstream answered with (the dated id of an alias): what its own reports name.
    Column("response_model", Text),
    # NULL when the model has no price: never a silent $0. Fees are part of it, and itemised in
    # `fees` ({"web_search_requests": {"units": 3, "usd": "0.03"}}); `long_context` says whether the
    # long-context prices applied.
    Column("cost_usd", Money),
    Column("fees", JSONB),
    Column("long_context", Boolean, nullable=False, server_default="false"),
    Column("partial", Boolean, nullable=False, server_default="false"),
    Column("stop_reason", Text),
    Column("upstream_request_id", Text),
    Column("started_at", DateTime(timezone=True), primary_key=True),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("ttfb_ms", Integer),
    # The feed's commit-ordered cursor (admin/usage.py): the inserting transaction's id, and a
    # sequence within it. A row is handed out only once every transaction with a smaller id has
    # ended, so a row that commits late is never behind a cursor that moved on.
    Column("txid", BigInteger, nullable=False, server_default=TXID),
    Column("seq", BigInteger, Identity(), nullable=False),
    Index("ix_usage_events_tenant_started", "tenant_id", "started_at"),
    Index("ix_usage_events_txid", "txid", "seq"),
    postgresql_partition_by="RANGE (started_at)",
)

# Ledger rows Postgres rejected (ledger.py): kept as the spool wrote them, for the operator to fix
# and replay; never retried forever, never dropped without trace.
usage_quarantine = Table(
    "usage_quarantine",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("record", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Limits and their live state, one row per limited subject: a tenant (`ten_…`) or a key (`key_…`).
# Config columns are set by the operator (NULL = no limit); the rest is maintained atomically by
# the SQL functions meter_reserve / meter_lease / meter_settle / meter_expire_holds (migrations 0002, 0007).
limits = Table(
    "limits",
    metadata,
    Column("subject_id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", BigInteger),
    Column("max_concurrent_requests", Integer),
    Column("tokens_per_day", BigInteger),
    Column("tokens_per_month", BigInteger),
    Column("budget_usd_per_day", Money),
    Column("budget_usd_per_month", Money),
    # Prepaid credit (tenant rows only): NULL means the tenant is billed afterwards, not prepaid.
    Column("credit_balance_usd", Money),
    Column("credit_held_usd", Money, nullable=False, server_default="0"),
    # Token buckets for the per-minute limits: level and when it was last refilled.
    Column("rpm_level", Float),
    Column("rpm_at", DateTime(timezone=True)),
    Column("tpm_level", Float),
    Column("tpm_at", DateTime(timezone=True)),
    Column("in_flight", Integer, nullable=False, server_default="0"),
    # The current UTC day and month: settled usage, and what in-flight requests hold.
    Column("day", Date),
    Column("day_tokens", BigInteger, nullable=False, server_default="0"),
    Column("day_tokens_held", BigInteger, nullable=False, server_default="0"),
    Column("day_usd", Money, nullable=False, server_default="0"),
    Column("day_usd_held", Money, nullable=False, server_default="0"),
    Column("month", Date),
    Column("month_tokens", BigInteger, nullable=False, server_default="0"),
    Column("month_tokens_held", BigInteger, nullable=False, server_default="0"),
    Column("month_usd", Money, nullable=False, server_default="0"),
    Column("month_usd_held", Money, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The operator's limit settings among the columns of `limits`.
LIMIT_SETTINGS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
    "budget_usd_per_day",
    "budget_usd_per_month",
)

# Reserved headroom: one row per in-flight request or batch that reserved its own, and one per lease
# a process holds; released by settlement (or returned), or by expiry if the process that made it
# died (its owner renews `expires_at` while it lives).
holds = Table(
    "holds",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False, index=True),
    Column("subjects", ARRAY(Text), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("usd", Money, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    # Concurrency slots held: a request's hold takes one, a batch's none, a lease as many as it leased.
    Column("slots", Integer, nullable=False, server_default="0"),
    # A process's lease of headroom (proxy/leases.py), spent by many requests, rather than one request's.
    Column("lease", Boolean, nullable=False, server_default="false"),
)

credit_transactions = Table(
    "credit_transactions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("amount_usd", Money, nullable=False),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Daily rollups of the ledger, per tenant, key and model (UTC days), updated in the same statement
# that inserts ledger rows, so usage queries never scan the ledger. `model` is '' for requests
# refused before a model was known.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("key_id", Text, primary_key=True),
    Column("model", Text, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_creation_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_5m_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_1h_input_tokens", BigInteger, nullable=False),
    Column("cache_read_input_tokens", BigInteger, nullable=False),
    Column("cost_usd", Money, nullable=False),
    Column("unpriced_requests", BigInteger, nullable=False),
)

# Every change made through the operator API or CLI.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Text, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # "admin-token:<first 8 hex of its SHA-256>" or "cli:<user>"
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject_id", Text),
    Column("details", JSONB, nullable=False, server_default="{}"),
)

# Facts every meter process of one database must agree on, checked at start: `key_pepper` holds the
# fingerprint of the pepper its key hashes are made with (meter/credentials.py).
meter_settings = Table(
    "meter_settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# Message batches, each owned by the tenant (and key) that created it: another tenant's id is a
# missing one. `object` is the upstream's batch object as last seen (lists are answered from here);
# the reservation of the batch's worst case is `hold_*`, settled when its results are billed, once
# (`billed_at`), by whichever process holds the billing lease (`billing_owner` until `billing_until`).
batches = Table(
    "batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("key_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processing_status", Text, nullable=False),
    Column("object", JSONB, nullable=False),
    Column("requests", Integer, nullable=False),
    # custom_id -> the model the request asked for (what its result is priced by).
    Column("request_models", JSONB, nullable=False),
    Column("hold_id", Text),
    Column("hold_subjects", ARRAY(Text)),
    Column("hold_day", Date),
    Column("hold_month", Date),
    Column("checked_at", DateTime(timezone=True)),
    Column("billing_owner", Text),
    Column("billing_until", DateTime(timezone=True)),
    Column("billed_at", DateTime(timezone=True)),
    Column("billed_rows", Integer),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_batches_tenant_id_id", "tenant_id", "id"),
    Index("ix_batches_unbilled", "billed_at", postgresql_where=text("billed_at IS NULL")),
)

# Files uploaded through meter, each owned by the tenant that uploaded it; a file_id in any request
# body must be the caller's own.
files = Table(
    "files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("key_id", Text, nullable=False),
    Column("filename", Text),
    Column("mime_type", Text),
    Column("size_bytes", BigInteger),
    # The upstream's metadata object (lists are answered from it).
    Column("object", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_files_tenant_id_id", "tenant_id", "id"),
)

# Webhooks the operator subscribed (meter/webhooks): events of the listed types, of one tenant or of
# every tenant (tenant_id NULL), POSTed to `url` signed with `secret` (Standard Webhooks: `whsec_` +
# base64). The secret is kept to sign with, and shown only when made (create, rotate).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("tenant_id", Text, ForeignKey("tenants.id")),
    Column("description", Text),
    # credit.low fires when a prepaid tenant's balance falls to this (USD) or below.
    Column("credit_low_usd", Money, nullable=False),
    Column("secret", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("secret_rotated_at", DateTime(timezone=True)),
    # After a rotation, attempts are signed with the previous secret too until `previous_valid_until`
    # (the specification's several signatures), so a receiver can switch without refusing any.
    Column("previous_secret", Text),
    Column("previous_valid_until", DateTime(timezone=True)),
)

# One row per event for each webhook it goes to: emitted once (the unique `dedup_key`, e.g.
# "budget.threshold:ten_…:budget_usd_per_month:2026-12-01:50:80", whichever process gets there first),
# delivered at least once. `id` is the webhook-id of every attempt; `body` the exact bytes each
# attempt sends. A worker claims a due delivery by pushing `next_attempt_at` past its send timeout
# (a lease: a process that dies mid-attempt leaves it due again), then records the outcome.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("webhook_id", Text, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("dedup_key", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_status_code", SmallInteger),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    Index("uq_webhook_deliveries_webhook_dedup", "webhook_id", "dedup_key", unique=True),
    Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
)
