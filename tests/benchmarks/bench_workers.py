"""Worker processes end to end beside the Scorer alone, in one run: how much of the Scorer's rate
`ood-monitor run --workers N` keeps, per model, input size, image format and number of workers.

    python -m tests.benchmarks.bench_workers              # the full run (30 minutes on 2 busy cores)
    python -m tests.benchmarks.bench_workers --quick      # demo model, 128 messages, 1 round: a smoke run
    python -m tests.benchmarks.bench_workers --device cuda --device-decode on --out-dir "$OUT"

Subjects: the bundled demo model (1x28x28), and an untrained ResNet-18 (timing only) at 3x32x32
and 3x224x224; messages are Fashion-MNIST test images (or the bundled samples) encoded as PNG and
as JPEG at the model's input size; 1, 2 and N workers, N being what `[stream] workers = 0` starts
on this machine (monitor.service.supervisor.auto_workers).

For each subject and number of workers, a supervisor (`monitor.service.supervisor.Supervisor`,
the one `ood-monitor run` starts: scoring roles only, no web app, no scheduler) runs its workers on
a topic of its own (as many partitions as a multiple of every worker count, so each worker gets the
same share) and one SQLite file. When every worker holds its partitions and a warm-up burst is
stored, each round:

- baseline: the Scorer alone (`Scorer.score_batch` on the images already decoded, batch after
  batch) in this process, with torch's threads for the whole machine, while the workers wait idle:
  the rate the device gives one process that does nothing but score;
- end to end: the round's messages are produced (a partition each in turn) and the clock runs from
  the first `send` to the moment the database holds every one of them (the workers commit their
  offsets right after): messages/s, and that rate over the Scorer alone's, the figure the goals are
  stated in. Producing runs on the same machine and is counted in: a pessimistic figure.

The ratio reported is the median of the rounds, with their range: a shared machine changes speed
from one minute to the next. Figures are printed and saved as JSON, Markdown and PNG
(docs/benchmarks/workers{,-cuda}.{json,md,png} for a full run; a temporary folder for --quick
unless --out-dir is given), with the machine (CPU, cores, GPU and nvidia-smi's line for it, load
average before and after).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from tests.benchmarks.bench_pipeline import benchmark_images, create_topics, scorer_alone, start_broker

ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE = 64
ROUNDS = 3
FORMATS = ("png", "jpeg")
# name: (spec, input side or None for the demo's own, messages per round in the full run, description)
SUBJECTS: dict[str, tuple[str, int | None, int, str]] = {
    "demo": ("demo", None, 8192, "demo (Fashion-MNIST ResNet, 1x28x28)"),
    "resnet18-32": ("resnet18", 32, 4096, "ResNet-18, 3x32x32 (untrained weights)"),
    "resnet18-224": ("resnet18", 224, 512, "ResNet-18, 3x224x224 (untrained weights)"),
}
QUICK_MESSAGES = 128
GOALS = {"demo": 0.80, "resnet18-224": 0.90}  # end to end over Scorer alone, on the CPU
GPU_GOALS = {"resnet18-224": 0.80}


def machine(device: str) -> dict[str, Any]:
    """CPU, cores, torch threads, GPU (with nvidia-smi's line for it) and the load average now."""
    import torch

    from monitor.evaluation.machine import describe

    info = describe(torch.device(device))
    info["nvidia_smi"] = None
    if device.startswith("cuda"):
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info["nvidia_smi"] = f"unavailable: {error}"
    return info


def model_config(subject: str, device: str, workdir: Path) -> dict[str, Any]:
    """[model] settings of a subject (an untrained ResNet-18's weights are written once to `workdir`)."""
    spec, side, _, _ = SUBJECTS[subject]
    common = {"device": device, "cache_dir": str(workdir / "cache"), "calibration_samples": 256}
    if spec == "demo":
        return {"spec": "demo", **common}
    import torch
    import torchvision

    weights = workdir / "resnet18-random.pt"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    return {"spec": "resnet18", "weights": str(weights), "num_classes": 10, "input_shape": [3, side, side], **common}


def supervisor_settings(broker: Any, config: dict[str, Any], topic: str, suffix: str, workdir: Path,
                        batch_size: int, decode_threads: int | None, device_decode: str):
    from monitor.settings import settings_from_mapping

    stream = {"batch_size": batch_size, "max_batch_wait_ms": 50, "http": False}
    if decode_threads is not None:
        stream["decode_threads"] = decode_threads
    return settings_from_mapping({
        "model": config,
        "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"bench-{suffix}",
                  "api_version": broker.api_version, "session_timeout_ms": 6000,
                  "dead_letter_topic": f"bench-{suffix}.dead-letter", "alerts_topic": f"bench-{suffix}.alerts"},
        "stream": stream,
        "imaging": {"device_decode": device_decode},
        "store": {"url": f"sqlite:///{workdir / f'bench-{suffix}.db'}", "keep_image_share": 0.0},
        "jobs": {"enabled": False},
        "logging": {"level": "WARNING"},
    }, {})


