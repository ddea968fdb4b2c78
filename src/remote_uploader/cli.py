"""The command line: parse options, load the config, call one library function, render the result.

No SQL and no HTTP here. Library errors become one sentence on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from remote_uploader import __version__
from remote_uploader.agent.signals import EARLY_SIGNALS, hold_early, release_early
from remote_uploader.config import PROFILES, Config, load, parse_set_option, resolve
from remote_uploader.errors import EXIT_OK, RemoteUploaderError, SourceError, StateError, boundary, stdout_gone
from remote_uploader.filters import ENGINES
from remote_uploader.i18n import Message, Parser, _, setup, translate_known
from remote_uploader.logs import JsonFormatter
from remote_uploader.settings import Effective

log = logging.getLogger("remote_uploader")

LOG_FILE = "agent.log"


def say(line: str) -> None:
    """Print a line; a reader that went away (`once | head -2`) ends the output, not the run."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        stdout_gone()  # the command goes on to deliver what it read


def warn(line: str) -> None:
    print(f"remote-uploader: {line}", file=sys.stderr, flush=True)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(_("configuration"))
    group.add_argument("-c", "--config", metavar="FILE", help=_("TOML config file (default: search path)"))
    group.add_argument("--profile", choices=sorted(PROFILES), help=_("preset batching values"))
    group.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help=_("override any key, e.g. --set batching.min_upload_batch=50 (repeatable)"))
    group.add_argument("--state-dir", help="agent.state_dir")
    group.add_argument("--url", help="server.url")
    group.add_argument("--token-file", help=_("server.token_file (tokens are never taken as arguments)"))
    group.add_argument("--agent-id", help="agent.id")
    group.add_argument("--workers", type=int, help="agent.workers")
    group.add_argument("-v", "--verbose", action="count", default=0, help=_("more output (-vv: debug)"))
    group.add_argument("-q", "--quiet", action="store_true", help=_("errors only"))
    group.add_argument("--lang", choices=["en", "zh"], help=_("language of messages"))


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    """Where the collector is and how to sign: the agent's [server] settings, as for `once`."""
    group = parser.add_argument_group(_("connection (default: the agent's config and environment)"))
    group.add_argument("-c", "--config", metavar="FILE", help=_("TOML config file (default: search path)"))
    group.add_argument("--url", help=_("the collector's URL (server.url)"))
    group.add_argument("--token-file", help=_("a file holding the token (server.token_file)"))
    group.add_argument("--lang", choices=["en", "zh"], help=_("language of messages"))
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json", dest="format", action="store_const", const="json", help=_("print a JSON array"))
    shape.add_argument("--csv", dest="format", action="store_const", const="csv", help=_("print CSV with a header"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; its help is in the language `i18n.setup` chose before it was built.

    With `only`, the first word of the command line, when it names a command only that command
    is built: argparse then hands the rest of the line to it, and neither the top-level help nor
    any other command can be reached, so the output and the errors are the same as with all of
    them. Building all of them cost about 5 ms of `once`'s start-up (each parser looks up
    translations of argparse's own words and asks for the terminal's size). Any other word (an
    option, a typo) builds them all, so that argparse's answer names every choice.
    """
    parser = Parser(
        prog="remote-uploader",
        description=_("Ship the IP addresses in log files to a collector: exactly once, flat memory."),
    )
    parser.add_argument("--version", action="version", version=f"remote-uploader {__version__}",
                        help=_("show the version and exit"))
    parser.add_argument("--lang", choices=["en", "zh"], help=_("language of messages"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title=_("commands"))
    every = _commands()
    if only not in every:
        only = None
    for name, (help_text, add_options) in every.items():
        # The collector's commands are parsed by the collector's own parser, imported only when
        # used: the agent must not pay for FastAPI and friends in memory on every start.
        if only is None or only == name:
            add_options(commands.add_parser(name, help=help_text, add_help=name != "collector"))
    return parser


def _commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]:
    """Each command's help line (translated when the parser is built) and what adds its options."""
    return {
        "once": (_("read every file to its end, deliver everything, exit"), _once_options),
        "forever": (_("follow the files and ship as lines arrive"), _forever_options),
        "test": (_("check config, sources, state directory and server"), _test_options),
        "extract": (_("print per-IP counts of files; sends and stores nothing"), _extract_options),
        "status": (_("files, queue, dead letters, last upload (read-only)"), _status_options),
        "requeue": (_("send the dead-lettered batches again"), _requeue_options),
        "reset-state": (_("move a damaged queue database aside and start a new one"), _reset_state_options),
        "ips": (_("addresses a collector counted (what the dashboard's table shows)"), _ips_options),
        "decisions": (_("a collector's decisions (bans), with why"), _decisions_options),
        "config": (_("show the effective configuration and where each value came from"), _config_options),
        "import-legacy": (_("take over the old script's pending addresses and read offsets, once"),
                          _import_legacy_options),
        "collector": (_("the collector service: serve, token, bouncer, decision"), _collector_options),
    }


def _once_options(once: argparse.ArgumentParser) -> None:
    _add_config_options(once)
    once.add_argument("--max-retry-time", type=float, metavar="SECONDS",
                      help=_("give up (exit 3, data stays queued) after the collector failed this long"))
    once.add_argument("paths", nargs="*", help=_("files or globs (instead of the config's [[sources]])"))
    once.set_defaults(func=cmd_once)


def _forever_options(forever: argparse.ArgumentParser) -> None:
    _add_config_options(forever)
    forever.add_argument("paths", nargs="*", help=_("files or globs (instead of the config's [[sources]])"))
    forever.set_defaults(func=cmd_forever)


def _test_options(test: argparse.ArgumentParser) -> None:
    _add_config_options(test)
    test.set_defaults(func=cmd_test)


def _extract_options(extract: argparse.ArgumentParser) -> None:
    extract.add_argument("files", nargs="+", help=_("log files to count"))
    extract.add_argument("--json", action="store_true", help='print {"counts": {...}, "lines": n, "bytes": n}')
    extract.add_argument("--regex", help=_("only addresses in the named group `ip` of this regex"))
    extract.add_argument("--exclude", action="append", default=[], metavar="CIDR",
                         help=_("never count addresses in this network (repeatable)"))
    extract.add_argument("--engine", choices=ENGINES, default="auto",
                         help=_("extraction engine"))
    extract.add_argument("--lang", choices=["en", "zh"], help=_("language of messages"))
    extract.set_defaults(func=cmd_extract)


def _status_options(status: argparse.ArgumentParser) -> None:
    _add_config_options(status)
    status.add_argument("--json", action="store_true", help=_("print JSON"))
    status.set_defaults(func=cmd_status)


def _requeue_options(requeue: argparse.ArgumentParser) -> None:
    _add_config_options(requeue)
    requeue.set_defaults(func=cmd_requeue)


def _reset_state_options(reset: argparse.ArgumentParser) -> None:
    _add_config_options(reset)
    reset.add_argument("--forget-offsets", action="store_true",
                       help=_("do not carry over the recorded offsets: every file is read again from its start "
                              "and what was delivered is counted again (only when the offsets cannot be read)"))
    reset.add_argument("--keep-offsets", action="store_true", help=_("the default (kept for old scripts)"))
    reset.set_defaults(func=cmd_reset_state)


def _ips_options(ips: argparse.ArgumentParser) -> None:
    _add_query_options(ips)
    ips.add_argument("--since", metavar="TIME",
                     help=_("counts of this window: 15m, 1h, 7d or an RFC 3339 time (default: all-time totals)"))
    ips.add_argument("--min-count", type=int, metavar="N", help=_("only addresses counted at least N times"))
    ips.add_argument("--source", metavar="S", help=_("only this source (a log path; glob patterns allowed)"))
    ips.add_argument("--agent", metavar="A", help=_("only this agent's addresses, with its own counts"))
    ips.add_argument("--cidr", metavar="C", help=_("only addresses in this network"))
    ips.add_argument("--sort", choices=["count", "last_seen"], default="count", help=_("descending (default count)"))
    ips.add_argument("--limit", type=int, default=100, metavar="N", help=_("at most N addresses (default 100)"))
    ips.set_defaults(func=cmd_ips)


def _decisions_options(decisions: argparse.ArgumentParser) -> None:
    _add_query_options(decisions)
    decisions.add_argument("--all", action="store_true", help=_("also the ended ones (expired or deleted)"))
    decisions.set_defaults(func=cmd_decisions)


def _config_options(config: argparse.ArgumentParser) -> None:
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True,
                                            title=_("actions"))
    show = config_commands.add_parser("show", help=_("every key, its value and its origin (TOML, or JSON)"))
    _add_config_options(show)
    show.add_argument("--json", action="store_true", help=_("print JSON"))
    show.add_argument("paths", nargs="*", help=_("files or globs (instead of the config's [[sources]])"))
    show.set_defaults(func=cmd_config_show)


