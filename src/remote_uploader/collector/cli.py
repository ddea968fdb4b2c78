"""`remote-uploader collector ...`: thin commands over the collector library.

    collector serve [-c FILE] [--db URL] [--host H] [--port P] [--max-body BYTES] [--parse-workers N] ...
    collector token add NAME [--read-only] [--replace] [--db URL | -c FILE]
    collector token list [--json] [--db URL | -c FILE]
    collector token revoke NAME [--db URL | -c FILE]
    collector bouncer add NAME [--replace] [--db URL | -c FILE]
    collector bouncer list [--json] [--db URL | -c FILE]
    collector bouncer revoke NAME [--db URL | -c FILE]
    collector decision add VALUE --duration DUR [--reason TEXT] | delete VALUE | list  (decisions/cli.py)

`register(subparsers)` adds the `collector` command to the main command line; `main(argv)` runs
the same commands standalone (`python -m remote_uploader.collector.cli serve ...`). Each command
parses, calls the library, renders; `serve` calls `server.serve(settings)`. Library errors go
through the one boundary of both halves (`errors.boundary`): one translated sentence on stderr
and the exit code of the error (2 configuration, 4 storage, 1 otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from remote_uploader import logs
from remote_uploader.collector import settings
from remote_uploader.collector.auth import create_bouncer_key, create_token
from remote_uploader.collector.decisions import cli as decisions_cli
from remote_uploader.collector.server import serve
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import CollectorError, ConfigError, StorageError, boundary
from remote_uploader.i18n import Parser, _, setup
from remote_uploader.protocol import format_time

logger = logging.getLogger(__name__)

PROG = "remote-uploader collector"

Command = Callable[[argparse.Namespace], int]


def _boundary(command: Command) -> Command:
    """The command run inside the one CLI boundary of both halves (errors.boundary)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        return boundary(PROG, lambda: command(args))

    return run


def _load(args: argparse.Namespace, **flags: object) -> settings.CollectorSettings:
    return settings.load(args.collector_config, {"db": args.db, **flags})


def _create_dir(args: argparse.Namespace, config: settings.CollectorSettings) -> bool:
    """A database in the default place gets its directory made; one the operator named must be in
    an existing directory unless --create-dir says to make it (a typo is not a new database)."""
    return bool(args.create_dir) or config.db == settings.default_db_url()


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[Storage]:
    """The configured storage, migrated, for one command; closed however the command ends."""
    storage = _open_with_settings(args)[1]
    try:
        yield storage
    finally:
        storage.close()


def _open_with_settings(args: argparse.Namespace) -> tuple[settings.CollectorSettings, Storage]:
    config = _load(args)
    storage = open_storage(config.db, timeout=config.db_timeout, pool_size=2, create_dir=_create_dir(args, config))
    try:
        storage.migrate()
    except BaseException:
        storage.close()
        raise
    return config, storage


def _with_database(command: Callable[[argparse.Namespace, Any], int]) -> Command:
    return _boundary(lambda args: command(args, _open_with_settings))


# -- serve ------------------------------------------------------------------------------------


@_boundary
def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(
        args,
        host=args.host,
        port=args.port,
        max_body=args.max_body,
        retention_days=args.retention_days,
        log_format=args.log_format,
        access_log=False if args.no_access_log else None,
        dashboard=False if args.no_dashboard else None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        parse_workers=args.parse_workers,
    )
    logs.configure(getattr(logging, args.log_level.upper()), config.log_format)
    return serve(config, create_dir=_create_dir(args, config))


# -- config show ------------------------------------------------------------------------------


@_boundary
def cmd_config_show(args: argparse.Namespace) -> int:
    from remote_uploader.config_show import to_json, to_toml

    effective = settings.resolve(args.collector_config, {"db": args.db})
    print(to_json(effective) if args.json else to_toml(effective).rstrip("\n"))
    return 0


# -- tokens -----------------------------------------------------------------------------------


