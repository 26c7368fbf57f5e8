"""headroom leases: a meter process takes a slice of a subject's headroom (tokens, USD, requests per
minute, concurrency slots) in one statement and spends it locally; settlements of leased requests
move usage from the lease to the settled counters, and a day or month that turned is rolled forward

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# What a limits row has left, per dimension, given its refilled buckets and this period's usage:
# NULL where nothing limits that dimension (LEAST and GREATEST ignore NULLs).
_AVAILABLE = """
            a_slots := r.max_concurrent_requests - r.in_flight;
            a_requests := v_rpm;
            a_tokens := LEAST(v_tpm, r.tokens_per_day - v_day_tokens - r.day_tokens_held,
                r.tokens_per_month - v_month_tokens - r.month_tokens_held);
            a_usd := LEAST(r.budget_usd_per_day - v_day_usd - r.day_usd_held,
                r.budget_usd_per_month - v_month_usd - r.month_usd_held, r.credit_balance_usd - r.credit_held_usd);
"""

# The state of one locked limits row as of now: buckets refilled, a new day or month starting at 0.
_ROW_STATE = """
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
"""

# Grant a lease: `need` is what the request at hand must have in total, `have` what the lease still
# holds unused (so only the difference is missing), `want` the extra slice asked for on top. The
# extra is at most `share` of what is left after the missing part, so slices shrink as headroom
# runs low and the last of it goes request by request. Refusals have meter_reserve's shape (needed
# = the whole need, remaining = what is left plus what the lease has), and say whether leases of
# other processes hold headroom of these subjects (`reclaim`: ask them to give it back, then retry).
LEASE = f"""
CREATE FUNCTION meter_lease(
    p_lease text, p_owner text, p_subjects text[],
    p_need_tokens bigint, p_need_usd numeric, p_need_requests double precision, p_need_slots integer,
    p_have_tokens bigint, p_have_usd numeric, p_have_requests double precision, p_have_slots integer,
    p_want_tokens bigint, p_want_usd numeric, p_want_requests double precision, p_want_slots integer,
    p_share numeric, p_ttl_s double precision
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
    a_slots integer;
    a_requests double precision;
    a_tokens bigint;
    a_usd numeric;
    m_tokens bigint := GREATEST(p_need_tokens - p_have_tokens, 0);
    m_usd numeric := GREATEST(p_need_usd - p_have_usd, 0);
    m_requests double precision := GREATEST(p_need_requests - p_have_requests, 0);
    m_slots integer := GREATEST(p_need_slots - p_have_slots, 0);
    s_slots integer;
    s_requests double precision;
    s_tokens bigint;
    s_usd numeric;
    g_tokens bigint;
    g_usd numeric;
    g_requests double precision;
    g_slots integer;
    refusal jsonb;
    req_header jsonb;
    tok_header jsonb;
    candidate jsonb;
BEGIN
    -- Pass 1: what every subject has left; refuse on the first that cannot cover the missing part.
    FOR r IN SELECT * FROM limits WHERE subject_id = ANY(p_subjects) ORDER BY subject_id FOR UPDATE LOOP
{_ROW_STATE}{_AVAILABLE}
            IF m_slots > 0 AND r.max_concurrent_requests IS NOT NULL AND a_slots < m_slots THEN
                refusal := jsonb_build_object('reason', 'max_concurrent_requests', 'limit', r.max_concurrent_requests,
                    'remaining', GREATEST(a_slots + p_have_slots, 0), 'needed', p_need_slots,
                    'retry_after', 1, 'reset', now_ts + interval '1 second');
            ELSIF m_requests > 0 AND v_rpm IS NOT NULL AND v_rpm < m_requests THEN
                refusal := jsonb_build_object('reason', 'requests_per_minute', 'limit', r.requests_per_minute,
                    'remaining', floor(v_rpm + p_have_requests), 'needed', p_need_requests,
                    'retry_after', ceil((m_requests - v_rpm) * 60.0 / r.requests_per_minute),
                    'reset', now_ts + make_interval(secs => (m_requests - v_rpm) * 60.0 / r.requests_per_minute));
            ELSIF m_tokens > 0 AND v_tpm IS NOT NULL AND v_tpm < m_tokens THEN
                refusal := jsonb_build_object('reason', 'tokens_per_minute', 'limit', r.tokens_per_minute,
                    'remaining', floor(v_tpm + p_have_tokens), 'needed', p_need_tokens,
                    'retry_after', ceil((m_tokens - v_tpm) * 60.0 / r.tokens_per_minute),
                    'reset', now_ts + make_interval(secs => (m_tokens - v_tpm) * 60.0 / r.tokens_per_minute));
            ELSIF m_tokens > 0 AND r.tokens_per_day IS NOT NULL
                    AND v_day_tokens + r.day_tokens_held + m_tokens > r.tokens_per_day THEN
                refusal := jsonb_build_object('reason', 'tokens_per_day', 'limit', r.tokens_per_day,
                    'remaining', GREATEST(r.tokens_per_day - v_day_tokens - r.day_tokens_held + p_have_tokens, 0),
                    'needed', p_need_tokens,
                    'retry_after', ceil(extract(epoch FROM next_day - now_ts)), 'reset', next_day);
            ELSIF m_tokens > 0 AND r.tokens_per_month IS NOT NULL
                    AND v_month_tokens + r.month_tokens_held + m_tokens > r.tokens_per_month THEN
                refusal := jsonb_build_object('reason', 'tokens_per_month', 'limit', r.tokens_per_month,
                    'remaining', GREATEST(r.tokens_per_month - v_month_tokens - r.month_tokens_held + p_have_tokens, 0),
                    'needed', p_need_tokens,
                    'retry_after', ceil(extract(epoch FROM next_month - now_ts)), 'reset', next_month);
            ELSIF m_usd > 0 AND r.budget_usd_per_day IS NOT NULL
                    AND v_day_usd + r.day_usd_held + m_usd > r.budget_usd_per_day THEN
                refusal := jsonb_build_object('reason', 'budget_usd_per_day', 'limit', r.budget_usd_per_day,
                    'remaining', GREATEST(r.budget_usd_per_day - v_day_usd - r.day_usd_held + p_have_usd, 0),
                    'needed', p_need_usd,
                    'retry_after', ceil(extract(epoch FROM next_day - now_ts)), 'reset', next_day);
            ELSIF m_usd > 0 AND r.budget_usd_per_month IS NOT NULL
                    AND v_month_usd + r.month_usd_held + m_usd > r.budget_usd_per_month THEN
                refusal := jsonb_build_object('reason', 'budget_usd_per_month', 'limit', r.budget_usd_per_month,
                    'remaining', GREATEST(r.budget_usd_per_month - v_month_usd - r.month_usd_held + p_have_usd, 0),
                    'needed', p_need_usd,
                    'retry_after', ceil(extract(epoch FROM next_month - now_ts)), 'reset', next_month);
            ELSIF m_usd > 0 AND r.credit_balance_usd IS NOT NULL
                    AND r.credit_balance_usd - r.credit_held_usd < m_usd THEN
                refusal := jsonb_build_object('reason', 'credit', 'limit', r.credit_balance_usd,
                    'remaining', GREATEST(r.credit_balance_usd - r.credit_held_usd + p_have_usd, 0),
                    'needed', p_need_usd);
            END IF;
            IF refusal IS NOT NULL THEN
                RETURN jsonb_build_object('ok', false,
                    'refusal', refusal || jsonb_build_object('subject', r.subject_id),
                    'reclaim', EXISTS (SELECT 1 FROM holds h WHERE h.lease AND h.owner <> p_owner
                                       AND h.subjects && p_subjects));
            END IF;
            s_slots := LEAST(s_slots, a_slots - m_slots);
            s_requests := LEAST(s_requests, a_requests - m_requests);
            s_tokens := LEAST(s_tokens, a_tokens - m_tokens);
            s_usd := LEAST(s_usd, a_usd - m_usd);
    END LOOP;

    -- The grant: the missing part, plus at most `share` of what is left beyond it.
    g_slots := m_slots + GREATEST(LEAST(p_want_slots, floor(s_slots * p_share)::integer), 0);
    g_requests := m_requests + GREATEST(LEAST(p_want_requests, floor(s_requests * p_share)), 0);
    g_tokens := m_tokens + GREATEST(LEAST(p_want_tokens, floor(s_tokens * p_share)::bigint), 0);
    g_usd := m_usd + GREATEST(LEAST(p_want_usd, trunc(s_usd * p_share, 9)), 0);

    -- Pass 2: take it from every subject (the rows are still locked), and note the headers.
    FOR r IN SELECT * FROM limits WHERE subject_id = ANY(p_subjects) ORDER BY subject_id LOOP
{_ROW_STATE}
            UPDATE limits SET
                rpm_level = v_rpm - g_requests, rpm_at = now_ts,
                tpm_level = v_tpm - g_tokens, tpm_at = now_ts,
                in_flight = limits.in_flight + g_slots,
                day = today, day_tokens = v_day_tokens, day_usd = v_day_usd,
                day_tokens_held = limits.day_tokens_held + g_tokens, day_usd_held = limits.day_usd_held + g_usd,
                month = this_month, month_tokens = v_month_tokens, month_usd = v_month_usd,
                month_tokens_held = limits.month_tokens_held + g_tokens,
                month_usd_held = limits.month_usd_held + g_usd,
                credit_held_usd = limits.credit_held_usd
                    + CASE WHEN limits.credit_balance_usd IS NULL THEN 0 ELSE g_usd END
            WHERE subject_id = r.subject_id;
            -- Headers: what is left beyond this lease, tightest request limit and tightest token limit.
            IF v_rpm IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.requests_per_minute, 'remaining', floor(v_rpm - g_requests),
                    'reset', now_ts + make_interval(secs => (r.requests_per_minute - v_rpm + g_requests) * 60.0
                        / r.requests_per_minute));
                IF req_header IS NULL OR (candidate->>'remaining')::numeric < (req_header->>'remaining')::numeric THEN
                    req_header := candidate;
                END IF;
            END IF;
            IF v_tpm IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_minute, 'remaining', floor(v_tpm - g_tokens),
                    'reset', now_ts + make_interval(secs => (r.tokens_per_minute - v_tpm + g_tokens) * 60.0
                        / r.tokens_per_minute));
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
            IF r.tokens_per_day IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_day,
                    'remaining', r.tokens_per_day - v_day_tokens - r.day_tokens_held - g_tokens, 'reset', next_day);
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
            IF r.tokens_per_month IS NOT NULL THEN
                candidate := jsonb_build_object('limit', r.tokens_per_month,
                    'remaining', r.tokens_per_month - v_month_tokens - r.month_tokens_held - g_tokens,
                    'reset', next_month);
                IF tok_header IS NULL OR (candidate->>'remaining')::numeric < (tok_header->>'remaining')::numeric THEN
                    tok_header := candidate;
                END IF;
            END IF;
    END LOOP;
    INSERT INTO holds AS h (id, owner, subjects, tokens, usd, expires_at, slots, lease)
    VALUES (p_lease, p_owner, p_subjects, g_tokens, g_usd, now_ts + make_interval(secs => p_ttl_s), g_slots, true)
    ON CONFLICT (id) DO UPDATE SET tokens = h.tokens + excluded.tokens, usd = h.usd + excluded.usd,
        slots = h.slots + excluded.slots, expires_at = excluded.expires_at;
    RETURN jsonb_build_object('ok', true, 'tokens', g_tokens, 'usd', g_usd, 'requests', g_requests,
        'slots', g_slots, 'request_header', req_header, 'token_header', tok_header);
