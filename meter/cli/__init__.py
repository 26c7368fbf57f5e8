"""The `meter` command. serve.py: serve the gateway, migrate the database, run the demo upstream;
operator.py: everything an operator does (tenants, keys, limits, credit, usage, statements);
prices.py: the price table as a file; reconcile.py: the ledger against the upstream's reports;
webhooks.py: the operator's webhooks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from meter.cli import operator, prices, reconcile, serve, webhooks
from meter.errors import MeterError
from meter.settings import ConfigError

DESCRIPTION = (
    "meter: a usage-metering and billing gateway for the Anthropic Messages API. Serve the gateway, "
    "migrate its database, run the demo upstream, and manage tenants, keys, limits, credit, "
    "usage and statements."
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meter", description=DESCRIPTION)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve.register(commands)
    operator.register(commands)
    prices.register(commands)
    reconcile.register(commands)
    webhooks.register(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx"):  # httpx logs every request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.run(args)
    except ConfigError as exc:
        print(f"meter: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except MeterError as exc:
        print(f"meter: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