def _import_legacy_options(legacy: argparse.ArgumentParser) -> None:
    _add_config_options(legacy)
    legacy.add_argument("--pending", metavar="FILE", help=_("the old pending queue (default: legacy.pending_file)"))
    legacy.add_argument("--offsets", metavar="FILE", help=_("the old offsets file (default: legacy.offsets_file)"))
    legacy.set_defaults(func=cmd_import_legacy)


def _collector_options(collector: argparse.ArgumentParser) -> None:
    collector.add_argument("collector_args", nargs=argparse.REMAINDER)
    collector.set_defaults(func=cmd_collector)


def cmd_collector(args: argparse.Namespace) -> int:
    """The collector lives in the `[collector]` extra: an agent-only install says how to add it."""
    try:
        from remote_uploader.collector.cli import main as collector_main
    except ImportError as exc:
        if not (exc.name or "").startswith(("fastapi", "uvicorn", "msgspec", "starlette", "pydantic")):
            raise
        raise RemoteUploaderError(Message(
            "the collector needs the [collector] extra, which is not installed ({module} is missing): "
            "pip install 'remote-uploader[collector]' (from a checkout: pip install '.[collector]')",
            module=exc.name)) from None
    return collector_main(args.collector_args)


def _query_client(args: argparse.Namespace) -> Any:
    from remote_uploader.query import Client

    overrides = {key: value for key, value in (("server.url", args.url), ("server.token_file", args.token_file))
                 if value is not None}
    config = load(args.config, overrides=overrides)
    setup(args.lang or config.agent.lang)
    return Client(config.server)


