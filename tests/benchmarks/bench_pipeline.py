"""What the streaming pipeline adds to the Scorer: throughput and produce-to-stored latency.

    python -m tests.benchmarks.bench_pipeline                # demo model (3,000 messages), then ResNet-18
    python -m tests.benchmarks.bench_pipeline --quick        # demo model, 256 messages, one round (a smoke run)
    python -m tests.benchmarks.bench_pipeline --broker kafka-0.9 --rounds 5

In one run, on the same model, device and batches (the bundled demo classifier; Fashion-MNIST test
images encoded as PNG, or the bundled samples when Debian's dataset package is absent), in rounds:

- each round produces the messages to a topic of its own, then starts a daemon on it (a new group);
- baseline: the Scorer alone (`Scorer.score_batch`) on the images already decoded, batch after batch,
  measured just before the daemon consumes and again just after; the faster of the two counts;
- end to end: the daemon consumes them (decode threads, batching, scoring, one SQLite transaction per
  batch, commit): messages/s from the first message taken to the last row stored and its offset
  committed; the time per image beside the Scorer's; and the CPU time the daemon's process (and the
  broker's, when it runs on this machine) spent per message, which a busy neighbour disturbs less
  than the wall clock;
- the overhead reported is the median of the rounds' overheads, with their range: shared machines
  (cloud VMs) change speed from one minute to the next, and one round can be off by tens of percent;
- latency, after the last round: a producer sends at a quarter of the measured throughput;
  produce-to-stored latency of each message (wall clock from just before `send` to the batch's
  commit), p50 / p99.

Figures are printed and saved as JSON and Markdown (docs/benchmarks/pipeline.{json,md} for a full run,
a temporary folder for --quick unless --out-dir is given).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
FULL_MESSAGES = 3000
QUICK_MESSAGES = 256
BATCH_SIZE = 64
ROUNDS = 3
LATENCY_SECONDS = 20.0
LATENCY_LOAD = 0.25  # the latency run sends at this share of the measured throughput
QUICK_LATENCY_SECONDS = 4.0


def benchmark_images(count: int, side: int | None = None, fmt: str = "PNG") -> list[bytes]:
    """PNG (or `fmt`: JPEG...) bytes of Fashion-MNIST test images (the bundled samples, repeated,
    without the dataset); with `side`, resized to side x side RGB (what an ImageNet-sized model takes)."""
    from PIL import Image

    from monitor import fashion_mnist
    from monitor.classifiers import ASSETS_DIR

    if fashion_mnist.available():
        pictures = [Image.fromarray(array) for array in fashion_mnist.load("test")[0][:count]]
    else:
        paths = sorted((ASSETS_DIR / "samples").glob("id-*.png"))
        pictures = [Image.open(path).convert("L") for path in paths]
    out = []
    for index in range(count):
        picture = pictures[index % len(pictures)]
        if side:
            picture = picture.convert("RGB").resize((side, side), Image.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


def model_settings(model: str, device: str, workdir: Path) -> tuple[dict[str, Any], int | None]:
    """[model] settings and the image side for a benchmark model: the demo, or an untrained ResNet-18
    (the timing of a realistic ImageNet-sized model; its weights are random, its scores meaningless)."""
    common = {"device": device, "cache_dir": str(workdir / "cache"), "calibration_samples": 256}
    if model == "demo":
        return {"spec": "demo", **common}, None
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = workdir / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    return {"spec": "resnet18", "weights": str(weights), "num_classes": 10, **common}, 224


def scorer_alone(scorer: Any, input_shape, images: Sequence[bytes], batch_size: int) -> dict[str, float]:
    """Seconds per image of Scorer.score_batch on pre-decoded batches (after one warm-up batch).

    It runs on a worker thread, as the pipeline does here: on a busy CPU, torch's thread pool behaves
    very differently on the main thread and on others, and the comparison must not depend on that.
    """
    import torch

    from monitor.imaging import decode_image, stack_images

    pixels = [decode_image(value, input_shape) for value in images]
    batches = [stack_images(pixels[start:start + batch_size]) for start in range(0, len(pixels), batch_size)]
    result: dict[str, float] = {}

    def measure() -> None:
        scorer.score_batch(batches[0].to(scorer.device))
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch in tqdm(batches, desc="Scorer alone", unit="batch"):
            scorer.score_batch(batch.to(scorer.device))
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        result.update({"images": len(pixels), "seconds": seconds, "images_per_s": len(pixels) / seconds,
                       "ms_per_image": 1000 * seconds / len(pixels),
                       # the whole process's CPU time: torch's threads included
                       "cpu_ms_per_image": 1000 * cpu_seconds / len(pixels)})

    worker = threading.Thread(target=measure, name="scorer-alone")
    worker.start()
    worker.join()
    return result


class Recorder:
    """Observer of committed batches: counts per topic, first/last times, latencies of keyed messages,
    and CPU-time readings (`cpu_probes`) at a topic's first and last committed batch."""

    def __init__(self, cpu_probes: dict[str, Callable[[], float | None]] | None = None):
        self.lock = threading.Lock()
        self.cpu_probes = dict(cpu_probes or {})
        self.count: dict[str, int] = {}
        self.first_opened: dict[str, float] = {}
        self.last_done: dict[str, float] = {}
        self.score_seconds: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.cpu_first: dict[str, tuple[int, dict[str, float | None]]] = {}
        self.cpu_last: dict[str, tuple[int, dict[str, float | None]]] = {}

    def __call__(self, batch) -> None:
        now_wall, now = time.time(), time.monotonic()
        readings = {name: probe() for name, probe in self.cpu_probes.items()}
        with self.lock:
            for item in batch.items:
                topic = item.message.topic
                self.count[topic] = self.count.get(topic, 0) + 1
                self.first_opened[topic] = min(self.first_opened.get(topic, batch.opened_at), batch.opened_at)
                self.last_done[topic] = now
                sent = self.sent_at.get(item.message.sample_key)
                if sent is not None:
                    self.latencies.append(now_wall - sent)
            if batch.items:
                topic = batch.items[0].message.topic
                self.score_seconds[topic] = self.score_seconds.get(topic, 0.0) + batch.score_seconds
                self.cpu_first.setdefault(topic, (self.count[topic], readings))
                self.cpu_last[topic] = (self.count[topic], readings)

    def cpu_ms_per_message(self, topic: str, probe: str) -> float | None:
        """CPU milliseconds per message of `probe` between the topic's first and last committed batch
        (what consuming costs once it runs, without the group join before it)."""
        (first_count, first), (last_count, last) = self.cpu_first[topic], self.cpu_last[topic]
        if last_count <= first_count or first.get(probe) is None or last.get(probe) is None:
            return None
        return 1000 * (last[probe] - first[probe]) / (last_count - first_count)

    def wait(self, topic: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with tqdm(total=count, desc=f"stored from {topic}", unit="msg") as bar:
            while self.count.get(topic, 0) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {self.count.get(topic, 0)} of {count} messages stored in {timeout} s")
                bar.update(self.count.get(topic, 0) - bar.n)
                time.sleep(0.05)  # progress display; the loop condition is the stored count
            bar.update(count - bar.n)


def start_broker(kind: str, workdir: Path):
    from tests.services import Kafka09Broker, TansuBroker

    if kind == "kafka-0.9":
        return Kafka09Broker(workdir / "kafka").start()
    return TansuBroker().start()


def create_topics(broker, names: Sequence[str], partitions: int) -> None:
    from tests.services import Kafka09Broker, create_tansu_topic

    for name in names:
        if isinstance(broker, Kafka09Broker):
            broker.create_topic(name, partitions)
        else:
            create_tansu_topic(broker, name, partitions)


def process_cpu_seconds(process: Any) -> float | None:
    """User + system CPU seconds of a running child process (Linux /proc), or None."""
    pid = getattr(process, "pid", None)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_process(broker: Any) -> Any:
    """The broker's server process when it runs on this machine (Tansu, or Kafka 0.9's JVM)."""
    return getattr(broker, "process", None) or getattr(broker, "kafka", None)


def daemon_settings(broker: Any, model_config: dict[str, Any], topics: Sequence[str], group: str, suffix: str,
                    workdir: Path, batch_size: int, decode_threads: int):
    from monitor.settings import settings_from_mapping

    return settings_from_mapping({
        "model": model_config,
        "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": list(topics), "group_id": group,
                  "api_version": broker.api_version, "session_timeout_ms": 6000,
                  "dead_letter_topic": f"bench-{suffix}.dead-letter", "alerts_topic": f"bench-{suffix}.alerts"},
        "stream": {"batch_size": batch_size, "max_batch_wait_ms": 50, "decode_threads": decode_threads,
                   "http": False},
        "store": {"url": f"sqlite:///{workdir / f'bench-{suffix}.db'}", "keep_image_share": 0.0},
        "jobs": {"enabled": False},
        "logging": {"level": "WARNING"},
    }, {})


