"""Store speed on both backends: the stream's batch writes and the refit window read.

    python -m tests.benchmarks.bench_store            # 10^6 rows per backend (capped in time)
    python -m tests.benchmarks.bench_store --quick    # 20,000 rows per backend

For each backend (a fresh SQLite file; a fresh PostgreSQL database on 127.0.0.1:5432,
dropped afterwards) it measures, in the same run:

- insert throughput of ``Store.write`` (batches of 256 scored samples with all 20
  indicator columns, 5 % flagged, one transaction per batch, replays skipped and the new
  ids returned: on PostgreSQL a COPY into a staging table and one INSERT ... SELECT, on
  SQLite the driver's executemany), beside a baseline: the driver's own ``executemany``
  of a plain INSERT of the same rows, no idempotence, no ids back; on PostgreSQL also the
  write path COPY replaced (a pipelined executemany of INSERT ... ON CONFLICT ... RETURNING);
  one batch of each comparison after every tenth Store.write batch, so all meet the same
  table size and machine load;
- the floor every batch pays whatever the insert: the commit of a one-row transaction
  (the write-ahead log flushed to disk), and the rows/s ceiling it sets at 256 rows per
  transaction;
- the refit window read, ``Store.window_scores(model, "1C-Sum", last=N)`` over every
  stored row (values + current labels as numpy arrays, with 1,000 labelled samples),
  beside a baseline: the driver fetching the same two columns (id, value) with the same
  ORDER BY and LIMIT into a numpy array.

Figures are printed and saved as JSON and Markdown (docs/benchmarks/store.{json,md} for
a full run, a temporary folder for --quick unless --out-dir is given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from monitor.evaluation.machine import cpu_model

ROOT = Path(__file__).resolve().parents[2]
FULL_ROWS = 1_000_000
QUICK_ROWS = 20_000
BATCH_SIZE = 256
BASELINE_SHARE = 0.1  # the baseline insert writes this share of the rows
LABELLED = 1_000
FLAGGED_SHARE = 0.05
READ_REPEATS = 3
COMMIT_SAMPLES = 50
SEED = 0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_batch(model_id: int, threshold_id: int, start: int, size: int, rng: np.random.Generator, topic: str):
    from monitor.names import INDICATORS
    from monitor.store import ScoredSample

    values = rng.normal(size=(size, len(INDICATORS)))
    flagged = rng.random(size) < FLAGGED_SHARE
    classes = rng.integers(0, 10, size)
    samples = []
    for row in range(size):
        offset = start + row
        at = T0 + timedelta(milliseconds=10 * offset)
        scores = dict(zip(INDICATORS, values[row].tolist()))
        samples.append(ScoredSample(
            topic=topic, partition=0, offset=offset, sample_key=f"{topic}-{offset}", model_id=model_id,
            received_at=at, scored_at=at, produced_at=at, predicted_class=int(classes[row]), scores=scores,
            flagged=bool(flagged[row]), score=scores["1C-Sum"], score_indicator="1C-Sum",
            threshold_id=threshold_id if flagged[row] else None,
        ))
    return samples


class _Timed:
    """Rows and seconds of one insert method."""

    def __init__(self) -> None:
        self.rows = self.written = 0
        self.seconds = 0.0

    def figures(self) -> dict:
        return {"rows": self.rows, "seconds": self.seconds,
                "rows_per_s": self.rows / self.seconds if self.seconds else 0.0}


def _baseline_batch(store, raw, batch, backend: str) -> int:
    """The driver's executemany of a plain INSERT (no ON CONFLICT, no RETURNING), to the commit."""
    from monitor.store.bulk import SAMPLE_COLUMNS

    marker = "?" if backend == "sqlite" else "%s"
    params = []
    for sample in batch:
        row = store._sample_row(sample)
        if backend == "sqlite":  # the text form SQLAlchemy stores, so both paths write the same bytes
            for key in ("produced_at", "received_at", "scored_at"):
                row[key] = row[key].astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ")
        params.append(tuple(row[name] for name in SAMPLE_COLUMNS))
    cursor = raw.cursor()
    if backend == "sqlite":
        cursor.execute("BEGIN")
    cursor.executemany(f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) "
                       f"VALUES ({', '.join([marker] * len(SAMPLE_COLUMNS))})", params)
    raw.commit()
    cursor.close()
    return len(batch)