def _query_format(args: argparse.Namespace) -> str:
    return args.format or ("table" if sys.stdout.isatty() else "json")


def cmd_ips(args: argparse.Namespace) -> int:
    from remote_uploader.query import IpFilters, fetch_ips, render

    if args.limit < 1 or (args.min_count is not None and args.min_count < 1):
        raise RemoteUploaderError(Message("--limit and --min-count must be at least 1"))
    filters = IpFilters(args.since, args.min_count, args.source, args.agent, args.cidr, args.sort, args.limit)
    client = _query_client(args)
    try:
        rows, columns = fetch_ips(client, filters)
    finally:
        client.close()
    say(render(rows, columns, _query_format(args)))
    return 0


def cmd_decisions(args: argparse.Namespace) -> int:
    from remote_uploader.query import DECISION_COLUMNS, fetch_decisions, render

    client = _query_client(args)
    try:
        rows = fetch_decisions(client, include_ended=args.all)
    finally:
        client.close()
    say(render(rows, DECISION_COLUMNS, _query_format(args)))
    return 0


def load_config(args: argparse.Namespace) -> Config:
    return resolve_config(args).config


def resolve_config(args: argparse.Namespace) -> Effective[Config]:
    overrides: dict[str, Any] = parse_set_option(args.settings)
    for key, value in (
        ("agent.state_dir", args.state_dir),
        ("server.url", args.url),
        ("server.token_file", args.token_file),
        ("agent.id", args.agent_id),
        ("agent.workers", args.workers),
    ):
        if value is not None:
            overrides[key] = value
    if getattr(args, "max_retry_time", None) is not None:
        overrides["server.max_retry_time"] = args.max_retry_time
    paths = getattr(args, "paths", None) or None
    return resolve(args.config, overrides=overrides, profile=args.profile, sources=paths)


