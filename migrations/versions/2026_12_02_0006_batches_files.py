"""message batches and files owned per tenant; a reservation may hold no concurrency slot (a batch
runs for hours, not as one request in flight)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# meter_reserve of migration 0002, with p_slot: when false the hold takes no concurrency slot.
RESERVE = """
CREATE FUNCTION meter_reserve(
    p_hold text, p_owner text, p_subjects text[], p_tokens bigint, p_usd numeric, p_ttl_s double precision,
    p_slot boolean DEFAULT true
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r limits%ROWTYPE;
    now_ts timestamptz := clock_timestamp();
    today date := (now_ts AT TIME ZONE 'UTC')::date;
    this_month date := date_trunc('month', now_ts AT TIME ZONE 'UTC')::date;
    next_day timestamptz := (today + 1)::timestamp AT TIME ZONE 'UTC';
    next_month timestamptz := (this_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    v_rpm double precision;
    v_tpm double precision;
    v_day_tokens bigint;
    v_month_tokens bigint;
    v_day_usd numeric;
    v_month_usd numeric;
    refusal jsonb;
    req_header jsonb;
    tok_header jsonb;
    candidate jsonb;
BEGIN
    BEGIN
        FOR r IN SELECT * FROM limits WHERE subject_id = ANY(p_subjects) ORDER BY subject_id FOR UPDATE LOOP
            IF r.day IS DISTINCT FROM today THEN
                v_day_tokens := 0; v_day_usd := 0;
            ELSE
                v_day_tokens := r.day_tokens; v_day_usd := r.day_usd;
            END IF;
            IF r.month IS DISTINCT FROM this_month THEN
                v_month_tokens := 0; v_month_usd := 0;
            ELSE
                v_month_tokens := r.month_tokens; v_month_usd := r.month_usd;
            END IF;
            v_rpm := LEAST(r.requests_per_minute, COALESCE(r.rpm_level, r.requests_per_minute)
                + r.requests_per_minute / 60.0 * extract(epoch FROM now_ts - COALESCE(r.rpm_at, now_ts)));
            v_tpm := LEAST(r.tokens_per_minute, COALESCE(r.tpm_level, r.tokens_per_minute)
                + r.tokens_per_minute / 60.0 * extract(epoch FROM now_ts - COALESCE(r.tpm_at, now_ts)));

            IF p_slot AND r.max_concurrent_requests IS NOT NULL AND r.in_flight + 1 > r.max_concurrent_requests THEN
                refusal := jsonb_build_object('reason', 'max_concurrent_requests', 'limit', r.max_concurrent_requests,
                    'remaining', GREATEST(r.max_concurrent_requests - r.in_flight, 0), 'needed', 1,
                    'retry_after', 1, 'reset', now_ts + interval '1 second');
            ELSIF v_rpm IS NOT NULL AND v_rpm < 1 THEN
                refusal := jsonb_build_object('reason', 'requests_per_minute', 'limit', r.requests_per_minute,
                    'remaining', floor(v_rpm), 'needed', 1,
                    'retry_after', ceil((1 - v_rpm) * 60.0 / r.requests_per_minute),
                    'reset', now_ts + make_interval(secs => (1 - v_rpm) * 60.0 / r.requests_per_minute));
            ELSIF v_tpm IS NOT NULL AND v_tpm < p_tokens THEN
                refusal := jsonb_build_object('reason', 'tokens_per_minute', 'limit', r.tokens_per_minute,
                    'remaining', floor(v_tpm), 'needed', p_tokens,
                    'retry_after', ceil((p_tokens - v_tpm) * 60.0 / r.tokens_per_minute),
                    'reset', now_ts + make_interval(secs => (p_tokens - v_tpm) * 60.0 / r.tokens_per_minute));
            ELSIF r.tokens_per_day IS NOT NULL AND v_day_tokens + r.day_tokens_held + p_tokens > r.tokens_per_day THEN
                refusal := jsonb_build_object('reason', 'tokens_per_day', 'limit', r.tokens_per_day,
                    'remaining', GREATEST(r.tokens_per_day - v_day_tokens - r.day_tokens_held, 0), 'needed', p_tokens,
                    'retry_after', ceil(extract(epoch FROM next_day - now_ts)), 'reset', next_day);
            ELSIF r.tokens_per_month IS NOT NULL
                    AND v_month_tokens + r.month_tokens_held + p_tokens > r.tokens_per_month THEN
                refusal := jsonb_build_object('reason', 'tokens_per_month', 'limit', r.tokens_per_month,
                    'remaining', GREATEST(r.tokens_per_month - v_month_tokens - r.month_tokens_held, 0),
                    'needed', p_tokens,
                    'retry_after', ceil(extract(epoch FROM next_month - now_ts)), 'reset', next_month);
            ELSIF r.budget_usd_per_day IS NOT NULL AND v_day_usd + r.day_usd_held + p_usd > r.budget_usd_per_day THEN
                refusal := jsonb_build_object('reason', 'budget_usd_per_day', 'limit', r.budget_usd_per_day,
                    'remaining', GREATEST(r.budget_usd_per_day - v_day_usd - r.day_usd_held, 0), 'needed', p_usd,
                    'retry_after', ceil(extract(epoch FROM next_day - now_ts)), 'reset', next_day);
            ELSIF r.budget_usd_per_month IS NOT NULL
                    AND v_month_usd + r.month_usd_held + p_usd > r.budget_usd_per_month THEN
                refusal := jsonb_build_object('reason', 'budget_usd_per_month', 'limit', r.budget_usd_per_month,
                    'remaining', GREATEST(r.budget_usd_per_month - v_month_usd - r.month_usd_held, 0),
                    'needed', p_usd,
                    'retry_after', ceil(extract(epoch FROM next_month - now_ts)), 'reset', next_month);
            ELSIF r.credit_balance_usd IS NOT NULL AND r.credit_balance_usd - r.credit_held_usd < p_usd THEN
                refusal := jsonb_build_object('reason', 'credit', 'limit', r.credit_balance_usd,
                    'remaining', GREATEST(r.credit_balance_usd - r.credit_held_usd, 0), 'needed', p_usd);
            END IF;
            IF refusal IS NOT NULL THEN
                refusal := refusal || jsonb_build_object('subject', r.subject_id);
                RAISE EXCEPTION USING ERRCODE = 'MR001';
            END IF;

            UPDATE limits SET
                rpm_level = v_rpm - 1, rpm_at = now_ts,
                tpm_level = v_tpm - p_tokens, tpm_at = now_ts,
                in_flight = limits.in_flight + CASE WHEN p_slot THEN 1 ELSE 0 END,
                day = today, day_tokens = v_day_tokens, day_usd = v_day_usd,
                day_tokens_held = limits.day_tokens_held + p_tokens, day_usd_held = limits.day_usd_held + p_usd,
                month = this_month, month_tokens = v_month_tokens, month_usd = v_month_usd,
                month_tokens_held = limits.month_tokens_held + p_tokens,
                month_usd_held = limits.month_usd_held + p_usd,
                credit_held_usd = limits.credit_held_usd
                    + CASE WHEN limits.credit_balance_usd IS NULL THEN 0 ELSE p_usd END
            WHERE subject_id = r.subject_id;

            -- Response headers: the tightest request limit and the tightest token limit.
            IF v_rpm IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.requests_per_minute, 'remaining', floor(v_rpm - 1),
                    'reset', now_ts + make_interval(secs => (r.requests_per_minute - v_rpm + 1) * 60.0
                        / r.requests_per_minute));
                IF req_header IS NULL OR (candidate->>'remaining')::numeric < (req_header->>'remaining')::numeric THEN
                    req_header := candidate;
                END IF;
            END IF;
            IF v_tpm IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_minute, 'remaining', floor(v_tpm - p_tokens),
                    'reset', now_ts + make_interval(secs => (r.tokens_per_minute - v_tpm + p_tokens) * 60.0
                        / r.tokens_per_minute));
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
            IF r.tokens_per_day IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_day,
                    'remaining', r.tokens_per_day - v_day_tokens - r.day_tokens_held - p_tokens, 'reset', next_day);
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
            IF r.tokens_per_month IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_month,
                    'remaining', r.tokens_per_month - v_month_tokens - r.month_tokens_held - p_tokens,
                    'reset', next_month);
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
        END LOOP;
        INSERT INTO holds (id, owner, subjects, tokens, usd, expires_at, slot)
        VALUES (p_hold, p_owner, p_subjects, p_tokens, p_usd, now_ts + make_interval(secs => p_ttl_s), p_slot);
    EXCEPTION WHEN SQLSTATE 'MR001' THEN
        RETURN jsonb_build_object('ok', false, 'refusal', refusal);
    END;
    RETURN jsonb_build_object('ok', true, 'day', today, 'month', this_month,
        'requests', req_header, 'tokens', tok_header);
