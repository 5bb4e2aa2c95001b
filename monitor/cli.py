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


def _lazy(target: str, checks: dict[str, bool] | None = None) -> Callable[[argparse.Namespace], int | None]:
    """'package.module:function' -> a callable that imports it on first use. With `checks`, the
    start-up checks (monitor.preflight) run first, before the heavy imports, and their settings
    are handed over as `args.settings`."""

    def run(args: argparse.Namespace) -> int | None:
        if checks is not None:
            from monitor.preflight import preflight

            args.settings = preflight(getattr(args, "config", None), **checks)
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


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $MONITOR_CONFIG or config/monitor.toml)")
# Keep one builder per subcommand; add yours below with the @subcommand decorator.


@subcommand
def _add_db(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "db",
        help="create, migrate or inspect the database schema",
        description="Alembic migrations of the store. The database is --url, else [store] url of the settings "
        "(file, then MONITOR_STORE__URL).",
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
        _add_config_argument(action)
    parser.set_defaults(run=_lazy("monitor.store.migrate:run_db_command"))


@subcommand
def _add_bench(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmarks: OOD detection quality on offline sets, scoring speed",
        description="Reproducible benchmarks; figures are printed and written as JSON, Markdown and PNG "
        "(see docs/evaluation.md).",
    )
    kinds = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)

    ood = kinds.add_parser(
        "ood",
        help="auROC with bootstrap intervals and average ranks over 3 architectures x 3 seeds, per OOD set",
        description="The paper's protocol with Fashion-MNIST as in-distribution: three batch-norm architectures, "
        "three seeds each (monitor/assets/ood_models, trained by deploy/train_ood_models.py), against every OOD "
        "set available offline and the held-out classes. Two tables: the paper's protocol as printed, and the "
        "extended one (see docs/evaluation.md).",
    )
    ood.add_argument("--quick", action="store_true",
                     help="small sets (300 ID, 150 per OOD set; default 2000 and 1000), 100 bootstrap draws: a smoke run")
    ood.add_argument("--limit", type=int, metavar="N", help="at most N images per set (ID and each OOD set)")
    ood.add_argument("--sets", nargs="+", metavar="NAME", help="far-OOD sets to use (default: all)")
    ood.add_argument("--architectures", nargs="+", metavar="NAME",
                     help="architectures to evaluate: resnet, densenet, wrn (default: all)")
    ood.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                     help="training seeds of the models to evaluate (default: 0 1 2)")
    ood.add_argument("--models-dir", metavar="DIR", help="trained models (default: monitor/assets/ood_models)")
    ood.add_argument("--draws", type=int, metavar="B", help="bootstrap draws (default 1000; 100 with --quick)")
    ood.add_argument("--no-near-ood", action="store_true", help="skip the held-out-classes split")
    ood.add_argument("--no-odin", action="store_true", help="leave ODIN out (it costs a backward pass)")
    ood.add_argument("--batch-size", type=int, default=250, metavar="B", help="scoring batch size (default 250)")
    ood.add_argument("--seed", type=int, help="seed of the subsets, noise and splits (default 0)")
    ood.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when available)")
    ood.add_argument("--threads", type=int, default=1, metavar="N",
                     help="torch CPU threads (default 1: the models are small, and on a shared machine "
                     "several threads mostly wait for each other)")
    ood.add_argument("--output-dir", default="docs/benchmarks", metavar="DIR", help="default: docs/benchmarks")
    ood.add_argument("--no-progress", action="store_true", help="no progress bars")
    ood.set_defaults(run=_lazy("monitor.evaluation.ood_bench:main"))

    speed = kinds.add_parser(
        "speed",
        help="images/s of the Scorer beside the forward pass and pytorch-ood's detectors",
        description="Images per second of the bare forward pass, the Scorer (without and with ODIN) and "
        "pytorch-ood's MSP, Energy, Entropy, MaxLogit and ODIN on the same models and batches.",
    )
    speed.add_argument("--quick", action="store_true", help="tiny batches, one round, no 224x224: a smoke run")
    speed.add_argument(
        "--device", action="append", metavar="DEVICE",
        help="cpu or cuda; repeat for several (default: cpu, and cuda when available)",
    )
    speed.add_argument("--output-dir", default="docs/benchmarks", metavar="DIR", help="default: docs/benchmarks")
    speed.add_argument("--no-progress", action="store_true", help="no progress bars")
    speed.set_defaults(run=_lazy("monitor.evaluation.speed:main"))