class Workers:
    """A supervisor with `count` scoring workers, on a thread of this process, and a store to count
    what they stored."""

    def __init__(self, settings: Any, count: int, partitions: int):
        from monitor.service.supervisor import Supervisor

        self.settings, self.count, self.partitions = settings, count, partitions
        self.supervisor = Supervisor(settings, workers=count, scheduler=False, web=False,
                                     install_signal_handlers=False)
        self.thread = threading.Thread(target=self.supervisor.run, name="supervisor")
        self.store = None

    def start(self, timeout: float) -> "Workers":
        from monitor.service.database import open_store
        from tests.services import wait_until

        self.thread.start()
        wait_until(self._all_assigned, timeout, f"{self.count} workers holding all {self.partitions} partitions")
        self.store = open_store(self.settings, upgrade=False)
        return self

    def _all_assigned(self) -> bool:
        rows = [row for row in self.supervisor.probes.details()["workers"] if row["role"] == "scoring"]
        return (len(rows) == self.count and all(row["assigned_partitions"] > 0 for row in rows)
                and sum(row["assigned_partitions"] for row in rows) == self.partitions)

    def stored(self) -> int:
        return self.store.count_samples()

    def wait_stored(self, total: int, timeout: float, label: str) -> float:
        """Blocks until `total` samples are stored (a progress bar meanwhile); returns when it saw them."""
        deadline = time.monotonic() + timeout
        with tqdm(total=total, desc=label, unit="msg", leave=False) as bar:
            while True:
                count = self.stored()
                bar.update(count - bar.n)
                if count >= total:
                    return time.perf_counter()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{label}: {count} of {total} messages stored after {timeout:.0f} s "
                                       "(a rejected message is not counted: see the dead-letter topic)")
                time.sleep(0.01)  # spaces the polls; the stored count decides

    def stop(self) -> None:
        if self.store is not None:
            self.store.close()
        self.supervisor.request_stop()
        self.thread.join(120)


def produce(producer: Any, topic: str, values: Sequence[bytes], partitions: int, start: int) -> None:
    for index, value in enumerate(values):
        producer.send(topic, value=value, key=f"m{start + index}".encode(), partition=(start + index) % partitions)
    producer.flush()


def auto_count(device: str) -> int:
    from monitor.service.supervisor import auto_workers
    from monitor.settings import settings_from_mapping

    return auto_workers(settings_from_mapping({"model": {"device": device}}, {}))