def _previous_batch(store, raw, batch, backend: str) -> int:
    """PostgreSQL's write path before COPY: psycopg's pipelined executemany of INSERT ... ON CONFLICT
    DO NOTHING RETURNING, one statement per row, to the commit."""
    from monitor.store.bulk import SAMPLE_COLUMNS, SOURCE_KEY
    from monitor.store.store import _aware_utc

    params = []
    for sample in batch:
        row = store._sample_row(sample)
        for key in ("produced_at", "received_at", "scored_at"):
            row[key] = _aware_utc(row[key])
        params.append(tuple(row[name] for name in SAMPLE_COLUMNS))
    cursor = raw.cursor()
    cursor.executemany(f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) "
                       f"VALUES ({', '.join(['%s'] * len(SAMPLE_COLUMNS))}) "
                       f"ON CONFLICT ({SOURCE_KEY}) DO NOTHING RETURNING id, {SOURCE_KEY}", params, returning=True)
    inserted = 0
    while True:
        inserted += len(cursor.fetchall())
        if not cursor.nextset():
            break
    raw.commit()
    cursor.close()
    return inserted


def _server_only_batch(store, raw, batch) -> tuple[int, float]:
    """PostgreSQL only: the server's part of inserting a batch into `samples`, whatever the client sends:
    the rows are first copied into the staging table (not timed), then one plain INSERT ... SELECT moves
    them (heap, every index, foreign-key checks, the log) and commits: timed. Returns (rows, seconds)."""
    from monitor.store.bulk import _COPY, _COPY_TYPES, _CREATE_STAGING, _STAGING, SAMPLE_COLUMNS
    from monitor.store.store import _aware_utc

    cursor = raw.cursor()
    cursor.execute(_CREATE_STAGING)
    with cursor.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for ordinal, sample in enumerate(batch):
            row = store._sample_row(sample)
            for key in ("produced_at", "received_at", "scored_at"):
                row[key] = _aware_utc(row[key])
            copy.write_row((ordinal, *(row[name] for name in SAMPLE_COLUMNS)))
    start = time.perf_counter()
    cursor.execute(f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) SELECT {', '.join(SAMPLE_COLUMNS)} "
                   f"FROM {_STAGING}")
    raw.commit()
    seconds = time.perf_counter() - start
    cursor.close()
    return len(batch), seconds


def insert_interleaved(store, model_id: int, other_model_id: int, threshold_id: int, rows: int, max_seconds: float,
                       backend: str) -> dict[str, dict | None]:
    """Store.write on `rows` rows; every tenth batch also through the baseline (and on PostgreSQL the
    previous write path), interleaved so that every method meets the same table size and machine load."""
    methods = {"insert": _Timed(), "insert_baseline": _Timed()}
    if backend == "postgresql":
        methods["insert_previous"] = _Timed()
        methods["insert_server_only"] = _Timed()
    rngs = {name: np.random.default_rng(SEED + n) for n, name in enumerate(methods)}
    every = max(1, round(1 / BASELINE_SHARE))
    raw = store.engine.raw_connection()
    deadline = time.monotonic() + max_seconds
    batches = 0
    try:
        with tqdm(total=rows, desc=f"{backend}: Store.write (+ baseline every {every}th batch)", unit="row",
                  unit_scale=True, file=sys.stdout) as bar:
            mine = methods["insert"]
            while mine.written < rows and (mine.written == 0 or time.monotonic() < deadline):
                size = min(BATCH_SIZE, rows - mine.written)
                for name, timed in methods.items():
                    if name != "insert" and batches % every:
                        continue
                    topic, target = ("bench", model_id) if name == "insert" else (name, other_model_id)
                    batch = make_batch(target, threshold_id, timed.written, size, rngs[name], topic)
                    start = time.perf_counter()  # from the same records Store.write gets, to the commit
                    if name == "insert":
                        inserted = store.write(batch).samples_inserted
                    elif name == "insert_baseline":
                        inserted = _baseline_batch(store, raw, batch, backend)
                    elif name == "insert_previous":
                        inserted = _previous_batch(store, raw, batch, backend)
                    else:
                        inserted, server_seconds = _server_only_batch(store, raw, batch)
                        start = time.perf_counter() - server_seconds
                    timed.seconds += time.perf_counter() - start
                    timed.rows += inserted
                    timed.written += len(batch)
                batches += 1
                bar.update(size)
    finally:
        raw.close()
    figures: dict[str, dict | None] = {name: timed.figures() for name, timed in methods.items()}
    figures["insert"]["capped"] = methods["insert"].written < rows
    figures.setdefault("insert_previous", None)
    figures.setdefault("insert_server_only", None)
    return figures


