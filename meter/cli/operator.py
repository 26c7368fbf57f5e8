"""The operator's commands, each one call of the same service functions the /admin API uses,
in one transaction, recorded in the audit log as done from the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.admin import batches as batch_admin
from meter.admin import credit, keys, limits, statements, tenants, usage
from meter.admin.audit import cli_actor
from meter.cli import common
from meter.cli.output import FORMATS, emit

# `meter limits set` flags and the limit each sets
LIMIT_FLAGS: dict[str, tuple[str, type]] = {
    "requests-per-minute": ("requests_per_minute", int),
    "tokens-per-minute": ("tokens_per_minute", int),
    "max-concurrent-requests": ("max_concurrent_requests", int),
    "tokens-per-day": ("tokens_per_day", int),
    "tokens-per-month": ("tokens_per_month", int),
    "budget-usd-day": ("budget_usd_per_day", Decimal),
    "budget-usd-month": ("budget_usd_per_month", Decimal),
}
# Tells a flag left out (keep the limit) from `--flag none` (remove it).
NOT_GIVEN = object()


def register(commands: Any) -> None:
    def command(group: Any, name: str, run: Callable[[argparse.Namespace], None], help: str) -> Any:
        parser = group.add_parser(name, help=help)
        parser.add_argument("--format", choices=FORMATS, default="table")
        parser.set_defaults(run=run)
        return parser

    def group(name: str, help: str) -> Any:
        return commands.add_parser(name, help=help).add_subparsers(required=True, metavar="ACTION")

    ten = group("tenants", "manage tenants")
    command(ten, "create", _tenants_create, "create a tenant").add_argument("name")
    listing = command(ten, "list", _tenants_list, "list tenants")
    listing.add_argument("--status", choices=("active", "suspended"))
    command(ten, "show", _tenants_show, "show a tenant").add_argument("tenant_id")
    command(ten, "suspend", _tenants_suspend, "suspend a tenant: its keys get 403").add_argument("tenant_id")
    command(ten, "reactivate", _tenants_reactivate, "reactivate a suspended tenant").add_argument("tenant_id")
    rename = command(ten, "rename", _tenants_rename, "rename a tenant")
    rename.add_argument("tenant_id")
    rename.add_argument("name")

    key = group("keys", "manage tenant keys")
    issue = command(key, "issue", _keys_issue, "issue a key; the secret is printed once")
    issue.add_argument("tenant_id")
    issue.add_argument("--name")
    issue.add_argument("--expires-at", type=datetime.fromisoformat, help="ISO 8601 with time zone")
    issue.add_argument("--allowed-model", action="append", dest="allowed_models", help="repeatable")
    command(key, "list", _keys_list, "list a tenant's keys").add_argument("tenant_id")
    command(key, "revoke", _keys_revoke, "revoke a key").add_argument("key_id")
    rotate = command(key, "rotate", _keys_rotate, "new secret; the old one works for a grace period")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-period", type=int, default=3600, metavar="SECONDS")

    lim = group("limits", "limits of a tenant or key")
    set_limits = command(lim, "set", _limits_set, "set limits; flags left out stay; 'none' removes one")
    set_limits.add_argument("subject", metavar="TENANT_OR_KEY_ID")
    for flag, (_, kind) in LIMIT_FLAGS.items():
        set_limits.add_argument(f"--{flag}", type=_optional(kind), metavar="N|none", default=NOT_GIVEN)
    command(lim, "show", _limits_show, "limits and usage today and this month").add_argument("subject")

    cred = group("credits", "prepaid credit")
    add = command(cred, "add", _credits_add, "top up a tenant's credit (negative to take back)")
    add.add_argument("tenant_id")
    add.add_argument("amount_usd", type=Decimal)
    add.add_argument("--note")
    command(cred, "balance", _credits_balance, "a tenant's balance").add_argument("tenant_id")

    report = commands.add_parser("usage", help="a tenant's usage by day, model or key")
    report.add_argument("tenant_id")
    report.add_argument("--from", dest="start", type=date.fromisoformat, help="YYYY-MM-DD (default: month start)")
    report.add_argument("--to", dest="end", type=date.fromisoformat, help="YYYY-MM-DD, exclusive")
    report.add_argument("--group-by", choices=("day", "model", "key"), default="day")
    report.add_argument("--format", choices=FORMATS, default="table")
    report.set_defaults(run=_usage)

    batch = group("batches", "a tenant's message batches")
    command(batch, "list", _batches_list, "a tenant's batches and whether their results are billed").add_argument(
        "tenant_id"
    )

    bill = commands.add_parser("statement", help="a tenant's monthly statement")
    bill.add_argument("tenant_id")
    bill.add_argument("--month", required=True, help="YYYY-MM")
    bill.add_argument("--format", choices=FORMATS, default="table")
    bill.set_defaults(run=_statement)


def _optional(kind: type) -> Callable[[str], object]:
    def parse(text: str) -> object:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


PAGE = 1000


def _every_page(fetch: Callable[[AsyncConnection, str | None], Awaitable[Any]]) -> Callable[[AsyncConnection], Any]:
    """All the records of a paginated list, for printing in one table."""

    async def every(conn: AsyncConnection) -> list[Any]:
        found: list[Any] = []
        cursor = None
        while True:
            page = await fetch(conn, cursor)
            found += page.data
            if (cursor := page.next_cursor) is None:
                return found

    return every


def _run(args: argparse.Namespace, work: Callable[[AsyncConnection], Awaitable[Any]]) -> None:
    emit(common.in_transaction(common.settings(args), work), args.format)


def _tenants_create(args: argparse.Namespace) -> None:
    _run(args, lambda conn: tenants.create_tenant(conn, args.name, cli_actor()))


def _tenants_list(args: argparse.Namespace) -> None:
    _run(args, _every_page(lambda conn, cursor: tenants.list_tenants(conn, cursor, PAGE, args.status)))


def _tenants_show(args: argparse.Namespace) -> None:
    _run(args, lambda conn: tenants.get_tenant(conn, args.tenant_id))


def _tenants_suspend(args: argparse.Namespace) -> None:
    change = tenants.TenantPatch(status="suspended")
    _run(args, lambda conn: tenants.update_tenant(conn, args.tenant_id, change, cli_actor()))


def _tenants_reactivate(args: argparse.Namespace) -> None:
    change = tenants.TenantPatch(status="active")
    _run(args, lambda conn: tenants.update_tenant(conn, args.tenant_id, change, cli_actor()))


def _tenants_rename(args: argparse.Namespace) -> None:
    change = tenants.TenantPatch(name=args.name)
    _run(args, lambda conn: tenants.update_tenant(conn, args.tenant_id, change, cli_actor()))


def _keys_issue(args: argparse.Namespace) -> None:
    spec = keys.KeyCreate(name=args.name, expires_at=args.expires_at, allowed_models=args.allowed_models)
    hasher = common.key_hasher(common.settings(args))
    _run(args, lambda conn: keys.issue_key(conn, args.tenant_id, spec, cli_actor(), hasher))
    if args.format == "table":
        print("\nStore the key now: meter keeps only its hash and cannot show it again.")


def _keys_list(args: argparse.Namespace) -> None:
    _run(args, _every_page(lambda conn, cursor: keys.list_keys(conn, args.tenant_id, cursor, PAGE)))


def _keys_revoke(args: argparse.Namespace) -> None:
    _run(args, lambda conn: keys.revoke_key(conn, args.key_id, cli_actor()))


def _keys_rotate(args: argparse.Namespace) -> None:
    rotate = keys.KeyRotate(grace_period_s=args.grace_period)
    hasher = common.key_hasher(common.settings(args))
    _run(args, lambda conn: keys.rotate_key(conn, args.key_id, rotate, cli_actor(), hasher))


def _batches_list(args: argparse.Namespace) -> None:
    _run(args, _every_page(lambda conn, cursor: batch_admin.tenant_batches(conn, args.tenant_id, cursor, PAGE)))


def _limits_set(args: argparse.Namespace) -> None:
    async def work(conn: AsyncConnection) -> limits.LimitsView:
        current = msgspec.to_builtins(await limits.read_limits(conn, args.subject))
        values = {field: current[field] for field, _ in LIMIT_FLAGS.values()}
        for flag, (field, _) in LIMIT_FLAGS.items():
            given = getattr(args, flag.replace("-", "_"))
            if given is not NOT_GIVEN:
                values[field] = given
        spec = msgspec.convert(values, limits.LimitsSpec, strict=False)
        return await limits.set_limits(conn, args.subject, spec, cli_actor())

    _run(args, work)


def _limits_show(args: argparse.Namespace) -> None:
    _run(args, lambda conn: limits.read_limits(conn, args.subject))


def _credits_add(args: argparse.Namespace) -> None:
    top_up = credit.TopUp(amount_usd=args.amount_usd, note=args.note)
    _run(args, lambda conn: credit.add_credit(conn, args.tenant_id, top_up, cli_actor()))


def _credits_balance(args: argparse.Namespace) -> None:
    _run(args, lambda conn: credit.read_balance(conn, args.tenant_id))


def _usage(args: argparse.Namespace) -> None:
    report = common.in_transaction(
        common.settings(args),
        lambda conn: usage.tenant_usage(conn, args.tenant_id, args.start, args.end, args.group_by),
    )
    if args.format == "json":
        emit(report, "json")
        return
    rows = [{args.group_by: row.group, **msgspec.to_builtins(row)} for row in report.data]
    for row in rows:
        del row["group"]
    if args.format == "table":
        print(f"{report.tenant_id}: {report.start} to {report.end} (exclusive), by {report.group_by}\n")
    emit(rows, args.format)


def _statement(args: argparse.Namespace) -> None:
    report = common.in_transaction(
        common.settings(args), lambda conn: statements.statement(conn, args.tenant_id, args.month)
    )
    if args.format == "csv":
        print(statements.statement_csv(report), end="")
    elif args.format == "json":
        emit(report, "json")
    else:
        print(f"Statement for {report.tenant_name} ({report.tenant_id}), {report.month}, {report.currency}\n")
        emit(report.lines, "table")
        if report.fees:
            print("\nFees:")
            emit(report.fees, "table")
        print(f"\nTotal: ${report.total_usd}")