def run_subject(subject: str, *, broker: Any, producer: Any, workdir: Path, device: str, device_decode: str,
                counts: Sequence[int], formats: Sequence[str], messages: int, rounds: int, batch_size: int,
                decode_threads: int | None) -> dict[str, Any]:
    from monitor.stream.daemon import Daemon

    spec, side, _, description = SUBJECTS[subject]
    config = model_config(subject, device, workdir)
    images = {fmt: benchmark_images(messages, side, fmt.upper()) for fmt in formats}
    partitions = math.lcm(*counts) * max(1, math.ceil(4 / math.lcm(*counts)))
    result: dict[str, Any] = {"subject": subject, "description": description, "messages": messages,
                              "partitions": partitions, "image_bytes": {fmt: statistics.mean(len(v) for v in values)
                                                                        for fmt, values in images.items()},
                              "runs": []}
    # The Scorer alone: this process, torch's own threads (the whole machine), the workers idle.
    baseline_settings = supervisor_settings(broker, config, "unused", "baseline", workdir, batch_size,
                                            decode_threads, device_decode)
    alone = Daemon(baseline_settings, install_signal_handlers=False)
    alone.load_model()
    shape = alone.classifier.preprocessing.input_shape
    result["model"], result["device"] = alone.classifier.name, str(alone.scorer.device)
    for count in counts:
        suffix = f"{subject}-{count}-{uuid.uuid4().hex[:6]}"
        topic = f"bench-workers-{suffix}"
        create_topics(broker, [topic], partitions)
        create_topics(broker, [f"bench-{suffix}.dead-letter", f"bench-{suffix}.alerts"], 1)
        settings = supervisor_settings(broker, config, topic, suffix, workdir, batch_size, decode_threads,
                                       device_decode)
        print(f"{description}: starting {count} worker{'s' if count > 1 else ''}", flush=True)
        workers = Workers(settings, count, partitions)
        try:
            workers.start(timeout=300)
            sent = 0
            warm = images[formats[0]][:batch_size * partitions]
            produce(producer, topic, warm, partitions, sent)
            sent += len(warm)
            workers.wait_stored(sent, 300, "warm-up")
            for index in range(rounds):
                base = scorer_alone(alone.scorer, shape, images[formats[0]], batch_size)
                for fmt in formats:
                    values = images[fmt]
                    started = time.perf_counter()
                    produce(producer, topic, values, partitions, sent)
                    produced = time.perf_counter()
                    sent += len(values)
                    done = workers.wait_stored(sent, max(300.0, 50 * len(values) * base["ms_per_image"] / 1000),
                                               f"{count} workers, {fmt}, round {index + 1}")
                    rate = len(values) / (done - started)
                    run = {"workers": count, "format": fmt, "round": index + 1, "messages": len(values),
                           "seconds": done - started, "produce_seconds": produced - started,
                           "messages_per_s": rate, "scorer_alone_images_per_s": base["images_per_s"],
                           "ratio": rate / base["images_per_s"]}
                    result["runs"].append(run)
                    print(f"  {count} worker{'s' if count > 1 else ' '} {fmt:4} round {index + 1}/{rounds}: "
                          f"{rate:8.0f} messages/s end to end, Scorer alone {base['images_per_s']:8.0f} images/s: "
                          f"{100 * run['ratio']:.0f} %", flush=True)
        finally:
            workers.stop()
    result["summary"] = summarise(result["runs"])
    return result


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workers, format): the median round (by ratio; the lower middle for an even count), the range."""
    rows = []
    for key in sorted({(run["workers"], run["format"]) for run in runs}):
        group = sorted((run for run in runs if (run["workers"], run["format"]) == key), key=lambda run: run["ratio"])
        median = group[(len(group) - 1) // 2]
        rows.append({"workers": key[0], "format": key[1], "rounds": len(group),
                     "ratio": median["ratio"], "ratio_range": [group[0]["ratio"], group[-1]["ratio"]],
                     "messages_per_s": median["messages_per_s"],
                     "messages_per_s_range": [min(run["messages_per_s"] for run in group),
                                              max(run["messages_per_s"] for run in group)],
                     "scorer_alone_images_per_s": median["scorer_alone_images_per_s"]})
    return rows


def goal_for(subject: str, device: str) -> float | None:
    return (GPU_GOALS if device.startswith("cuda") else GOALS).get(subject)


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    load_before = report["load_average_before"]
    lines = [
        "# Worker processes: end to end over the Scorer alone", "",
        f"Measured {info['date']} on {info['cpu']} ({info['cpu_cores']} cores"
        f"{', GPU ' + info['gpu'] if info.get('gpu') else ''}), device `{report['device']}`, torch {info['torch']}, "
        f"broker {report['broker']}, store SQLite (file), batches of {report['batch_size']}, "
        f"decode threads per worker: {report['decode_threads']}, device decode: {report['device_decode']}, "
        f"N (the default number of workers here) = {report['auto_workers']}, {report['rounds']} round"
        f"{'' if report['rounds'] == 1 else 's'}. Load average (1 / 5 / 15 min) {load_before[0]:.1f} / "
        f"{load_before[1]:.1f} / {load_before[2]:.1f} at the start, "
        f"{info['load_average_1_5_15_min'][0]:.1f} / {info['load_average_1_5_15_min'][1]:.1f} / "
        f"{info['load_average_1_5_15_min'][2]:.1f} at the end.",
    ]
    if info.get("nvidia_smi"):
        lines += ["", f"nvidia-smi: `{info['nvidia_smi']}`"]
    lines += [
        "", "Produced by `python -m tests.benchmarks.bench_workers` (method: the module docstring). Scorer alone: "
        "this process, torch's threads for the whole machine, the images already decoded. End to end: from the "
        "first message produced to the last one stored, through `ood-monitor run`'s supervisor and its worker "
        "processes. The ratio is the median round's, the range over all rounds.", "",
        "| model | format | workers | Scorer alone images/s | end to end messages/s (range) | end to end / "
        "Scorer alone (range) | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for subject in report["subjects"]:
        goal = goal_for(subject["subject"], report["device"])
        for row in subject["summary"]:
            low, high = row["messages_per_s_range"]
            rlow, rhigh = row["ratio_range"]
            verdict = "-" if goal is None else f"{'met' if row['ratio'] >= goal else 'not met'} (>= {goal:.0%})"
            lines.append(
                f"| {subject['description']} | {row['format'].upper()} | {row['workers']} | "
                f"{row['scorer_alone_images_per_s']:.0f} | {row['messages_per_s']:.0f} ({low:.0f} to {high:.0f}) | "
                f"{100 * row['ratio']:.0f} % ({100 * rlow:.0f} to {100 * rhigh:.0f}) | {verdict} |")
    lines += ["", "Every round:", "", "| model | workers | format | round | messages | seconds (producing) | "
              "messages/s | Scorer alone images/s | ratio |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for subject in report["subjects"]:
        for run in subject["runs"]:
            lines.append(f"| {subject['description']} | {run['workers']} | {run['format'].upper()} | {run['round']} | "
                         f"{run['messages']} | {run['seconds']:.2f} ({run['produce_seconds']:.2f}) | "
                         f"{run['messages_per_s']:.0f} | {run['scorer_alone_images_per_s']:.0f} | "
                         f"{100 * run['ratio']:.0f} % |")
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(subject, fmt) for subject in report["subjects"] for fmt in report["formats"]]
    counts = report["worker_counts"]
    width = 0.8 / len(counts)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.2))
    for position, count in enumerate(counts):
        ratios, lows, highs = [], [], []
        for subject, fmt in groups:
            row = next((row for row in subject["summary"] if row["workers"] == count and row["format"] == fmt), None)
            ratio = 100 * row["ratio"] if row else math.nan
            ratios.append(ratio)
            lows.append(ratio - 100 * row["ratio_range"][0] if row else 0)
            highs.append(100 * row["ratio_range"][1] - ratio if row else 0)
        xs = [index + (position - (len(counts) - 1) / 2) * width for index in range(len(groups))]
        axes.bar(xs, ratios, width, yerr=[lows, highs], capsize=3, label=f"{count} worker{'s' if count > 1 else ''}")
    for subject_index, (subject, _) in enumerate(groups):
        goal = goal_for(subject["subject"], report["device"])
        if goal is not None:
            axes.hlines(100 * goal, subject_index - 0.45, subject_index + 0.45, colors="black", linestyles="dashed")
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{subject['subject']}\n{fmt.upper()}" for subject, fmt in groups], fontsize=8)
    axes.set_ylabel("end to end / Scorer alone (%)")
    axes.set_title(f"Worker processes on {report['device']} ({report['machine']['cpu_cores']} cores); "
                   "dashed: goal", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"demo model only, {QUICK_MESSAGES} messages, 1 round, 1 and 2 workers: a smoke run")
    parser.add_argument("--subjects", help=f"comma-separated among {', '.join(SUBJECTS)} (default: all; --quick: demo)")
    parser.add_argument("--workers", help="comma-separated worker counts (default: 1, 2 and N)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: png, jpeg (default: both)")
    parser.add_argument("--messages", type=int, help="messages per round for every subject (default: per subject)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS}; --quick: 1)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--device-decode", choices=("auto", "on", "off"), default="auto",
                        help="[imaging] device_decode of the workers (default auto)")
    parser.add_argument("--decode-threads", type=int, help="[stream] decode_threads (default: the setting's default)")
    parser.add_argument("--broker", choices=("tansu", "kafka-0.9"), default="tansu")
    parser.add_argument("--out-dir", type=Path, help="where the JSON, Markdown and PNG go")
    args = parser.parse_args(argv)
    subjects = (args.subjects or ("demo" if args.quick else ",".join(SUBJECTS))).split(",")
    unknown = [name for name in subjects if name not in SUBJECTS]
    if unknown:
        parser.error(f"--subjects: unknown {', '.join(unknown)}; choose among {', '.join(SUBJECTS)}")
    formats = args.formats.split(",")
    if not formats or any(fmt not in FORMATS for fmt in formats):
        parser.error(f"--formats: choose among {', '.join(FORMATS)}")
    n = auto_count(args.device)
    try:
        counts = sorted({int(value) for value in args.workers.split(",")}) if args.workers else sorted({1, 2, n})
    except ValueError:
        parser.error("--workers: comma-separated whole numbers")
    if not counts or counts[0] < 1:
        parser.error("--workers: at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    load_before = list(os.getloadavg())
    report: dict[str, Any] = {"device": args.device, "device_decode": args.device_decode, "broker": args.broker,
                              "batch_size": args.batch_size, "rounds": rounds, "formats": formats,
                              "worker_counts": counts, "auto_workers": n, "load_average_before": load_before,
                              "subjects": []}
    from monitor.settings import settings_from_mapping

    report["decode_threads"] = (args.decode_threads if args.decode_threads is not None
                                else settings_from_mapping({}, {}).stream.decode_threads)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        workdir = Path(scratch)
        from kafka import KafkaProducer

        out_dir = args.out_dir or (workdir / "out" if args.quick else ROOT / "docs" / "benchmarks")
        broker = start_broker(args.broker, workdir)
        producer = None
        try:
            api = (0, 9) if broker.api_version == "0.9" else None
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=api, acks="all", linger_ms=5,
                                     max_request_size=4_000_000)
            for subject in subjects:
                messages = args.messages or (QUICK_MESSAGES if args.quick else SUBJECTS[subject][2])
                outcome = run_subject(subject, broker=broker, producer=producer, workdir=workdir, device=args.device,
                                      device_decode=args.device_decode, counts=counts, formats=formats,
                                      messages=messages, rounds=rounds, batch_size=args.batch_size,
                                      decode_threads=args.decode_threads)
                report["subjects"].append(outcome)
                report["device"] = outcome["device"]
                stem, text = save(report, out_dir)  # after each subject: a run cut short keeps what it measured
        finally:
            if producer is not None:
                producer.close()
            broker.stop()
        print(text)
        print(f"saved {stem}.json, {stem}.md and {stem}.png")
    return report


def save(report: dict[str, Any], out_dir: Path) -> tuple[Path, str]:
    report["machine"] = machine(report["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"workers{'-cuda' if report['device'].startswith('cuda') else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    plot(report, stem.with_suffix(".png"))
    return stem, text


if __name__ == "__main__":
    main()