END $$
"""

# Give back the unused part of a lease (never more than it holds: one that expired gives nothing).
# Limits rows are locked before the hold, in subject order, as every function here does.
LEASE_RETURN = """
CREATE FUNCTION meter_lease_return(
    p_lease text, p_subjects text[], p_tokens bigint, p_usd numeric, p_requests double precision, p_slots integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    d_tokens bigint;
    d_usd numeric;
    d_slots integer;
BEGIN
    PERFORM 1 FROM limits WHERE subject_id = ANY(p_subjects) ORDER BY subject_id FOR UPDATE;
    SELECT * INTO h FROM holds WHERE id = p_lease FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    d_tokens := LEAST(h.tokens, GREATEST(p_tokens, 0));
    d_usd := LEAST(h.usd, GREATEST(p_usd, 0));
    d_slots := LEAST(h.slots, GREATEST(p_slots, 0));
    IF h.tokens = d_tokens AND h.usd = d_usd AND h.slots = d_slots THEN
        DELETE FROM holds WHERE id = p_lease;
    ELSE
        UPDATE holds SET tokens = tokens - d_tokens, usd = usd - d_usd, slots = slots - d_slots WHERE id = p_lease;
    END IF;
    UPDATE limits SET
        in_flight = in_flight - d_slots,
        rpm_level = CASE WHEN requests_per_minute IS NULL THEN rpm_level
            ELSE LEAST(requests_per_minute, rpm_level + GREATEST(p_requests, 0)) END,
        tpm_level = CASE WHEN tokens_per_minute IS NULL THEN tpm_level
            ELSE LEAST(tokens_per_minute, tpm_level + d_tokens) END,
        day_tokens_held = day_tokens_held - d_tokens,
        month_tokens_held = month_tokens_held - d_tokens,
        day_usd_held = day_usd_held - d_usd,
        month_usd_held = month_usd_held - d_usd,
        credit_held_usd = credit_held_usd - CASE WHEN credit_balance_usd IS NOT NULL THEN d_usd ELSE 0 END
    WHERE subject_id = ANY(h.subjects);
END $$
"""

# Settle a ledger batch's reservations, summed per hold and period (a hot tenant's batch touches its
# rows once, not once per request). A request's own hold is released whole (its worst case), a
# lease gives up only what was used (the rest stays the lease's, to spend); either way the usage
# counts in the request's own UTC day and month, rolling the row forward when a period has turned.
SETTLE = """
CREATE OR REPLACE FUNCTION meter_settle(p_batch jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    s record;
    h holds%ROWTYPE;
    held boolean;
    d_tokens bigint;
    d_usd numeric;
    d_slots integer;
BEGIN
    PERFORM 1 FROM limits WHERE subject_id IN (
        SELECT jsonb_array_elements_text(value->'subjects') FROM jsonb_array_elements(p_batch)
    ) ORDER BY subject_id FOR UPDATE;
    FOR s IN
        SELECT x.hold, COALESCE(x.lease, false) AS lease, x.subjects, x.day, x.month,
               sum(x.tokens)::bigint AS tokens, sum(x.usd) AS usd
        FROM jsonb_to_recordset(p_batch) AS x(hold text, lease boolean, subjects text[], day date, month date,
                                              tokens bigint, usd numeric)
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 4, 5
    LOOP
        SELECT * INTO h FROM holds WHERE id = s.hold FOR UPDATE;
        held := FOUND;
        IF NOT held THEN
            d_tokens := 0; d_usd := 0; d_slots := 0;
        ELSIF s.lease THEN
            d_tokens := LEAST(h.tokens, s.tokens); d_usd := LEAST(h.usd, s.usd); d_slots := 0;
            IF h.tokens = d_tokens AND h.usd = d_usd AND h.slots = 0 THEN
                DELETE FROM holds WHERE id = s.hold;
            ELSE
                UPDATE holds SET tokens = tokens - d_tokens, usd = usd - d_usd WHERE id = s.hold;
            END IF;
        ELSE
            d_tokens := h.tokens; d_usd := h.usd; d_slots := h.slots;
            DELETE FROM holds WHERE id = s.hold;
        END IF;
        UPDATE limits SET
            in_flight = in_flight - d_slots,
            -- A request's unused worst case goes back to the per-minute bucket; a lease's stays leased.
            tpm_level = CASE WHEN held AND NOT s.lease AND tokens_per_minute IS NOT NULL
                THEN LEAST(tokens_per_minute, tpm_level + d_tokens - s.tokens) ELSE tpm_level END,
            day_tokens_held = day_tokens_held - d_tokens,
            month_tokens_held = month_tokens_held - d_tokens,
            day_usd_held = day_usd_held - d_usd,
            month_usd_held = month_usd_held - d_usd,
            credit_held_usd = credit_held_usd - CASE WHEN credit_balance_usd IS NOT NULL THEN d_usd ELSE 0 END,
            day_tokens = CASE WHEN day = s.day THEN day_tokens + s.tokens
                WHEN day IS NULL OR day < s.day THEN s.tokens ELSE day_tokens END,
            day_usd = CASE WHEN day = s.day THEN day_usd + s.usd
                WHEN day IS NULL OR day < s.day THEN s.usd ELSE day_usd END,
            day = GREATEST(day, s.day),
            month_tokens = CASE WHEN month = s.month THEN month_tokens + s.tokens
                WHEN month IS NULL OR month < s.month THEN s.tokens ELSE month_tokens END,
            month_usd = CASE WHEN month = s.month THEN month_usd + s.usd
                WHEN month IS NULL OR month < s.month THEN s.usd ELSE month_usd END,
            month = GREATEST(month, s.month),
            credit_balance_usd = credit_balance_usd - s.usd
        WHERE subject_id = ANY(s.subjects);
    END LOOP;
END $$
"""

# Holds of processes that died: released, their limits rows locked first like everywhere else.
EXPIRE = """
CREATE OR REPLACE FUNCTION meter_expire_holds() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    released integer := 0;
BEGIN
    PERFORM 1 FROM limits WHERE subject_id IN (
        SELECT unnest(subjects) FROM holds WHERE expires_at < clock_timestamp()
    ) ORDER BY subject_id FOR UPDATE;
    FOR h IN DELETE FROM holds WHERE expires_at < clock_timestamp() RETURNING * LOOP
        UPDATE limits SET
            in_flight = in_flight - h.slots,
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


def _previous(name: str) -> str:
    """A function's text as migration 0006 left it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("2026_12_02_0006_batches_files.py")
    spec = importlib.util.spec_from_file_location("batches_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name))


# meter_reserve of 0006 with the number of slots in place of the flag.
def _reserve() -> str:
    old = "INSERT INTO holds (id, owner, subjects, tokens, usd, expires_at, slot)"
    new = "INSERT INTO holds (id, owner, subjects, tokens, usd, expires_at, slots)"
    text = _previous("RESERVE")
    assert old in text and "now_ts + make_interval(secs => p_ttl_s), p_slot);" in text
    text = text.replace(old, new).replace(
        "now_ts + make_interval(secs => p_ttl_s), p_slot);",
        "now_ts + make_interval(secs => p_ttl_s), CASE WHEN p_slot THEN 1 ELSE 0 END);",
    )
    return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def upgrade() -> None:
    op.add_column("holds", sa.Column("slots", sa.Integer(), server_default="0", nullable=False))
    op.add_column("holds", sa.Column("lease", sa.Boolean(), server_default="false", nullable=False))
    op.execute("UPDATE holds SET slots = CASE WHEN slot THEN 1 ELSE 0 END")
    op.drop_column("holds", "slot")
    for statement in (_reserve(), LEASE, LEASE_RETURN, SETTLE, EXPIRE):
        op.execute(statement)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION meter_lease(text, text, text[], bigint, numeric, double precision, integer, bigint, numeric,"
        " double precision, integer, bigint, numeric, double precision, integer, numeric, double precision)"
    )
    op.execute("DROP FUNCTION meter_lease_return(text, text[], bigint, numeric, double precision, integer)")
    # Leases are process state: their headroom goes back before the columns that describe them do.
    op.execute("UPDATE holds SET expires_at = clock_timestamp() - interval '1 second' WHERE lease")
    op.execute("SELECT meter_expire_holds()")
    op.add_column("holds", sa.Column("slot", sa.Boolean(), server_default="true", nullable=False))
    op.execute("UPDATE holds SET slot = slots > 0")
    op.drop_column("holds", "lease")
    op.drop_column("holds", "slots")
    for name in ("RESERVE", "SETTLE", "EXPIRE"):
        op.execute(_previous(name).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