def commit_floor(store, model_id: int, threshold_id: int, backend: str, transactions: int = COMMIT_SAMPLES) -> dict:
    """The commit of a one-row transaction: the part of each batch no insert method can save."""
    store.write(make_batch(model_id, threshold_id, 0, transactions, np.random.default_rng(SEED + 2), "floor"))
    timings = []
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        marker = "?" if backend == "sqlite" else "%s"
        for offset in tqdm(range(transactions), desc=f"{backend}: one-row commits", file=sys.stdout):
            if backend == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(f"UPDATE samples SET predicted_class = predicted_class + 1 WHERE source_topic = {marker} "
                           f"AND source_offset = {marker}", ("floor", offset))
            start = time.perf_counter()
            raw.commit()
            timings.append(time.perf_counter() - start)
        cursor.close()
    finally:
        raw.close()
    median = float(np.median(timings))
    return {"transactions": transactions, "commit_ms_median": median * 1e3,
            "ceiling_rows_per_s": BATCH_SIZE / median if median else 0.0}


def top_up(store, model_id: int, target: int, backend: str) -> int:
    """Copy stored rows inside the database until the model has `target` rows (for the read test)."""
    from sqlalchemy import func, insert, literal, select

    from monitor.store.models import Sample

    columns = [column for column in Sample.__table__.c if column.name != "id"]
    copies = 0
    with tqdm(total=target, desc=f"{backend}: top up to {target:,} rows", unit="row", unit_scale=True,
              file=sys.stdout) as bar:
        while True:
            with store.engine.begin() as connection:
                count = connection.execute(select(func.count()).where(Sample.model_id == model_id)).scalar_one()
                bar.update(count - bar.n)
                if count >= target:
                    return copies
                copies += 1
                source = select(*[
                    literal(f"fill-{copies}").label("source_topic") if column.name == "source_topic" else column
                    for column in columns
                ]).where(Sample.model_id == model_id, Sample.source_topic == "bench").limit(target - count)
                added = connection.execute(insert(Sample).from_select([column.name for column in columns], source))
                if not added.rowcount:
                    raise RuntimeError("top up: no rows to copy (the timed insert stored none)")


def add_labels(store, model_id: int, count: int) -> None:
    from sqlalchemy import insert, select

    from monitor.store.models import Label, Sample

    with store.engine.begin() as connection:
        ids = connection.execute(
            select(Sample.id).where(Sample.model_id == model_id).order_by(Sample.id).limit(count * 7)
        ).scalars().all()
        rows = [{"sample_id": sample_id, "label": "OOD" if n % 3 == 0 else "ID", "labelled_by": "bench",
                 "labelled_at": T0, "note": None} for n, sample_id in enumerate(ids[::7][:count])]
        if rows:
            connection.execute(insert(Label), rows)


