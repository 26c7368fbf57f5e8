"""ledger partitioned by month: `usage_events` becomes a table partitioned by the UTC month of
`started_at`, with one partition per month (`usage_events_2026_12`) and a default partition that
catches a row whose month has no partition yet, so that no row is ever refused for lack of one.
meter_ledger_partition(month) makes a month's partition (meter/db/partitions.py calls it ahead of
time; the retention setting drops whole months).

The primary key of a partitioned table must hold its partition key: it becomes (request_id,
started_at). Every writer of a row gives a request the same started_at every time (the request's
start, or a batch's creation), so the ledger's insert stays idempotent.

The rows already there are copied into the new table in this migration's transaction: the ledger
is locked while they are (docs/scaling.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 17:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD = "usage_events_0009"
INDEXES = ("ix_usage_events_tenant_started", "ix_usage_events_txid")

# A month's partition: made beside the table and attached (ATTACH takes a lock that lets inserts
# and reads go on, where CREATE TABLE ... PARTITION OF would stop them); rows of that month that
# landed in the default partition meanwhile are moved into it first. One at a time, across
# processes (the advisory lock); nothing to do when it exists.
PARTITION_FUNCTION = """
CREATE OR REPLACE FUNCTION meter_ledger_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    name text := 'usage_events_' || to_char(month, 'YYYY_MM');
    lo timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(7464002);
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM usage_events_default WHERE started_at >= $1 AND started_at < $2 RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved', name) USING lo, hi;
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN true;
END
$$;
"""


def upgrade() -> None:
    op.execute(f"ALTER TABLE usage_events RENAME TO {OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_usage_events TO pk_{OLD}")
    op.execute(f"ALTER SEQUENCE usage_events_seq_seq RENAME TO {OLD}_seq_seq")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RENAME TO {index.replace('usage_events', OLD)}")
    op.execute(
        f"CREATE TABLE usage_events (LIKE {OLD} INCLUDING DEFAULTS INCLUDING IDENTITY, "
        "CONSTRAINT pk_usage_events PRIMARY KEY (request_id, started_at)) PARTITION BY RANGE (started_at)"
    )
    op.execute("CREATE INDEX ix_usage_events_tenant_started ON usage_events (tenant_id, started_at)")
    op.execute("CREATE INDEX ix_usage_events_txid ON usage_events (txid, seq)")
    op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
    op.execute(PARTITION_FUNCTION)
    # A partition for every month that has rows, and for this month and the next two.
    op.execute(
        f"""
        SELECT meter_ledger_partition(m::date) FROM generate_series(
            date_trunc('month', LEAST((SELECT min(started_at) FROM {OLD}), now()) AT TIME ZONE 'UTC'),
            date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months',
            interval '1 month') AS m
        """
    )
    op.execute(f"INSERT INTO usage_events SELECT * FROM {OLD}")
    op.execute(f"SELECT setval(pg_get_serial_sequence('usage_events', 'seq'), (SELECT max(seq) FROM {OLD}))")
    op.execute(f"DROP TABLE {OLD}")


def downgrade() -> None:
    op.execute(f"CREATE TABLE {OLD} (LIKE usage_events INCLUDING DEFAULTS INCLUDING IDENTITY)")
    op.execute(f"INSERT INTO {OLD} SELECT * FROM usage_events")
    op.execute(f"SELECT setval(pg_get_serial_sequence('{OLD}', 'seq'), (SELECT max(seq) FROM usage_events))")
    op.execute("DROP TABLE usage_events")
    op.execute("DROP FUNCTION meter_ledger_partition(date)")
    op.execute(f"ALTER TABLE {OLD} RENAME TO usage_events")
    op.execute(f"ALTER SEQUENCE {OLD}_seq_seq RENAME TO usage_events_seq_seq")
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT pk_usage_events PRIMARY KEY (request_id)")
    op.execute("CREATE INDEX ix_usage_events_tenant_started ON usage_events (tenant_id, started_at)")
    op.execute("CREATE INDEX ix_usage_events_txid ON usage_events (txid, seq)")