def throughput_round(broker: Any, settings: Any, producer: Any, topic: str, images: Sequence[bytes],
                     batch_size: int, recorder: "Recorder") -> tuple[dict[str, Any], Any, threading.Thread]:
    """One round: the images produced to `topic`, then a new daemon consumes them; the Scorer alone
    measured before and after. Returns the round's figures and the daemon, still running."""
    from monitor.stream.daemon import Daemon

    for index, value in enumerate(tqdm(images, desc=f"producing to {topic}", unit="msg")):
        producer.send(topic, value=value, key=f"t{index}".encode())
    producer.flush()
    daemon = Daemon(settings, observers=[recorder], install_signal_handlers=False).setup()
    shape = daemon.classifier.preprocessing.input_shape
    before = scorer_alone(daemon.scorer, shape, images, batch_size)
    runner = threading.Thread(target=daemon.run, name="daemon")
    runner.start()
    try:
        recorder.wait(topic, len(images), timeout=max(600.0, 50 * len(images) * before["ms_per_image"] / 1000))
    except BaseException:
        daemon.request_stop(5.0)
        runner.join(60)
        raise
    seconds = recorder.last_done[topic] - recorder.first_opened[topic]
    after = scorer_alone(daemon.scorer, shape, images, batch_size)
    baseline = min(before, after, key=lambda run: run["ms_per_image"])
    count = len(images)
    end_to_end = {"messages": count, "seconds": seconds, "messages_per_s": count / seconds,
                  "ms_per_image": 1000 * seconds / count,
                  "scoring_share": recorder.score_seconds[topic] / seconds,
                  "process_cpu_ms_per_message": recorder.cpu_ms_per_message(topic, "process"),
                  "broker_cpu_ms_per_message": recorder.cpu_ms_per_message(topic, "broker")}
    figures = {"scorer_alone": baseline, "scorer_alone_runs_ms_per_image": [before["ms_per_image"],
                                                                            after["ms_per_image"]],
               "end_to_end": end_to_end, "overhead": end_to_end["ms_per_image"] / baseline["ms_per_image"] - 1}
    return figures, daemon, runner