@subcommand
def _add_scheduler(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scheduler",
        help="the scheduler role: the scheduled jobs (refit, rate alert, drift report, retention)",
        description="The jobs of [jobs] in a process of their own, until SIGTERM/SIGINT, with /healthz, /readyz "
        "and /metrics on [web] host:port. Several replicas may run it against one PostgreSQL: each job runs on "
        "one of them at a time (docs/jobs.md).",
    )
    _add_config_argument(parser)
    parser.set_defaults(run=_lazy("monitor.service.roles:scheduler_command", checks={"database": True}))


@subcommand
def _add_refit(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "refit",
        help="re-fit and activate the threshold now, with the operators' labels",
        description="One re-fit now, with the window, method and labels rule of [jobs]. Exit status 1 when "
        "there are too few samples (the active threshold stays; the reason is printed).",
    )
    _add_config_argument(parser)
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
    _add_config_argument(parser)
    parser.add_argument("--since", metavar="WHEN", help="start of the period (default: one report period ago)")
    parser.add_argument("--until", metavar="WHEN", help="end of the period (default: now)")
    parser.add_argument("--output-dir", metavar="DIR", help="write the report here instead of [jobs] report_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_lazy("monitor.jobs.commands:run_report_command"))


# --- the monitored model and offline scoring -----------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,224,224), not {text!r}")
    return values  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, not {text!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, *, default_spec: str | None = None) -> None:
    """The options naming the monitored classifier (read by monitor.classifiers.load_from_args)."""
    group = parser.add_argument_group("monitored model (see docs/models.md)")
    group.add_argument(
        "--model",
        required=default_spec is None,
        default=default_spec,
        metavar="SPEC",
        help="'demo', a torchvision architecture (resnet18, ...), or package.module:factory"
        + (f" (default: {default_spec})" if default_spec else ""),
    )
    group.add_argument("--weights", metavar="FILE", help="state_dict file (read with weights_only=True)")
    group.add_argument("--num-classes", type=_positive_int, metavar="K", help="classes of the model's head")
    group.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="input shape the model takes")
    group.add_argument("--mean", type=_floats, metavar="M,...", help="normalisation mean, one per channel")
    group.add_argument("--std", type=_floats, metavar="S,...", help="normalisation std, one per channel")
    group.add_argument(
        "--class-names", type=lambda text: tuple(n.strip() for n in text.split(",")), metavar="A,B,...",
        help="class names in output order",
    )
    group.add_argument("--head", metavar="MODULE", help="dotted name of the head nn.Linear if not the last one")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    group.add_argument(
        "--cache-dir", metavar="DIR",
        help="1C-Sum calibration cache (default: [model] cache_dir of the settings, var/cache)",
    )
    group.add_argument(
        "--calibration-samples", type=_positive_int, default=2048, metavar="N",
        help="uniform-noise images that calibrate 1C-Sum on first use of a model (default 2048)",
    )


@subcommand
def _add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "score",
        help="score image files or folders offline: predicted class and every indicator, CSV or JSON lines",
        description="One row per image (folders are searched recursively for .png .jpg .jpeg .webp .bmp "
        ".npy). Files that cannot be used are rows with their reject reason. Exit 0 when at least one "
        "image was scored, 1 when none could be, 2 on a usage or model error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    add_model_arguments(parser)
    parser.add_argument("--odin", action="store_true", help="also compute ODIN (one backward pass per batch)")
    parser.add_argument(
        "--format", choices=("csv", "jsonl"),
        help="output format (default: jsonl for an --output ending in .jsonl/.json, else csv)",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write rows here (default: standard output)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="default 64")
    parser.add_argument("--max-bytes", type=_positive_int, metavar="N",
                        help="largest input in bytes (default: [imaging] max_bytes, 20 MiB)")
    parser.add_argument("--max-pixels", type=_positive_int, metavar="N",
                        help="largest image (default: [imaging] max_pixels, 40 megapixels)")
    parser.add_argument("--apply-exif-orientation", action="store_true",
                        help="turn pictures upright by their EXIF orientation first (default: [imaging] "
                        "apply_exif_orientation, off as torchvision decodes)")
    _add_config_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")
    parser.set_defaults(run=_lazy("monitor.offline:run_score"))