def configure_logging(config: Config, args: argparse.Namespace, *, to_file: bool) -> None:
    """stderr gets warnings (more with -v); the rotating log file in the state dir gets `log_level`."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)  # -q: errors only
    console.setLevel(logging.ERROR if args.quiet else
                     [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    if to_file:
        file_handler = QuietRotatingFileHandler(
            config.agent.state_dir / LOG_FILE, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
        file_handler.setLevel(getattr(logging, config.agent.log_level.upper()))
        file_handler.setFormatter(_file_formatter(config.agent.log_format))
        root.addHandler(file_handler)


def _file_formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()  # the collector's too: one set of field names (logs.py)
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


class QuietRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A log file that cannot be written (the state disk is full) says so once, not per line.

    The default handler prints a traceback to stderr for every record it fails to write; the
    agent goes on (its data is safe in the queue, warnings still reach stderr through the
    console handler) and the terminal stays readable.
    """

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            print(f"remote-uploader: cannot write the log file {self.baseFilename} (disk full?); "
                  "it misses lines until it can be written again", file=sys.stderr)


def _agent_setup(args: argparse.Namespace) -> Config:
    """Shared by the commands that own the state directory: private files, logging, language."""
    os.umask(0o077)  # state files and the log are private (0600 in a 0700 directory)
    config = load_config(args)
    setup(args.lang or config.agent.lang)
    from remote_uploader.agent.spool import prepare_state_dir

    prepare_state_dir(config.agent.state_dir)
    configure_logging(config, args, to_file=True)
    return config


def _legacy_hint(config: Config) -> None:
    """Once, forever and test: say so when the old script's files wait to be imported."""
    if not any(path.exists() for path in config.legacy.files()):
        return  # as almost always: the importer, 3 ms of start-up, is not loaded
    from remote_uploader.agent.legacy import legacy_hint

    hint = legacy_hint(config)
    if hint is not None:
        warn(f"{_('note')}: {hint.translated()}")


def cmd_once(args: argparse.Namespace) -> int:
    from remote_uploader.agent.runner import run_once

    config = _agent_setup(args)
    if not config.sources:
        raise RemoteUploaderError(_("no sources configured: add [[sources]] paths to the config or name files"))
    _legacy_hint(config)
    progress = _progress_line if sys.stderr.isatty() and not args.quiet else None
    result = run_once(config, say=(lambda line: None) if args.quiet else say, progress=progress)
    if not args.quiet:
        say(result.message)
    elif result.exit_code != EXIT_OK:  # -q: errors only, and this is one
        warn(result.message)
    return result.exit_code


def _progress_line(text: str) -> None:
    """Rewrites one line of the terminal (stderr): a progress bar that scrolls nothing away."""
    ending = "\n" if text.endswith("\n") else ""  # the last frame ends the line, after clearing its rest
    print(f"\r{text.rstrip()}\033[K{ending}", end="", file=sys.stderr, flush=True)


def cmd_forever(args: argparse.Namespace) -> int:
    from remote_uploader.agent.forever import run_forever

    config = _agent_setup(args)
    if not config.sources:
        raise RemoteUploaderError(_("no sources configured: add [[sources]] paths to the config or name files"))
    _legacy_hint(config)
    return run_forever(config, say=(lambda line: None) if args.quiet else say, reload=lambda: load_config(args))


