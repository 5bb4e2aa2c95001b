"""The `ood-monitor` command.

Each subcommand is declared here by a small `_add_<name>` function that builds its
arguments and names the function that runs it; the implementation lives with the part
of the service it belongs to and is imported only when that subcommand runs, so
`ood-monitor --help` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from monitor import __version__
from monitor.errors import MonitorError


def _lazy(target: str) -> Callable[[argparse.Namespace], int | None]:
    """'package.module:function' -> a callable that imports it on first use."""

    def run(args: argparse.Namespace) -> int | None:
        module_name, function_name = target.split(":")
        return getattr(importlib.import_module(module_name), function_name)(args)

    return run


# Subcommand builders, in the order `--help` lists them. Each takes the subparsers object.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def subcommand(builder: Callable[[argparse._SubParsersAction], None]):
    SUBCOMMANDS.append(builder)
    return builder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ood-monitor",
        description="Flag the inputs an image classifier should not be trusted on.",
    )
    parser.add_argument("--version", action="version", version=f"ood-monitor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for builder in SUBCOMMANDS:
        builder(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        code = args.run(args)
    except MonitorError as error:
        print(f"ood-monitor {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


# --- subcommands -------------------------------------------------------------------------
# Keep one builder per subcommand; add yours below with the @subcommand decorator.


@subcommand
def _add_db(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "db",
        help="create, migrate or inspect the database schema",
        description="Alembic migrations of the store. The URL comes from --url, else $MONITOR_STORE__URL, "
        "else the local SQLite default.",
    )
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    for name, help_text, default_revision in (
        ("upgrade", "migrate to a revision (default: the newest)", "head"),
        ("downgrade", "migrate back to a revision (default: one step; 'base' empties the schema)", "-1"),
        ("current", "print the database's revision; exit 1 if it is not what the code expects", None),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        if default_revision is not None:
            action.add_argument("revision", nargs="?", default=default_revision, help=f"default: {default_revision}")
        action.add_argument("--url", help="database URL, e.g. sqlite:///var/ood-monitor.db or postgresql+psycopg://user@host/db")
    parser.set_defaults(run=_lazy("monitor.store.migrate:run_db_command"))


@subcommand
def _add_scheduler(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scheduler",
        help="run the scheduled jobs alone (refit, rate alert, drift report, retention)",
        description="The jobs of [jobs] without the consumer, until SIGTERM/SIGINT. Several replicas may "
        "run it against one PostgreSQL: each job runs on one of them at a time (docs/jobs.md).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $MONITOR_CONFIG or config/monitor.toml)")
    parser.set_defaults(run=_lazy("monitor.jobs.commands:run_scheduler_command"))


@subcommand
def _add_refit(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "refit",
        help="re-fit and activate the threshold now, with the operators' labels",
        description="One re-fit now, with the window, method and labels rule of [jobs]. Exit status 1 when "
        "there are too few samples (the active threshold stays; the reason is printed).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $MONITOR_CONFIG or config/monitor.toml)")
    parser.add_argument("--model-id", type=int, metavar="ID", help="model to re-fit (default: the most recently scored)")
    parser.set_defaults(run=_lazy("monitor.jobs.commands:run_refit_command"))


@subcommand
def _add_report(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="make a drift report (self-contained HTML) now",
        description="Drift report of [--since, --until) against the reference window before it; written to "
        "[jobs] report_dir and indexed in the database. Times: ISO 8601 (UTC unless a zone is given) or a "
        "duration ago such as 24h, 90m, 7d.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $MONITOR_CONFIG or config/monitor.toml)")
    parser.add_argument("--since", metavar="WHEN", help="start of the period (default: one report period ago)")
    parser.add_argument("--until", metavar="WHEN", help="end of the period (default: now)")
    parser.add_argument("--output-dir", metavar="DIR", help="write the report here instead of [jobs] report_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_lazy("monitor.jobs.commands:run_report_command"))


@subcommand
def _add_web(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "web",
        help="serve the operator web pages and JSON API alone (they also run inside `ood-monitor run`)",
        description="The flagged queue, labelling, thresholds, reports and alerts over the configured store "
        "(docs/web.md). `ood-monitor web hash-password` prints a [web] accounts/tokens entry.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $MONITOR_CONFIG or config/monitor.toml)")
    parser.add_argument("--host", help="listen address (default: [web] host)")
    parser.add_argument("--port", type=int, help="listen port (default: [web] port)")
    actions = parser.add_subparsers(dest="web_action", metavar="ACTION")
    hasher = actions.add_parser(
        "hash-password",
        help="hash a password (or a new API token) for [web] accounts / tokens",
        description="Prints 'NAME:ROLE:HASH' (salted scrypt) to paste into [web] accounts, or into [web] tokens "
        "with --token / --new-token. The password is asked twice, or read from standard input with --stdin.",
    )
    hasher.add_argument("--name", required=True, help="the operator or client name recorded on its labels")
    hasher.add_argument("--role", default="labeller", help="viewer, labeller or admin (default: labeller)")
    hasher.add_argument("--stdin", action="store_true", help="read the secret from standard input (one line)")
    hasher.add_argument("--token", action="store_true", help="the secret is an API token: print a [web] tokens entry")
    hasher.add_argument("--new-token", action="store_true", help="make a random API token, print it and its entry")
    parser.set_defaults(run=_lazy("monitor.web.cli:run_web_command"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
