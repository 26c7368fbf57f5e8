"""A spool line stays readable across an upgrade: a process killed before it, replayed after."""

from __future__ import annotations

from meter.spool import _decode

# A settled row as meter wrote it to its spool before settlements stopped carrying their usage
# (the ledger settles a row with the row's own): the extra fields are ignored.
EARLIER = (
    b'["row",{"request_id":"req_1","tenant_id":"ten_a","key_id":"key_b","model":"claude-x","endpoint":"messages",'
    b'"stream":false,"status":200,"error_type":null,"input_tokens":10,"output_tokens":12,'
    b'"cache_creation_input_tokens":0,"cache_creation_5m_input_tokens":0,"cache_creation_1h_input_tokens":0,'
    b'"cache_read_input_tokens":0,"cost_usd":"0.00021","partial":false,"stop_reason":"end_turn",'
    b'"upstream_request_id":"req_up","started_at":"2026-12-04T10:00:00Z","finished_at":"2026-12-04T10:00:01Z",'
    b'"duration_ms":1000,"ttfb_ms":null},{"hold":"lease_p_1","request_id":"req_1","subjects":["ten_a"],'
    b'"day":"2026-12-04","month":"2026-12-01","tokens":22,"usd":"0.00021","lease":true}]'
)


def test_a_line_spooled_before_the_upgrade_is_read_with_its_settlement() -> None:
    record = _decode(EARLIER)
    assert record.row.request_id == "req_1" and record.row.output_tokens == 12
    settled = record.settlement
    assert settled is not None
    assert (settled.hold, settled.subjects, settled.lease) == ("lease_p_1", ["ten_a"], True)
