"""`meter webhooks …`: the /admin/webhooks service functions from the command line, each in one
transaction and audited as done from the CLI."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from meter.admin import webhooks
from meter.admin.audit import cli_actor
from meter.cli import common
from meter.cli.output import FORMATS, emit
from meter.webhooks.events import EVENT_TYPES


def register(commands: Any) -> None:
    group = commands.add_parser("webhooks", help="webhooks of budget, credit, key and batch events").add_subparsers(
        required=True, metavar="ACTION"
    )

    def command(name: str, run: Any, help: str) -> Any:
        parser = group.add_parser(name, help=help)
        parser.add_argument("--format", choices=FORMATS, default="table")
        parser.set_defaults(run=run)
        return parser

    create = command("create", _create, "subscribe a URL to events; the signing secret is printed once")
    create.add_argument("url")
    create.add_argument("--event", action="append", dest="events", required=True, choices=EVENT_TYPES)
    create.add_argument("--tenant", dest="tenant_id", help="only this tenant's events (default: every tenant's)")
    create.add_argument("--description")
    create.add_argument("--credit-low-usd", type=Decimal, help="the floor of credit.low (default 10)")
    command("list", _list, "the webhooks (never their secrets)")
    command("delete", _delete, "delete a webhook and its deliveries").add_argument("webhook_id")
    rotate = command("rotate", _rotate, "a new signing secret, printed once")
    rotate.add_argument("webhook_id")
    rotate.add_argument("--grace-period", type=int, default=3600, metavar="SECONDS")
    deliveries = command("deliveries", _deliveries, "a webhook's recent deliveries, newest first")
    deliveries.add_argument("webhook_id")
    deliveries.add_argument("--limit", type=int, default=50)


def _run(args: argparse.Namespace, work: Any) -> None:
    emit(common.in_transaction(common.settings(args), work), args.format)


def _create(args: argparse.Namespace) -> None:
    spec = webhooks.WebhookCreate(
        url=args.url,
        event_types=args.events,
        tenant_id=args.tenant_id,
        description=args.description,
        credit_low_usd=args.credit_low_usd,
    )
    _run(args, lambda conn: webhooks.create_webhook(conn, spec, cli_actor()))
    if args.format == "table":
        print("\nStore the secret now: it is not shown again (rotate it to get a new one).")


def _list(args: argparse.Namespace) -> None:
    async def every(conn: Any) -> list[webhooks.Webhook]:
        found: list[webhooks.Webhook] = []
        cursor = None
        while True:
            page = await webhooks.list_webhooks(conn, cursor, 1000)
            found += page.data
            if (cursor := page.next_cursor) is None:
                return found

    _run(args, every)


def _delete(args: argparse.Namespace) -> None:
    _run(args, lambda conn: webhooks.delete_webhook(conn, args.webhook_id, cli_actor()))


def _rotate(args: argparse.Namespace) -> None:
    rotate = webhooks.SecretRotate(grace_period_s=args.grace_period)
    _run(args, lambda conn: webhooks.rotate_secret(conn, args.webhook_id, rotate, cli_actor()))


def _deliveries(args: argparse.Namespace) -> None:
    async def recent(conn: Any) -> list[webhooks.Delivery]:
        return (await webhooks.list_deliveries(conn, args.webhook_id, None, args.limit)).data

    _run(args, recent)