def read_window(store, model_id: int, rows: int, backend: str) -> dict:
    from sqlalchemy import select

    from monitor.store.models import Sample

    timings, baseline = [], []
    statement = (
        select(Sample.id, Sample.one_c_sum).where(Sample.model_id == model_id, Sample.one_c_sum.is_not(None))
        .order_by(Sample.scored_at.desc(), Sample.id.desc()).limit(rows)
    )
    compiled = statement.compile(store.engine, compile_kwargs={"literal_binds": True})
    found = 0
    for _ in tqdm(range(READ_REPEATS), desc=f"{backend}: window read x{READ_REPEATS}", file=sys.stdout):
        start = time.perf_counter()
        window = store.window_scores(model_id, "1C-Sum", last=rows)
        timings.append(time.perf_counter() - start)
        found = len(window)
        labelled = int((window.labels >= 0).sum())
        raw = store.engine.raw_connection()
        try:
            start = time.perf_counter()
            cursor = raw.cursor()
            cursor.execute(str(compiled))
            values = np.array(cursor.fetchall(), dtype=np.float64).reshape(-1, 2)
            baseline.append(time.perf_counter() - start)
            cursor.close()
        finally:
            raw.close()
        assert values.shape[0] == found
    return {"rows": found, "labelled": labelled, "seconds_best": min(timings), "seconds_median": float(np.median(timings)),
            "baseline_seconds_best": min(baseline), "rows_per_s": found / min(timings)}


def bench_backend(backend: str, rows: int, max_insert_seconds: float, scratch: Path) -> dict:
    from monitor.store import Store, ThresholdRecord, connect, upgrade
    from tests.store_data import register_model

    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{scratch / 'bench.db'}"
        else:
            from tests.services import postgres_database

            url = stack.enter_context(postgres_database("bench"))
        engine = connect(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        store = Store(engine)
        model = register_model(store, "bench", "sha256:bench")
        baseline_model = register_model(store, "baseline", "sha256:baseline")
        threshold = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=2.0))
        inserts = insert_interleaved(store, model.id, baseline_model.id, threshold.id, rows, max_insert_seconds, backend)
        insert, baseline, previous = inserts["insert"], inserts["insert_baseline"], inserts["insert_previous"]
        floor = commit_floor(store, baseline_model.id, threshold.id, backend)
        top_up(store, model.id, rows, backend)
        add_labels(store, model.id, LABELLED)
        read = read_window(store, model.id, rows, backend)
        with engine.connect() as connection:
            version = connection.exec_driver_sql(
                "select sqlite_version()" if backend == "sqlite" else "show server_version").scalar()
        return {"server": f"{backend} {version}", "insert": insert, "insert_baseline": baseline, "insert_previous": previous,
                "insert_server_only": inserts["insert_server_only"],
                "insert_speedup": insert["rows_per_s"] / baseline["rows_per_s"] if baseline["rows_per_s"] else 0.0,
                "commit_floor": floor, "window_read": read}


def machine_info() -> dict[str, Any]:
    import sqlalchemy

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_shared": True, "load_average_1min": os.getloadavg()[0],
            "python": platform.python_version(), "sqlalchemy": sqlalchemy.__version__}


