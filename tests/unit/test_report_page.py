"""The report query: Anthropic's parameters, bucket snapping, paging and refusals."""

from __future__ import annotations

import pytest

from meter.errors import InvalidRequest
from meter.reports.page import read_page, read_query


def test_buckets_snap_down_and_page_on() -> None:
    first = read_page(
        read_query(b"starting_at=2026-12-01T10:30:00Z&ending_at=2026-12-01T15:00:00Z&bucket_width=1h&limit=2"), ("1h",)
    )
    assert first.width == 3600 and len(first.starts) == 2
    assert first.start.isoformat() == "2026-12-01T10:00:00+00:00"
    assert first.next_page is not None
    second = read_page(
        read_query(
            f"starting_at=2026-12-01T10:30:00Z&ending_at=2026-12-01T15:00:00Z&bucket_width=1h&limit=2&page={first.next_page}".encode()
        ),
        ("1h",),
    )
    assert second.start == first.end and len(second.starts) == 2 and second.next_page is not None
    last = read_page(
        read_query(
            f"starting_at=2026-12-01T10:30:00Z&ending_at=2026-12-01T15:00:00Z&bucket_width=1h&limit=2&page={second.next_page}".encode()
        ),
        ("1h",),
    )
    assert len(last.starts) == 1 and last.next_page is None  # 14:00-15:00


def test_arrays_in_either_spelling() -> None:
    query = read_query(b"group_by[]=model&group_by=api_key_id&models[]=a&models[]=b")
    assert query.array("group_by") == ["model", "api_key_id"]
    assert query.array("models") == ["a", "b"]
    with pytest.raises(InvalidRequest):
        query.array("group_by", ("model",))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "starting_at=yesterday",
        "starting_at=2026-12-01T00:00:00",
        "starting_at=2026-12-01T00:00:00Z&bucket_width=1w",
        "starting_at=2026-12-01T00:00:00Z&limit=0",
        "starting_at=2026-12-01T00:00:00Z&limit=32",
        "starting_at=2026-12-01T00:00:00Z&limit=-1",
        "starting_at=2026-12-01T00:00:00Z&ending_at=2026-11-01T00:00:00Z",
        "starting_at=2026-12-01T00:00:00Z&page=page_!!",
        "starting_at=0001-01-01T00:00:00Z",
    ],
)
def test_refusals(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        read_page(read_query(raw.encode()), ("1d",))


def test_a_page_never_holds_more_buckets_than_its_limit() -> None:
    # A century of minutes asked for: one page of the most minutes a page may have.
    wide = read_page(
        read_query(b"starting_at=2000-01-01T00:00:00Z&ending_at=2099-01-01T00:00:00Z&bucket_width=1m&limit=1440"),
        ("1m",),
    )
    assert len(wide.starts) == 1440 and wide.next_page is not None
