"""Server time of the operator pages over a loaded PostgreSQL store.

    python -m tests.benchmarks.bench_web            # 10^5 scored samples, 10^4 flagged (with images)
    python -m tests.benchmarks.bench_web --quick    # 5,000 scored, 500 flagged

A fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards) is migrated and filled in
bulk with COPY: the samples spread over the last 24 hours, every flagged one with its PNG,
2 % of the flagged labelled, two fitted thresholds. The app then answers in-process (no
network) with a logged-in session, and each page is timed over several requests (median and
95th percentile, after one warm-up):

- the flagged queue (default: newest first; by score; only unlabelled; a deep page);
- the overview (24 h and 7 d windows);
- the sample page and the thresholds page, for reference;

beside two baselines measured in the same run: `/api/me` (an authenticated request that
reads nothing: the framework's own cost) and `Store.flagged_queue` called directly (the
query behind the queue page, for the same first page: no HTTP, no templates).

Figures are printed and saved as JSON and Markdown (docs/benchmarks/web.{json,md} for a full
run; a temporary folder for --quick unless --out-dir is given). The goal: queue and overview
under 300 ms each.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
FULL = (100_000, 10_000)
QUICK = (5_000, 500)
GOAL_MS = 300.0
LABELLED_SHARE = 0.02
SEED = 0


def _png_pool(count: int = 64) -> list[bytes]:
    """A few distinct small PNGs; flagged samples reuse them (the bytes, not the rows, repeat)."""
    from tests.web_data import png_bytes

    return [png_bytes(seed) for seed in range(count)]


def seed_bulk(store, samples: int, flagged: int, progress: bool) -> dict[str, Any]:
    """COPY `samples` rows (every samples/flagged-th flagged, with its image) into a migrated PostgreSQL store."""
    from monitor.names import COLUMNS, INDICATORS
    from monitor.store import ThresholdRecord
    from monitor.store.payloads import ThresholdCounts, ThresholdParameters
    from tests.store_data import register_model

    now = datetime.now(timezone.utc)
    model = register_model(store, "fashion-cnn", "sha256:bench-web")
    store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="proportion", value=3.5,
                                        parameters=ThresholdParameters(p=0.1), counts=ThresholdCounts(n=samples)))
    active = store.add_threshold(ThresholdRecord(
        model_id=model.id, indicator="1C-Sum", method="two-means", value=2.5,
        counts=ThresholdCounts(n=samples, n_labelled_ood=100, n_labelled_id=100)))
    rng = np.random.default_rng(SEED)
    every = max(1, samples // flagged)
    pngs = _png_pool()
    columns = ["model_id", "source_topic", "source_partition", "source_offset", "sample_key", "produced_at",
               "received_at", "scored_at", "predicted_class", *[COLUMNS[name] for name in INDICATORS],
               "score", "score_indicator", "flagged", "threshold_id"]
    chunk = 10_000
    started = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        bar = tqdm(total=samples, desc="seed samples (COPY)", unit="row", disable=not progress)
        for start in range(0, samples, chunk):
            size = min(chunk, samples - start)
            index = np.arange(start, start + size)
            is_flagged = index % every == 0
            base = rng.normal(0.0, 1.0, size) + np.where(is_flagged, 5.0, 0.0)
            values = base[:, None] + np.arange(len(INDICATORS))[None, :] * 0.1 + rng.normal(0, 0.2, (size, len(INDICATORS)))
            at = [now - timedelta(seconds=float(s)) for s in (86_000 * (1 - index / samples))]
            with cursor.copy(f"COPY samples ({', '.join(columns)}) FROM STDIN") as copy:
                for row in range(size):
                    when = at[row]
                    copy.write_row((
                        model.id, "images", int(index[row] % 8), int(index[row]), f"img-{index[row]:07d}",
                        when - timedelta(milliseconds=80), when - timedelta(milliseconds=30), when,
                        int(index[row] % 10), *values[row].tolist(), float(values[row, -1]), "1C-Sum",
                        bool(is_flagged[row]), active.id if is_flagged[row] else None,
                    ))
            raw.commit()
            bar.update(size)
        bar.close()
        cursor.execute("SELECT id FROM samples WHERE flagged ORDER BY id")
        flagged_ids = [row[0] for row in cursor.fetchall()]
        bar = tqdm(total=len(flagged_ids), desc="seed images (COPY)", unit="img", disable=not progress)
        for start in range(0, len(flagged_ids), chunk):
            with cursor.copy("COPY sample_images (sample_id, content_type, data, width, height, stored_at) FROM STDIN") as copy:
                for sample_id in flagged_ids[start:start + chunk]:
                    copy.write_row((sample_id, "image/png", pngs[sample_id % len(pngs)], 28, 28, now))
            raw.commit()
            bar.update(len(flagged_ids[start:start + chunk]))
        bar.close()
        labelled = flagged_ids[:: max(1, int(1 / LABELLED_SHARE))]
        with cursor.copy("COPY labels (sample_id, label, labelled_by, labelled_at) FROM STDIN") as copy:
            for position, sample_id in enumerate(labelled):
                copy.write_row((sample_id, "OOD" if position % 2 else "ID", "bench", now))
        raw.commit()
    finally:
        raw.close()
    # Autovacuum does this on a live database; right after a bulk load it has not run yet.
    raw = store.engine.raw_connection()
    try:
        raw.driver_connection.autocommit = True
        raw.cursor().execute("VACUUM ANALYZE")
    finally:
        raw.close()
    return {"model_id": model.id, "flagged_ids": flagged_ids, "labelled": len(labelled),
            "seed_s": time.perf_counter() - started}


def time_calls(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    call()  # warm-up: connection pool, template compilation, PostgreSQL plan caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
            "min_ms": times[0], "repeats": repeats}


def run(samples: int, flagged: int, repeats: int, progress: bool) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from monitor.store import QueueQuery, Store, connect, upgrade
    from monitor.web import create_app
    from tests.services import postgres_database
    from tests.web_data import PASSWORDS, web_settings

    with ExitStack() as cleanup:
        url = cleanup.enter_context(postgres_database("benchweb"))
        engine = connect(url)
        cleanup.callback(engine.dispose)
        upgrade(engine)
        store = Store(engine)
        seeded = seed_bulk(store, samples, flagged, progress)
        client = cleanup.enter_context(TestClient(create_app(web_settings(), store)))
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        client.post("/login", data={"username": "lena", "password": PASSWORDS["lena"][1], "csrf_token": token})
        sample_id = seeded["flagged_ids"][len(seeded["flagged_ids"]) // 2]
        deep_page = max(1, (len(seeded["flagged_ids"]) // 48) // 2)

        def page(path: str) -> Callable[[], Any]:
            def call():
                answer = client.get(path)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {answer.status_code}: {answer.text[:200]}")
            return call

        cases = {
            "queue (newest first)": page("/queue"),
            "queue (by score)": page("/queue?sort=score_desc"),
            "queue (unlabelled only)": page("/queue?labelled=no"),
            f"queue (page {deep_page})": page(f"/queue?page={deep_page}"),
            "overview (24 h)": page("/"),
            "overview (7 d)": page("/?window_hours=168"),
            "sample page": page(f"/samples/{sample_id}"),
            "thresholds page": page("/thresholds"),
            "baseline: /api/me (no database)": page("/api/me"),
            "baseline: Store.flagged_queue (no HTTP)": lambda: store.flagged_queue(seeded["model_id"],
                                                                                    QueueQuery(per_page=48)),
        }
        results = {}
        for name, call in tqdm(cases.items(), desc="time pages", unit="page", disable=not progress):
            results[name] = time_calls(call, repeats)
    goals = {name: results[name]["median_ms"] < GOAL_MS for name in results if name.startswith(("queue", "overview"))}
    return {
        "what": "server time of the operator pages (in-process ASGI, logged-in session) over PostgreSQL",
        "samples": samples, "flagged": flagged, "labelled": seeded["labelled"], "seed_s": round(seeded["seed_s"], 2),
        "goal_ms": GOAL_MS, "goal_met": all(goals.values()),
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": {name: {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
                    for name, figures in results.items()},
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Web pages: server time",
        "",
        f"{report['samples']:,} scored samples over the last 24 hours, {report['flagged']:,} flagged with their "
        f"images, {report['labelled']:,} labelled, in PostgreSQL (seeded with COPY in {report['seed_s']} s). "
        f"Each page is requested in-process by a logged-in session; {next(iter(report['results'].values()))['repeats']} "
        f"timed requests after a warm-up, on {report['machine']['cpus']} CPU cores "
        f"({report['date']}). Goal: queue and overview under {report['goal_ms']:.0f} ms "
        f"({'met' if report['goal_met'] else 'NOT met'}).",
        "",
        "| request | median ms | p95 ms | min ms |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in report["results"].items():
        lines.append(f"| {name} | {figures['median_ms']:.1f} | {figures['p95_ms']:.1f} | {figures['min_ms']:.1f} |")
    lines += ["", "Regenerate with `python -m tests.benchmarks.bench_web` (see the module docstring).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]:,} samples, {QUICK[1]:,} flagged")
    parser.add_argument("--samples", type=int, help="scored samples (default 100,000)")
    parser.add_argument("--flagged", type=int, help="flagged samples among them (default 10,000)")
    parser.add_argument("--repeats", type=int, default=15, help="timed requests per page (default 15)")
    parser.add_argument("--out-dir", type=Path, help="where web.json and web.md go")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    samples, flagged = QUICK if args.quick else FULL
    samples, flagged = args.samples or samples, args.flagged or flagged
    if not 0 < flagged <= samples:
        parser.error(f"--flagged must be between 1 and --samples ({samples}), got {flagged}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    full_run = not args.quick and args.samples is None and args.flagged is None
    out_dir = args.out_dir or (ROOT / "docs/benchmarks" if full_run else Path(tempfile.mkdtemp(prefix="bench-web-")))
    report = run(samples, flagged, args.repeats, progress=not args.no_progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "web.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (out_dir / "web.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"saved {out_dir / 'web.json'} and {out_dir / 'web.md'}")
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