END $$
"""

# meter_settle and meter_expire_holds of migration 0002, giving back a slot only if the hold took one.
SETTLE = """
CREATE OR REPLACE FUNCTION meter_settle(p_batch jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    h holds%ROWTYPE;
    held boolean;
    actual_tokens bigint;
    actual_usd numeric;
BEGIN
    FOR s IN SELECT value FROM jsonb_array_elements(p_batch) ORDER BY value->>'hold' LOOP
        DELETE FROM holds WHERE id = s->>'hold' RETURNING * INTO h;
        held := FOUND;
        actual_tokens := (s->>'tokens')::bigint;
        actual_usd := (s->>'usd')::numeric;
        UPDATE limits SET
            in_flight = in_flight - CASE WHEN held AND h.slot THEN 1 ELSE 0 END,
            tpm_level = CASE WHEN held AND tokens_per_minute IS NOT NULL
                THEN LEAST(tokens_per_minute, tpm_level + h.tokens - actual_tokens) ELSE tpm_level END,
            day_tokens_held = day_tokens_held - CASE WHEN held THEN h.tokens ELSE 0 END,
            month_tokens_held = month_tokens_held - CASE WHEN held THEN h.tokens ELSE 0 END,
            day_usd_held = day_usd_held - CASE WHEN held THEN h.usd ELSE 0 END,
            month_usd_held = month_usd_held - CASE WHEN held THEN h.usd ELSE 0 END,
            credit_held_usd = credit_held_usd
                - CASE WHEN held AND credit_balance_usd IS NOT NULL THEN h.usd ELSE 0 END,
            day_tokens = day_tokens + CASE WHEN day = (s->>'day')::date THEN actual_tokens ELSE 0 END,
            day_usd = day_usd + CASE WHEN day = (s->>'day')::date THEN actual_usd ELSE 0 END,
            month_tokens = month_tokens + CASE WHEN month = (s->>'month')::date THEN actual_tokens ELSE 0 END,
            month_usd = month_usd + CASE WHEN month = (s->>'month')::date THEN actual_usd ELSE 0 END,
            credit_balance_usd = credit_balance_usd - actual_usd
        WHERE subject_id IN (SELECT jsonb_array_elements_text(s->'subjects'));
    END LOOP;
END $$
"""

EXPIRE = """
CREATE OR REPLACE FUNCTION meter_expire_holds() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    released integer := 0;
BEGIN
    FOR h IN DELETE FROM holds WHERE expires_at < clock_timestamp() RETURNING * LOOP
        UPDATE limits SET
            in_flight = in_flight - CASE WHEN h.slot THEN 1 ELSE 0 END,
            day_tokens_held = day_tokens_held - h.tokens,
            month_tokens_held = month_tokens_held - h.tokens,
            day_usd_held = day_usd_held - h.usd,
            month_usd_held = month_usd_held - h.usd,
            credit_held_usd = credit_held_usd - CASE WHEN credit_balance_usd IS NOT NULL THEN h.usd ELSE 0 END
        WHERE subject_id = ANY(h.subjects);
        released := released + 1;
    END LOOP;
    RETURN released;
END $$
"""

OLD_RESERVE = "meter_reserve(text, text, text[], bigint, numeric, double precision)"


def upgrade() -> None:
    jsonb = postgresql.JSONB(astext_type=sa.Text())
    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("processing_status", sa.Text(), nullable=False),
        sa.Column("object", jsonb, nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("request_models", jsonb, nullable=False),
        sa.Column("hold_id", sa.Text(), nullable=True),
        sa.Column("hold_subjects", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("hold_day", sa.Date(), nullable=True),
        sa.Column("hold_month", sa.Date(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("billing_owner", sa.Text(), nullable=True),
        sa.Column("billing_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("billed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("billed_rows", sa.Integer(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_batches_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_tenant_id_id", "batches", ["tenant_id", "id"], unique=False)
    op.create_index(
        "ix_batches_unbilled", "batches", ["billed_at"], unique=False, postgresql_where=sa.text("billed_at IS NULL")
    )
    op.create_table(
        "files",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("mime_type", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("object", jsonb, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_files_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index("ix_files_tenant_id_id", "files", ["tenant_id", "id"], unique=False)
    op.add_column("holds", sa.Column("slot", sa.Boolean(), server_default="true", nullable=False))
    op.execute(f"DROP FUNCTION {OLD_RESERVE}")
    for statement in (RESERVE, SETTLE, EXPIRE):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION meter_reserve(text, text, text[], bigint, numeric, double precision, boolean)")
    op.drop_column("holds", "slot")
    op.drop_index("ix_files_tenant_id_id", table_name="files")
    op.drop_table("files")
    op.drop_index("ix_batches_unbilled", table_name="batches")
    op.drop_index("ix_batches_tenant_id_id", table_name="batches")
    op.drop_table("batches")
    # The functions of migration 0002, as they were.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("2026_11_27_0002_limits_holds_credit.py")
    spec = importlib.util.spec_from_file_location("limits_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module.RESERVE)
    op.execute(module.SETTLE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(module.EXPIRE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
