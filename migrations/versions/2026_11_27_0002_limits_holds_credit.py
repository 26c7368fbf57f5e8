"""limits, holds and prepaid credit, with the functions that reserve and settle atomically

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 06:10:20.387019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The hot path's limit logic, in the database so that a reservation is one round trip and atomic
# across every meter process. Rows are locked in subject_id order, so two reservations never deadlock.
#
# meter_reserve: refills the per-minute token buckets, rolls the UTC day and month over, and checks
# every limit of every subject (tenant, then key) against the request's worst case. If all pass, it
# takes the headroom (bucket levels, in-flight count, held tokens and USD, held credit) and records a
# hold; if one fails, nothing changes and the answer names the limit, when it resets and what was
# short. It also returns the tightest request and token limits for the response headers.
RESERVE = """
CREATE FUNCTION meter_reserve(
    p_hold text, p_owner text, p_subjects text[], p_tokens bigint, p_usd numeric, p_ttl_s double precision
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

            IF r.max_concurrent_requests IS NOT NULL AND r.in_flight + 1 > r.max_concurrent_requests THEN
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
                in_flight = limits.in_flight + 1,
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
        INSERT INTO holds (id, owner, subjects, tokens, usd, expires_at)
        VALUES (p_hold, p_owner, p_subjects, p_tokens, p_usd, now_ts + make_interval(secs => p_ttl_s));
    EXCEPTION WHEN SQLSTATE 'MR001' THEN
        RETURN jsonb_build_object('ok', false, 'refusal', refusal);
    END;
    RETURN jsonb_build_object('ok', true, 'day', today, 'month', this_month,
        'requests', req_header, 'tokens', tok_header);
END $$
"""

# meter_settle: a batch of finished requests, written with their ledger rows. Each releases its
# hold (if it has not expired meanwhile) and adds its actual tokens and cost to the period it
# started in, and takes the cost from prepaid credit. Unused per-minute tokens go back to the bucket.
SETTLE = """
CREATE FUNCTION meter_settle(p_batch jsonb) RETURNS void LANGUAGE plpgsql AS $$
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
            in_flight = in_flight - CASE WHEN held THEN 1 ELSE 0 END,
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

# meter_expire_holds: holds whose process stopped renewing them (it was killed) give their
# headroom back. Their usage, if the process recorded it after all, arrives through meter_settle.
EXPIRE = """
CREATE FUNCTION meter_expire_holds() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    released integer := 0;
BEGIN
    FOR h IN DELETE FROM holds WHERE expires_at < clock_timestamp() RETURNING * LOOP
        UPDATE limits SET
            in_flight = in_flight - 1,
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

FUNCTIONS = (RESERVE, SETTLE, EXPIRE)


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "holds",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("subjects", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index(op.f("ix_holds_expires_at"), "holds", ["expires_at"], unique=False)
    op.create_index(op.f("ix_holds_owner"), "holds", ["owner"], unique=False)
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("amount_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_credit_transactions_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
    )
    op.create_index(op.f("ix_credit_transactions_tenant_id"), "credit_transactions", ["tenant_id"], unique=False)
    op.create_table(
        "limits",
        sa.Column("subject_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True),
        sa.Column("max_concurrent_requests", sa.Integer(), nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger(), nullable=True),
        sa.Column("tokens_per_month", sa.BigInteger(), nullable=True),
        sa.Column("budget_usd_per_day", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("budget_usd_per_month", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("credit_balance_usd", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("credit_held_usd", sa.Numeric(precision=24, scale=12), server_default="0", nullable=False),
        sa.Column("rpm_level", sa.Float(), nullable=True),
        sa.Column("rpm_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tpm_level", sa.Float(), nullable=True),
        sa.Column("tpm_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("in_flight", sa.Integer(), server_default="0", nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("day_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("day_tokens_held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("day_usd", sa.Numeric(precision=24, scale=12), server_default="0", nullable=False),
        sa.Column("day_usd_held", sa.Numeric(precision=24, scale=12), server_default="0", nullable=False),
        sa.Column("month", sa.Date(), nullable=True),
        sa.Column("month_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("month_tokens_held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("month_usd", sa.Numeric(precision=24, scale=12), server_default="0", nullable=False),
        sa.Column("month_usd_held", sa.Numeric(precision=24, scale=12), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_limits_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_limits")),
    )
    op.create_index(op.f("ix_limits_tenant_id"), "limits", ["tenant_id"], unique=False)
    # ### end Alembic commands ###
    for statement in FUNCTIONS:
        op.execute(statement)


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    for name in ("meter_reserve", "meter_settle", "meter_expire_holds"):
        op.execute(f"DROP FUNCTION {name}")
    op.drop_index(op.f("ix_limits_tenant_id"), table_name="limits")
    op.drop_table("limits")
    op.drop_index(op.f("ix_credit_transactions_tenant_id"), table_name="credit_transactions")
    op.drop_table("credit_transactions")
    op.drop_index(op.f("ix_holds_owner"), table_name="holds")
    op.drop_index(op.f("ix_holds_expires_at"), table_name="holds")
    op.drop_table("holds")
    # ### end Alembic commands ###