@subcommand
def _add_run(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="consume the image topics, score every image, store and flag (the service)",
        description="The streaming service: scoring worker processes consume [kafka] topics in a consumer group, "
        "score every image with the configured model, store score and reject rows, send dead letters and alerts, "
        "then commit offsets. All-in-one (the default, for the demo and small installs) it also serves the web "
        "app and runs the scheduled jobs, each in a process of its own; --role scoring runs the workers alone. "
        "Serves /healthz, /readyz and /metrics for all of them. Stops cleanly on SIGTERM or Ctrl-C "
        "(docs/daemon.md).",
    )
    _add_config_argument(parser)
    parser.add_argument("--role", choices=("all", "scoring"), default="all",
                        help="all: scoring workers, web app and scheduler (default); scoring: the workers only "
                        "(run `ood-monitor web` and `ood-monitor scheduler` beside them)")
    parser.add_argument("--workers", type=_non_negative_int, metavar="N",
                        help="scoring worker processes (default: [stream] workers; 0 picks from device and cores)")
    parser.set_defaults(run=_lazy("monitor.service.roles:run_command",
                                  checks={"model": True, "database": True, "kafka": True}))


@subcommand
def _add_produce(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "produce",
        help="send image files (folders recursively) to a Kafka topic",
        description="Sends every file as one message, key = the file name without extension. Brokers and "
        "client settings default to [kafka] of the configuration.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--topic", required=True, help="topic to send to")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", help="default: [kafka] bootstrap_servers")
    parser.add_argument("--key-from", choices=("name", "none"), default="name",
                        help="message key: the file name without extension (default) or none")
    parser.add_argument("--api-version", metavar="VERSION", help="broker protocol, e.g. 0.9 (default: [kafka] api_version)")
    _add_config_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_lazy("monitor.stream.produce:run_produce"))


@subcommand
def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="see the service work in a minute: local broker, demo model, live scores and flags",
        description="Starts a local Tansu broker, a fresh SQLite store under --data-dir and the bundled demo "
        "classifier, streams Fashion-MNIST images with bursts of out-of-distribution ones, and prints a line per "
        "scored batch with the flagged and rejected messages; the scheduled jobs (re-fit, rate alert, drift report) "
        "run on a short cadence, one line per run (MONITOR_JOBS__* variables change it). Ctrl-C stops everything "
        "it started. With "
        "--offline: scores the bundled sample images in this process and prints them sorted by 1C-Sum.",
    )
    parser.add_argument("--offline", action="store_true", help="score the samples in this process (no broker)")
    parser.add_argument("--odin", action="store_true", help="also compute ODIN")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when available)")
    parser.add_argument("--cache-dir", metavar="DIR", help="1C-Sum calibration cache")
    parser.add_argument("--calibration-samples", type=_positive_int, default=2048, metavar="N",
                        help="noise images calibrating 1C-Sum (default 2048)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--rate", type=float, default=20.0, metavar="N", help="images per second streamed (default 20)")
    parser.add_argument("--burst-every", type=float, default=8.0, metavar="S",
                        help="seconds between bursts of out-of-distribution images (default 8)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--port", type=int, default=None, help="web port (default 8080, else a free one)")
    parser.add_argument("--data-dir", default="var/demo", metavar="DIR",
                        help="where the demo's store and broker log go; emptied at start (default var/demo)")
    parser.set_defaults(run=_lazy("monitor.service.demo:run_demo"))


@subcommand
def _add_web(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "web",
        help="the web role: the operator pages and JSON API (all-in-one `ood-monitor run` serves them too)",
        description="The flagged queue, labelling, thresholds, reports and alerts over the configured store "
        "(docs/web.md), with /healthz, /readyz and /metrics. `ood-monitor web hash-password` prints a [web] "
        "accounts/tokens entry.",
    )
    _add_config_argument(parser)
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
    parser.set_defaults(run=_lazy("monitor.service.roles:web_command"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