def to_markdown(report: dict) -> str:
    lines = [
        "# Store benchmark",
        "",
        f"Run {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores, shared), "
        f"{'quick' if report['quick'] else 'full'} run, `python -m tests.benchmarks.bench_store"
        f"{' --quick' if report['quick'] else ''}`; load average {report['machine']['load_average_1min']:.1f} at the start "
        f"and {report['load_average_end']:.1f} at the end.",
        f"Batches of {report['batch_size']} rows with all 20 indicator columns, one transaction each.",
        "",
        "| backend | Store.write rows/s | driver executemany rows/s (baseline) | Store.write / baseline | "
        "previous write path rows/s | server-only ceiling rows/s (/ baseline) | one-row commit ms | "
        "commit-only ceiling rows/s | rows stored | window read (last N) s | driver fetch s (baseline) | window rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for figures in report["backends"].values():
        insert, base, read = figures["insert"], figures["insert_baseline"], figures["window_read"]
        floor, previous = figures["commit_floor"], figures.get("insert_previous")
        previous_cell = f"{previous['rows_per_s']:,.0f}" if previous else "same as Store.write"
        server = figures.get("insert_server_only")
        server_cell = (f"{server['rows_per_s']:,.0f} ({server['rows_per_s'] / base['rows_per_s']:.1f}x)"
                       if server and base["rows_per_s"] else "-")
        lines.append(
            f"| {figures['server']} | {insert['rows_per_s']:,.0f} | {base['rows_per_s']:,.0f} | "
            f"{figures['insert_speedup']:.2f}x | {previous_cell} | {server_cell} | "
            f"{floor['commit_ms_median']:.1f} | {floor['ceiling_rows_per_s']:,.0f} | "
            f"{insert['rows']:,}"
            f"{' (time cap)' if insert['capped'] else ''} | {read['seconds_best']:.2f} | "
            f"{read['baseline_seconds_best']:.2f} | {read['rows']:,} |"
        )
    lines += [
        "",
        "All insert paths are timed from the same ScoredSample records to the commit, interleaved: every",
        f"{round(1 / BASELINE_SHARE)}th Store.write batch is followed by one batch of the baseline (and of the previous path),",
        "so each meets the same table size and machine load. When the insert",
        "reaches its time cap (`--max-insert-seconds`), the table is topped up to the requested row count",
        "by an in-database copy, so the window read always covers that many rows.",
        "Store.write does more than the baseline: ON CONFLICT DO NOTHING on the source position (replays),",
        "RETURNING the new ids (to attach images), record validation and NaN -> NULL. On PostgreSQL it",
        "sends each batch as one binary COPY into a staging table and one INSERT ... SELECT; on SQLite",
        "it uses the driver's executemany. The previous write path (PostgreSQL only) is the one COPY replaced:",
        "psycopg's pipelined executemany of INSERT ... ON CONFLICT DO NOTHING RETURNING, one statement per row.",
        "The server-only ceiling (PostgreSQL) times only what the server does to insert a batch, whatever the",
        "client: the rows already sit in the staging table, and one plain INSERT ... SELECT (no ON CONFLICT, no",
        "RETURNING) moves them into `samples` (heap, every index, the foreign-key checks, the log) and commits.",
        "No insert method into this table can beat it; divided by the baseline it is the most any",
        "method could gain over the driver's executemany here.",
        "The one-row commit is the median time to commit a transaction",
        f"that changed one row ({COMMIT_SAMPLES} of them: the log flushed to disk); the ceiling is "
        f"{report['batch_size']} rows divided by it,",
        "the most any insert method could reach at one transaction per batch on this disk. The window read",
        f"returns values and the current labels ({LABELLED:,} labelled samples) as numpy arrays; the baseline",
        "fetches the same (id, value) rows into one array. Best of "
        f"{READ_REPEATS} reads. The machine's 2 cores are shared with other work: figures from different runs",
        "differ by up to several times, so compare each figure with its baseline from the same run.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows per backend instead of {FULL_ROWS:,}")
    parser.add_argument("--rows", type=int, help="rows per backend (overrides --quick)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--max-insert-seconds", type=float, default=150.0,
                        help="stop inserting after this long per backend (the read then uses what is stored)")
    parser.add_argument("--out-dir", type=Path, help="where store.json and store.md go")
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    if rows < 1:
        parser.error(f"--rows must be >= 1, got {rows}")
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))}; use sqlite and/or postgresql")
    quick = args.quick or args.rows is not None
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench-store-")) if quick else ROOT / "docs/benchmarks")
    report: dict[str, Any] = {
        "benchmark": "store", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick,
        "rows_requested": rows, "batch_size": BATCH_SIZE, "machine": machine_info(), "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-store-db-") as scratch:
        for backend in backends:
            report["backends"][backend] = bench_backend(backend, rows, args.max_insert_seconds, Path(scratch))
    report["load_average_end"] = os.getloadavg()[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "store.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (out_dir / "store.md").write_text(markdown)
    print(markdown)
    print(f"saved {out_dir / 'store.json'} and {out_dir / 'store.md'}")
    return report


if __name__ == "__main__":
    main()