def cmd_test(args: argparse.Namespace) -> int:
    from remote_uploader.agent.checks import run_checks

    config = load_config(args)
    setup(args.lang or config.agent.lang)
    _legacy_hint(config)
    failed = 0
    for check in run_checks(config):
        mark = "OK  " if check.ok else "FAIL"
        say(f"[{mark}] {check.name}: {check.detail}")
        failed += not check.ok
    return 1 if failed else 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Counts of the files that can be read; exit 5 naming each that cannot (as `once` does)."""
    from remote_uploader.agent.extractors import build_extractor
    from remote_uploader.agent.runner import count_files
    from remote_uploader.errors import ConfigError

    setup(args.lang or "")
    try:
        extractor = build_extractor(regex=args.regex, exclude=args.exclude, engine=args.engine)
    except ValueError as exc:
        raise ConfigError("--regex" if args.regex and "regex" in str(exc).lower() else "--exclude", str(exc)) from exc
    problems: list[SourceError] = []
    counts, lines, nbytes = count_files(args.files, extractor, 4 * 1024 * 1024, problems)
    for problem in problems:
        warn(_("Cannot read {path}: {reason}").format(path=problem.path, reason=translate_known(problem.reason)))
    code = SourceError.exit_code if problems else 0
    if args.json:
        say(json.dumps({"counts": counts, "lines": lines, "bytes": nbytes}, sort_keys=True))
        return code
    for ip, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        say(f"{count:>10}  {ip}")
    say(_("{ips} distinct addresses, {occurrences} occurrences in {lines} lines ({nbytes} bytes)").format(
        ips=len(counts), occurrences=sum(counts.values()), lines=lines, nbytes=nbytes))
    return code


def cmd_config_show(args: argparse.Namespace) -> int:
    from remote_uploader.config_show import to_json, to_toml

    effective = resolve_config(args)
    say(to_json(effective) if args.json else to_toml(effective).rstrip("\n"))
    return 0


def cmd_import_legacy(args: argparse.Namespace) -> int:
    from remote_uploader.agent.legacy import import_legacy

    config = _agent_setup(args)
    report = import_legacy(config, args.pending, args.offsets)
    for line in report.lines:
        say(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from remote_uploader.agent.checks import collect_status, render_status

    config = load_config(args)
    setup(args.lang or config.agent.lang)
    report = collect_status(config)
    if args.json:
        say(json.dumps(report, indent=2, sort_keys=True))
    else:
        for line in render_status(report):
            say(line)
    return StateError.exit_code if "error" in report else 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from remote_uploader.agent.spool import Spool

    config = _agent_setup(args)
    spool = Spool(config.agent.state_dir)
    try:
        moved = spool.requeue_dead_letters()
    finally:
        spool.close()
    say(_("{n} dead-lettered batches queued again; the running agent (or the next run) sends them").format(n=moved))
    return 0


def cmd_reset_state(args: argparse.Namespace) -> int:
    from remote_uploader.agent.recovery import reset_state

    if args.forget_offsets and args.keep_offsets:
        raise RemoteUploaderError(_("--forget-offsets and --keep-offsets contradict each other"))
    from remote_uploader.agent.sink import HttpSink

    config = _agent_setup(args)
    sink = HttpSink(config.server)
    try:
        for line in reset_state(config.agent.state_dir, keep_offsets=not args.forget_offsets,
                                ask=sink.producer_streams):
            say(line)
    finally:
        sink.close()
    return 0


def _lang_in(arguments: list[str]) -> str:
    """--lang from anywhere on the command line, before parsing: the help must be in it too."""
    for index, argument in enumerate(arguments):
        if argument == "--":
            break
        if argument == "--lang" and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--lang="):
            return argument.split("=", 1)[1]
    return ""


def _command_in(arguments: list[str]) -> str:
    """The subcommand's name, before parsing: the first argument that is not an option (or --lang's value)."""
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--lang":
            skip = True
        elif not argument.startswith("-"):
            return argument
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(arguments)
    if command in EARLY_SIGNALS:
        hold_early(EARLY_SIGNALS[command])  # a SIGTERM during start-up stops the agent cleanly (agent/signals.py)
    try:
        return _main(arguments)
    finally:
        release_early()  # if the command ended before its SignalWatcher adopted the held signals


def _main(arguments: list[str]) -> int:
    lang = _lang_in(arguments) if arguments[:1] != ["collector"] else ""
    setup(lang if lang in ("en", "zh") else "")  # --lang or the locale, until a config says otherwise
    return boundary("remote-uploader", lambda: _run(arguments, lang))


def _run(arguments: list[str], lang: str) -> int:
    if arguments[:1] == ["collector"]:  # its own parser, so `collector --help` works too
        args = argparse.Namespace(func=cmd_collector, collector_args=arguments[1:])
    else:
        # A command named first is the one argparse runs: only it is built. With an option
        # before it (`--lang zh once`, `--help`) all of them are.
        args = build_parser(only=arguments[0] if arguments else None).parse_args(arguments)
        args.lang = getattr(args, "lang", None) or lang or None
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)

if __name__ == "__main__":
    raise SystemExit(main())