@_boundary
def cmd_token_add(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        token = create_token(storage, args.name, "read" if args.read_only else "agent", replace=args.replace)
    kind = "a read-only" if args.read_only else "an agent"
    print(f"Created {kind} token for {args.name!r}. It is shown only now; store it safely.")
    print(token)
    return 0


@_boundary
def cmd_token_list(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        tokens = storage.list_tokens()
    if args.json:
        document = [{"name": t.name, "role": t.role, "created_at": format_time(t.created_at)} for t in tokens]
        print(json.dumps(document, indent=2))
        return 0
    if not tokens:
        print("No tokens. Create one with: remote-uploader collector token add NAME")
        return 0
    width = max(len("NAME"), *(len(t.name) for t in tokens))
    print(f"{'NAME':<{width}}  ROLE   CREATED")
    for t in tokens:
        print(f"{t.name:<{width}}  {t.role:<5}  {format_time(t.created_at)}")
    return 0


@_boundary
def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        revoked = storage.revoke_token(args.name)
    if not revoked:
        raise CollectorError(f"no token named {args.name!r}")
    print(f"Revoked the token of {args.name!r}; requests with it are refused from now on.")
    return 0


# -- compact ----------------------------------------------------------------------------------


@_boundary
def cmd_compact(args: argparse.Namespace) -> int:
    from remote_uploader.collector.storage import sqlite_path
    from remote_uploader.collector.storage.sqlite import PAGE_SIZE, SqliteStorage

    config = _load(args)
    path = sqlite_path(config.db)
    if path is None:
        raise ConfigError("db", "compact rewrites a SQLite store; on PostgreSQL run VACUUM FULL instead")
    if not os.path.isfile(path):
        raise StorageError(f"{path}: no store there")
    storage = SqliteStorage(path, timeout=config.db_timeout, create_dir=False)
    try:
        size = os.path.getsize(path)
        before, after = storage.compact(args.page_size or PAGE_SIZE)
    finally:
        storage.close()
    print(f"Compacted {path}: {size:,} -> {os.path.getsize(path):,} bytes, pages of {before:,} -> {after:,} bytes.")
    return 0


# -- bouncer keys -----------------------------------------------------------------------------


@_boundary
def cmd_bouncer_add(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        key = create_bouncer_key(storage, args.name, replace=args.replace)
    print(f"Created a bouncer key for {args.name!r}: put it in the bouncer's api_key. It is shown only now.")
    print(key)
    return 0


@_boundary
def cmd_bouncer_list(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        bouncers = storage.list_bouncers()

    def when(moment: Any) -> str:
        return format_time(moment) if moment is not None else "-"

    if args.json:
        document = [
            {
                "name": b.name,
                "created_at": format_time(b.created_at),
                "last_pull_at": None if b.last_pull_at is None else format_time(b.last_pull_at),
                "user_agent": b.user_agent,
            }
            for b in bouncers
        ]
        print(json.dumps(document, indent=2))
        return 0
    if not bouncers:
        print("No bouncers. Create a key with: remote-uploader collector bouncer add NAME")
        return 0
    width = max(len("NAME"), *(len(b.name) for b in bouncers))
    print(f"{'NAME':<{width}}  {'CREATED':<27}  {'LAST PULL':<27}  USER AGENT")
    for b in bouncers:
        print(f"{b.name:<{width}}  {when(b.created_at):<27}  {when(b.last_pull_at):<27}  {b.user_agent or '-'}")
    return 0


@_boundary
def cmd_bouncer_revoke(args: argparse.Namespace) -> int:
    with _open(args) as storage:
        revoked = storage.revoke_bouncer(args.name)
    if not revoked:
        raise CollectorError(f"no bouncer named {args.name!r}")
    print(f"Revoked the key of bouncer {args.name!r}; its pulls are refused from now on.")
    return 0


# -- the parser -------------------------------------------------------------------------------


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        dest="collector_config",
        metavar="FILE",
        help=_("TOML file with a [collector] table (see docs/collector.md)"),
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help=_(
            "sqlite:///PATH or postgresql://USER@HOST/DB "
            "(default: sqlite in the state directory, or the config file's db)"
        ),
    )
    parser.add_argument(
        "--create-dir",
        action="store_true",
        help=_("create the directory of a SQLite --db that does not exist yet (0700)"),
    )


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add `serve` and `token` under `parser` (the `collector` command, or a standalone one)."""
    commands = parser.add_subparsers(dest="collector_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help=_("run the HTTP collector"), description=_("Receive batches from agents and serve the API.")
    )
    _database_options(serve)
    serve.add_argument("--host", help=_("address to listen on (default 127.0.0.1)"))
    serve.add_argument("--port", type=int, help=_("port to listen on (default 8080; 0 picks a free one)"))
    serve.add_argument("--max-body", type=int, metavar="BYTES", help=_("body limit, also after gzip (default 16 MiB)"))
    serve.add_argument("--retention-days", type=float, metavar="DAYS", help=_("keep batch ids this long (default 30)"))
    serve.add_argument("--tls-cert", metavar="PEM", help=_("serve HTTPS with this certificate chain (with --tls-key)"))
    serve.add_argument("--tls-key", metavar="PEM", help=_("the private key of --tls-cert"))
    serve.add_argument(
        "--parse-workers",
        type=int,
        metavar="N",
        help=_("processes that parse big batches (default: 2, or 1 on a single core; 0: parse in the server process)"),
    )
    serve.add_argument("--log-format", choices=["text", "json"], help=_("key=value text (default) or JSON lines"))
    serve.add_argument("--no-access-log", action="store_true", help=_("do not log every request"))
    serve.add_argument("--no-dashboard", action="store_true", help=_("do not serve the web pages at /"))
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help=_("show the effective settings and where each value came from"))
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help=_("every key, its value and its origin (TOML, or JSON)"),
        description=_(
            "Print the settings `serve` would use: every key of the [collector] table with its value and "
            "where it came from (default, the file, an environment variable, the command line), as TOML that -c "
            "accepts, or as JSON."
        ),
    )
    show.add_argument("-c", "--config", dest="collector_config", metavar="FILE",
                      help=_("TOML file with a [collector] table"))
    show.add_argument("--db", metavar="URL", help=_("the database URL, as for serve"))
    show.add_argument("--json", action="store_true", help=_("print JSON"))
    show.set_defaults(func=cmd_config_show)

    token = commands.add_parser("token", help=_("manage bearer tokens"), description=_("Manage bearer tokens."))
    tokens = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = tokens.add_parser(
        "add",
        help=_("create a token; prints it once, on the last line"),
        description=_(
            "Create a token for agent NAME (its batches must carry agent=NAME). "
            "Only a hash is stored; the token is printed once, alone on the last line."
        ),
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--read-only", action="store_true", help=_("a token that may read but not send batches"))
    add.add_argument("--replace", action="store_true", help=_("replace an existing token of NAME"))
    _database_options(add)
    add.set_defaults(func=cmd_token_add)
    listing = tokens.add_parser("list", help=_("list token names and roles (never the tokens)"))
    listing.add_argument("--json", action="store_true", help=_("print JSON"))
    _database_options(listing)
    listing.set_defaults(func=cmd_token_list)
    revoke = tokens.add_parser("revoke", help=_("delete the token of NAME"))
    revoke.add_argument("name", metavar="NAME")
    _database_options(revoke)
    revoke.set_defaults(func=cmd_token_revoke)

    compact = commands.add_parser(
        "compact",
        help=_("rewrite a SQLite store: free emptied pages, convert its page size"),
        description=_(
            "Rewrite the SQLite store (VACUUM) with pages of --page-size bytes: frees the pages that "
            "retention emptied, and converts a store made with other pages (earlier collectors made "
            "16 KiB ones) to the 4 KiB pages that ingest best. Stop the collector first: the store must "
            "not be in use. Needs free disk space of up to twice the store's size."
        ),
    )
    compact.add_argument(
        # No default here: storage/sqlite.py's PAGE_SIZE, what new stores get (not imported at start-up).
        "--page-size", type=int, choices=[512 << k for k in range(8)], metavar="BYTES",
        help=_("page size of the rewritten store (default 4096)"),
    )
    _database_options(compact)
    compact.set_defaults(func=cmd_compact)

    bouncer = commands.add_parser(
        "bouncer",
        help=_("manage CrowdSec bouncer keys"),
        description=_(
            "Manage the keys that CrowdSec bouncers send in X-Api-Key to pull decisions (see docs/decisions.md)."
        ),
    )
    bouncers = bouncer.add_subparsers(dest="bouncer_command", metavar="ACTION", required=True)
    badd = bouncers.add_parser(
        "add",
        help=_("create a bouncer key; prints it once, on the last line"),
        description=_(
            "Create a key for bouncer NAME. Only a hash is stored; the key is printed once, "
            "alone on the last line. It may pull decisions and nothing else."
        ),
    )
    badd.add_argument("name", metavar="NAME")
    badd.add_argument("--replace", action="store_true", help=_("replace an existing key of NAME"))
    _database_options(badd)
    badd.set_defaults(func=cmd_bouncer_add)
    blist = bouncers.add_parser("list", help=_("list bouncers and their last pulls (never the keys)"))
    blist.add_argument("--json", action="store_true", help=_("print JSON"))
    _database_options(blist)
    blist.set_defaults(func=cmd_bouncer_list)
    brevoke = bouncers.add_parser("revoke", help=_("delete the key of bouncer NAME"))
    brevoke.add_argument("name", metavar="NAME")
    _database_options(brevoke)
    brevoke.set_defaults(func=cmd_bouncer_revoke)

    decisions_cli.add_commands(commands, _database_options, _with_database)


def register(subparsers: Any) -> None:
    """Add the `collector` command to the main parser's subparsers."""
    parser = subparsers.add_parser(
        "collector",
        help=_("run the central collector, manage its tokens"),
        description=_(
            "The central collector: receives batches from agents (protocol v1), "
            "serves address lists, agent statistics and blocklists."
        ),
    )
    add_commands(parser)


def main(argv: Sequence[str] | None = None) -> int:
    setup()  # the locale's language, as `remote-uploader collector ...` has it (no --lang here)
    parser = Parser(prog=PROG)
    add_commands(parser)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
