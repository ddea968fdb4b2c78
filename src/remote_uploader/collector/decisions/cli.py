"""`remote-uploader collector decision add|delete|list`: thin commands over decisions/engine.py.

    collector decision add VALUE --duration DUR [--reason TEXT] [-c FILE | --db URL]
    collector decision delete VALUE [-c FILE | --db URL]
    collector decision list [--all] [--json] [-c FILE | --db URL]

Added by `collector/cli.py`, which gives them its database options and its error boundary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from remote_uploader.collector.decisions.engine import DecisionRefused, add_manual, delete_value
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import Decision, DecisionQuery
from remote_uploader.collector.timeparse import DurationError, format_duration, parse_duration
from remote_uploader.errors import BadInputError
from remote_uploader.i18n import _
from remote_uploader.protocol import format_time

Opener = Callable[[argparse.Namespace], tuple[CollectorSettings, Storage]]


def _row(decision: Decision) -> dict[str, Any]:
    return {
        "id": decision.id,
        "value": decision.value,
        "scope": decision.scope,
        "type": decision.type,
        "origin": decision.origin,
        "scenario": decision.scenario,
        "reason": decision.reason,
        "created_at": format_time(decision.created_at),
        "until": format_time(decision.until),
        "state": decision.state,
    }


def _show(decision: Decision) -> str:
    left = format_duration(decision.until - datetime.now(UTC))
    return f"{decision.id}  {decision.value}  {decision.scenario}  until {format_time(decision.until)} ({left} left)"


def cmd_add(args: argparse.Namespace, open_db: Opener) -> int:
    try:
        duration = parse_duration(args.duration)
    except DurationError as exc:
        raise BadInputError("--duration", str(exc)) from None
    settings, storage = open_db(args)
    try:
        made = add_manual(storage, settings.allowlist, args.value, duration, args.reason, datetime.now(UTC))
    except DecisionRefused as exc:
        raise BadInputError(exc.field.upper(), exc.reason) from None
    finally:
        storage.close()
    for decision in made:
        print(f"Added decision {_show(decision)}")
    return 0


def cmd_delete(args: argparse.Namespace, open_db: Opener) -> int:
    _, storage = open_db(args)
    try:
        ended = delete_value(storage, args.value, datetime.now(UTC))
    except DecisionRefused as exc:
        raise BadInputError(exc.field.upper(), exc.reason) from None
    finally:
        storage.close()
    if not ended:
        print(f"remote-uploader collector: error: no active decision for {args.value!r}", file=sys.stderr)
        return 1
    for decision in ended:
        print(f"Deleted decision {decision.id} ({decision.value})")
    return 0


def cmd_list(args: argparse.Namespace, open_db: Opener) -> int:
    _, storage = open_db(args)
    rows: list[Decision] = []
    try:
        now = datetime.now(UTC)
        after = 0
        while True:
            query = DecisionQuery(active=None if args.all else True, now=None if args.all else now, after_id=after)
            page = storage.list_decisions(query)
            rows += page
            if len(page) < query.limit:
                break
            after = page[-1].id
    finally:
        storage.close()
    if args.json:
        print(json.dumps([_row(d) for d in rows], indent=2))
        return 0
    if not rows:
        print("No decisions.")
        return 0
    print("ID  VALUE  SCENARIO  STATE  UNTIL  REASON")
    for d in rows:
        print(f"{d.id}  {d.value}  {d.scenario}  {d.state}  {format_time(d.until)}  {d.reason}")
    return 0


def add_commands(
    commands: Any,
    database_options: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Callable[[argparse.Namespace, Opener], int]], Callable[[argparse.Namespace], int]],
) -> None:
    decision = commands.add_parser("decision", help=_("add, delete and list decisions"), description=_("Decisions."))
    actions = decision.add_subparsers(dest="decision_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help=_("ban an address or a CIDR for a while"),
        description=_(
            "Add a decision by hand (origin cscli, scenario manual); it replaces an active "
            "decision of the same value. The allowlist is subtracted."
        ),
    )
    add.add_argument("value", metavar="VALUE", help=_("an address or a CIDR network"))
    add.add_argument("--duration", required=True, metavar="DUR", help=_("30s, 15m, 4h, 7d or combinations (1h30m)"))
    add.add_argument("--reason", default="", metavar="TEXT", help=_("why (shown with the decision)"))
    database_options(add)
    add.set_defaults(func=run(cmd_add))
    delete = actions.add_parser("delete", help=_("end the active decisions of VALUE"))
    delete.add_argument("value", metavar="VALUE", help=_("an address or a CIDR network"))
    database_options(delete)
    delete.set_defaults(func=run(cmd_delete))
    listing = actions.add_parser("list", help=_("list active decisions"))
    listing.add_argument("--all", action="store_true", help=_("also deleted and expired ones"))
    listing.add_argument("--json", action="store_true", help=_("print JSON"))
    database_options(listing)
    listing.set_defaults(func=run(cmd_list))
