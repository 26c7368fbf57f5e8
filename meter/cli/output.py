"""Printing answers: readable tables in a terminal, or JSON / CSV for programs."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import msgspec

FORMATS = ("table", "json", "csv")
MAX_CELL = 40  # wider values are cut in tables (json and csv keep them whole)


def emit(value: object, fmt: str) -> None:
    """Print a record or a list of records in `fmt`."""
    data = msgspec.to_builtins(value)
    if fmt == "json":
        print(json.dumps(data, indent=2))
        return
    records = data if isinstance(data, list) else [data]
    if fmt == "csv":
        columns = _columns(records)
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([_plain(record.get(column)) for column in columns])
        return
    if isinstance(data, dict):
        print_fields(data)
    else:
        print_table(records)


def print_fields(record: dict[str, Any]) -> None:
    width = max((len(name) for name in record), default=0)
    for name, value in record.items():
        print(f"{name.ljust(width)}  {_plain(value)}")


def print_table(records: list[dict[str, Any]]) -> None:
    if not records:
        print("(none)")
        return
    columns = _columns(records)
    cells = [[_cell(record.get(column)) for column in columns] for record in records]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * width for width in widths))
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _columns(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        columns.extend(name for name in record if name not in columns)
    return columns


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _cell(value: Any) -> str:
    text = _plain(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
