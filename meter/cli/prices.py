"""`meter prices list|export|import`: the price table as a file (JSON or YAML) an operator edits and
imports, so prices change without a release. An import is validated like `PUT /admin/prices`,
audited, and effective-dated: each price applies to calls that start after its `effective_from`
(`--effective-from`, default now, for prices that name none), never to recorded ones."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import yaml

from meter.admin import prices
from meter.admin.audit import cli_actor
from meter.cli import common
from meter.cli.output import emit
from meter.errors import InvalidRequest


def register(commands: Any) -> None:
    group = commands.add_parser("prices", help="the price table").add_subparsers(required=True, metavar="ACTION")
    listing = group.add_parser("list", help="every price, by model and effective time")
    listing.add_argument("--format", choices=("table", "json", "csv"), default="table")
    listing.set_defaults(run=_list)
    export = group.add_parser("export", help="write the price table as a file `prices import` reads")
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(run=_export)
    load = group.add_parser("import", help="add or replace prices from a JSON or YAML file")
    load.add_argument("file", type=Path)
    load.add_argument(
        "--effective-from", type=datetime.fromisoformat, help="ISO 8601 with time zone, for prices that name none"
    )
    load.add_argument("--format", choices=("table", "json", "csv"), default="table")
    load.set_defaults(run=_import)


def _list(args: argparse.Namespace) -> None:
    emit(common.in_transaction(common.settings(args), prices.list_prices).data, args.format)


def _export(args: argparse.Namespace) -> None:
    table = msgspec.to_builtins(common.in_transaction(common.settings(args), prices.list_prices))
    document = {"prices": table["data"]}
    text = yaml.safe_dump(document, sort_keys=False) if args.format == "yaml" else json.dumps(document, indent=2)
    if args.output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        args.output.write_text(text)


def read_price_file(path: Path, effective_from: datetime | None) -> prices.PriceUpdate:
    """The prices a file holds, validated; InvalidRequest naming what is wrong."""
    try:
        document = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"{path}: cannot be read as JSON or YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"prices"}:
        raise InvalidRequest(f'{path}: expected an object with one key, "prices": a list of prices')
    if effective_from is not None:
        for price in document["prices"] or []:
            if isinstance(price, dict):
                price.setdefault("effective_from", effective_from)
    try:
        return msgspec.convert(document, prices.PriceUpdate, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"{path}: {exc}") from None


def _import(args: argparse.Namespace) -> None:
    update = read_price_file(args.file, args.effective_from)
    answer = common.in_transaction(common.settings(args), lambda conn: prices.set_prices(conn, update, cli_actor()))
    emit(answer.data, args.format)