def run(messages: int, latency_s: float, broker_kind: str, batch_size: int, device: str,
        workdir: Path, model: str = "demo", decode_threads: int = 2, rounds: int = ROUNDS) -> dict[str, Any]:
    from kafka import KafkaProducer

    broker = start_broker(broker_kind, workdir)
    daemon = runner = producer = None
    try:
        suffix = uuid.uuid4().hex[:6]
        throughput_topics = [f"bench-throughput-{suffix}-{index}" for index in range(rounds)]
        latency_topic = f"bench-latency-{suffix}"
        create_topics(broker, [*throughput_topics, latency_topic], 3)
        create_topics(broker, [f"bench-{suffix}.dead-letter", f"bench-{suffix}.alerts"], 1)
        model_config, side = model_settings(model, device, workdir)
        images = benchmark_images(messages, side)
        api = (0, 9) if broker.api_version == "0.9" else None
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=api, acks="all", linger_ms=5,
                                 max_request_size=4_000_000)
        server = broker_process(broker)
        recorder = Recorder({"process": time.process_time, "broker": lambda: process_cpu_seconds(server)})
        results = []
        for index, topic in enumerate(throughput_topics):
            if daemon is not None:  # the previous round's daemon: stopped before the next one starts
                daemon.request_stop(5.0)
                runner.join(60)
            settings = daemon_settings(broker, model_config, [topic, latency_topic], f"bench-{suffix}-{index}",
                                       suffix, workdir, batch_size, decode_threads)
            figures, daemon, runner = throughput_round(broker, settings, producer, topic, images, batch_size,
                                                       recorder)
            results.append(figures)
            print(f"round {index + 1}/{rounds}: Scorer alone {figures['scorer_alone']['ms_per_image']:.3f} ms/image, "
                  f"end to end {figures['end_to_end']['ms_per_image']:.3f} ms/image ({100 * figures['overhead']:+.0f} %)")

        overheads = [figures["overhead"] for figures in results]
        # The median round (the lower of the two middle ones for an even count) is the one reported.
        middle = sorted(range(len(results)), key=lambda index: overheads[index])[(len(results) - 1) // 2]
        median_round = results[middle]
        end_to_end = dict(median_round["end_to_end"])
        rate = max(1.0, LATENCY_LOAD * end_to_end["messages_per_s"])
        count = max(20, int(rate * latency_s))
        interval = 1.0 / rate
        started = time.monotonic()
        for index in tqdm(range(count), desc=f"latency at {rate:.0f} msg/s", unit="msg"):
            target = started + index * interval
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the producer at the chosen rate, not synchronisation
            key = f"l{index}"
            recorder.sent_at[key] = time.time()
            producer.send(latency_topic, value=images[index % len(images)], key=key.encode())
        producer.flush()
        recorder.wait(latency_topic, count, timeout=120 + 10 * latency_s)
        latencies = np.array(recorder.latencies) * 1000
        latency = {"rate_per_s": rate, "messages": count, "p50_ms": float(np.percentile(latencies, 50)),
                   "p99_ms": float(np.percentile(latencies, 99)), "max_ms": float(latencies.max())}
        overhead = median_round["overhead"]
        return {
            "device": str(daemon.scorer.device), "model": daemon.classifier.name, "broker": broker_kind,
            "batch_size": batch_size, "decode_threads": decode_threads, "store": "SQLite (file)",
            "torch_threads": __import__("torch").get_num_threads(), "rounds": results,
            "switch_interval_ms": 1000 * sys.getswitchinterval(),
            # The round whose overhead is the median: its figures are the ones reported.
            "scorer_alone": median_round["scorer_alone"], "end_to_end": end_to_end, "latency": latency,
            "pipeline_overhead": overhead, "overhead_range": [min(overheads), max(overheads)],
            "goal_overhead": 0.20, "goal_met": overhead <= 0.20,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        if producer is not None:
            producer.close()
        if daemon is not None:
            daemon.request_stop(5.0)
            if runner is not None:
                runner.join(60)
            else:
                daemon.close()
        broker.stop()


def _figure(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    first = results[0]
    lines = [
        "# Streaming pipeline benchmark", "",
        f"Measured {first['measured_at']} on {first['device']} ({first['machine']['cpus']} CPUs, "
        f"{first['machine']['platform']}), broker {first['broker']}, {first['decode_threads']} decode threads, "
        f"{first['torch_threads']} torch threads, CPython switch interval {first['switch_interval_ms']:g} ms, "
        f"store {first['store']}, {len(first['rounds'])} round{'' if len(first['rounds']) == 1 else 's'}. Produced "
        "by `python -m tests.benchmarks.bench_pipeline` (method: the module docstring). In each round the Scorer "
        "alone runs on the same decoded batches, in the same process, on a worker thread like the pipeline's, "
        "before and after the daemon consumes; the faster run is that round's baseline. The figures are those of "
        "the round with the median overhead; the range is over all rounds.",
        "",
        "| model | batch | Scorer alone ms/image | end to end ms/image | end to end messages/s | pipeline overhead "
        "(range) | goal (+20 %) | scoring share of end to end | Scorer alone CPU ms/image | daemon CPU ms/message "
        "| broker CPU ms/message |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        base, e2e = result["scorer_alone"], result["end_to_end"]
        low, high = result["overhead_range"]
        broker_cpu = e2e.get("broker_cpu_ms_per_message")
        lines.append(
            f"| {result['model_description']} | {result['batch_size']} | {base['ms_per_image']:.2f} | "
            f"{e2e['ms_per_image']:.2f} | {e2e['messages_per_s']:.0f} | {100 * result['pipeline_overhead']:+.0f} % "
            f"({100 * low:+.0f} to {100 * high:+.0f}) | {'met' if result['goal_met'] else 'not met'} | "
            f"{100 * e2e['scoring_share']:.0f} % | {_figure(base.get('cpu_ms_per_image'), 2)} | "
            f"{_figure(e2e['process_cpu_ms_per_message'], 2)} | "
            f"{_figure(broker_cpu, 3)} |")
    lines += ["", "Every round:", "", "| model | round | Scorer alone ms/image (before, after) | end to end ms/image "
              "| overhead |", "|---|---:|---|---:|---:|"]
    for result in results:
        for index, figures in enumerate(result["rounds"], 1):
            runs = figures["scorer_alone_runs_ms_per_image"]
            lines.append(f"| {result['model_description']} | {index} | {runs[0]:.2f}, {runs[1]:.2f} | "
                         f"{figures['end_to_end']['ms_per_image']:.2f} | {100 * figures['overhead']:+.0f} % |")
    lines += ["", "Produce-to-stored latency (wall clock from just before `send` to the batch's commit), with a "
              f"producer sending at {LATENCY_LOAD:.0%} of the measured throughput:", "",
              "| model | messages/s | messages | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for result in results:
        latency = result["latency"]
        lines.append(f"| {result['model_description']} | {latency['rate_per_s']:.0f} | {latency['messages']} | "
                     f"{latency['p50_ms']:.0f} | {latency['p99_ms']:.0f} | {latency['max_ms']:.0f} |")
    lines += ["", "What the overhead is: per message, the pipeline consumes (kafka-python parses each record in "
              "Python), decodes (PIL), builds the rows and writes them in one transaction per batch, and commits. "
              "Storing and publishing run on a worker thread while the next batch is scored; consuming and "
              "decoding share the interpreter with it. That fixed cost is a fraction of a millisecond per "
              "message: large beside the tiny demo model, small beside an ImageNet-sized one. The CPU columns "
              "are the whole process's CPU time (torch's threads included), which a busy neighbour disturbs "
              "less than the wall clock: the daemon's figure less the Scorer's is what the pipeline itself "
              "costs per message. Why the demo model stays above the goal on a small machine: "
              "docs/daemon.md, \"Scaling\".", ""]
    return "\n".join(lines)


MODELS = {"demo": "demo (Fashion-MNIST ResNet, 1x28x28)", "resnet18": "ResNet-18, 3x224x224 (untrained weights)"}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the demo model only, {QUICK_MESSAGES} messages")
    parser.add_argument("--messages", type=int, help="messages of the throughput run (demo model)")
    parser.add_argument("--models", default=None, help="comma-separated: demo, resnet18 (default: both; --quick: demo)")
    parser.add_argument("--broker", choices=("tansu", "kafka-0.9"), default="tansu")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--decode-threads", type=int, default=2, help="[stream] decode_threads (default 2)")
    parser.add_argument("--rounds", type=int, help=f"throughput rounds per model (default {ROUNDS}; --quick: 1)")
    parser.add_argument("--switch-interval-ms", type=float,
                        help="set CPython's switch interval (sys.setswitchinterval) for the whole run; "
                             "an experiment: see tests/benchmarks/bench_contention.py")
    parser.add_argument("--out-dir", type=Path, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.switch_interval_ms is not None:
        if not args.switch_interval_ms > 0:
            parser.error("--switch-interval-ms: a positive number of milliseconds")
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    models = (args.models or ("demo" if args.quick else "demo,resnet18")).split(",")
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose among {', '.join(MODELS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        for model in models:
            messages = args.messages or (QUICK_MESSAGES if args.quick else FULL_MESSAGES)
            if model == "resnet18":
                messages = max(64, messages // 12)  # about 15x the demo's cost per image on a CPU
            rounds = args.rounds or (1 if args.quick else ROUNDS)
            result = run(messages, QUICK_LATENCY_SECONDS if args.quick else LATENCY_SECONDS, args.broker,
                         args.batch_size, args.device, Path(scratch), model, args.decode_threads, rounds)
            result["model_description"] = MODELS[model]
            results.append(result)
        out_dir = args.out_dir or (Path(scratch) / "out" if args.quick else ROOT / "docs" / "benchmarks")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pipeline.json").write_text(json.dumps({"runs": results}, indent=2) + "\n")
        text = markdown(results)
        (out_dir / "pipeline.md").write_text(text)
        print(text)
        print(f"saved {out_dir / 'pipeline.json'} and {out_dir / 'pipeline.md'}")
    return results


if __name__ == "__main__":
    main()
