"""A spool line stays readable across versions: a process killed before an upgrade is replayed by
the next version, and in a rolling upgrade an older sibling may adopt a newer one's spool, so the
record's shape changes only by fields both can do without."""

from __future__ import annotations

from meter.spool import _decode

# A settled row as meter wrote it to its spool on 2026-12-04.
EARLIER = (
    b'["row",{"request_id":"req_1","tenant_id":"ten_a","key_id":"key_b","model":"claude-x","endpoint":"messages",'
    b'"stream":false,"status":200,"error_type":null,"input_tokens":10,"output_tokens":12,'
    b'"cache_creation_input_tokens":0,"cache_creation_5m_input_tokens":0,"cache_creation_1h_input_tokens":0,'
    b'"cache_read_input_tokens":0,"cost_usd":"0.00021","partial":false,"stop_reason":"end_turn",'
    b'"upstream_request_id":"req_up","started_at":"2026-12-04T10:00:00Z","finished_at":"2026-12-04T10:00:01Z",'
    b'"duration_ms":1000,"ttfb_ms":null},{"hold":"lease_p_1","request_id":"req_1","subjects":["ten_a"],'
    b'"day":"2026-12-04","month":"2026-12-01","tokens":22,"usd":"0.00021","lease":true}]'
)


def test_a_line_spooled_by_an_earlier_version_is_read_with_its_settlement() -> None:
    record = _decode(EARLIER)
    assert record.row.request_id == "req_1" and record.row.output_tokens == 12
    settled = record.settlement
    assert settled is not None
    assert (settled.hold, settled.subjects, settled.lease) == ("lease_p_1", ["ten_a"], True)
    assert (settled.tokens, str(settled.usd)) == (22, "0.00021")
