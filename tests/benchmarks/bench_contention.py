"""What other Python threads of the daemon's process cost the Scorer: the interpreter lock.

    python -m tests.benchmarks.bench_contention                 # demo model, 1 torch thread, 5 rounds
    python -m tests.benchmarks.bench_contention --quick         # 2 rounds of fewer images (a smoke run)
    python -m tests.benchmarks.bench_contention --device cuda   # the Scorer on the GPU (contention-cuda.*)

The daemon scores on one thread while others consume, decode and store. Torch releases CPython's
interpreter lock inside each operation and takes it back after; when another thread runs Python
meanwhile, taking it back waits until that thread lets go, which a busy thread does only every
`sys.getswitchinterval()` (5 ms by default). A model made of many short operations then waits far
longer than it computes. This benchmark measures it, on the bundled demo classifier and batches of
decoded Fashion-MNIST images (the bundled samples without Debian's dataset package):

- alone: `Scorer.score_batch` on a worker thread, nothing else running;
- beside one thread of the same process decoding PNG images in a loop (`monitor.imaging.decode_image`,
  the daemon's own decoder, which lets go of the lock inside PIL and NumPy), at switch intervals of
  5 ms (CPython's default), 1 ms and 0.2 ms;
- beside one thread running pure Python that never lets go by itself (summing the images' bytes one
  by one: what parsing Kafka records or building rows in Python is like), at the same intervals;
- beside the same decoding loop in another process (the same CPU work, no shared lock): the control.

With one torch thread on a machine of two or more cores, the Scorer and the decoder each have a core:
what the Scorer loses beside the thread and not beside the process is the lock's doing. The conditions
are interleaved over several rounds and the median is reported, because shared machines change
speed from minute to minute. On a GPU the Scorer is mostly the CPU launching short operations, so
the same comparison tells whether the lock limits a GPU daemon. Figures are printed and saved as
JSON and Markdown (docs/benchmarks/contention.{json,md}, or contention-cuda.* for a GPU, for a full
run; a temporary folder for --quick).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE = 64
ROUNDS = 5
QUICK_ROUNDS = 2
IMAGES = 1024
QUICK_IMAGES = 256
DEFAULT_SWITCH_INTERVAL = 0.005
READY_TIMEOUT_S = 300.0


def parse_forever(images: Sequence[bytes], input_shape: tuple[int, int, int], ready: Any, running: Any,
                  stop: Any, done: Any) -> None:
    """Pure Python that never lets go of the lock by itself, like parsing records or building rows:
    the images' bytes summed one by one, over and over."""
    ready.set()
    while not stop.is_set():
        if not running.wait(0.05):
            continue
        for value in images:
            total = 0
            for byte in value:
                total += byte
        with done.get_lock():
            done.value += len(images)


def decode_forever(images: Sequence[bytes], input_shape: tuple[int, int, int], ready: Any, running: Any,
                   stop: Any, done: Any) -> None:
    """Decode the images over and over while `running` is set, until `stop`; count them in `done`."""
    from monitor.imaging import decode_image

    decode_image(images[0], input_shape)  # imports done, first call made: ready to be measured
    ready.set()
    while not stop.is_set():
        if not running.wait(0.05):
            continue
        for value in images:
            decode_image(value, input_shape)
        with done.get_lock():
            done.value += len(images)


class Background:
    """A loop (`decode_forever` or `parse_forever`) on a thread of this process or in a process of its
    own, switched on and off between measurements."""

    def __init__(self, kind: str, loop: Callable[..., None], images: Sequence[bytes],
                 input_shape: tuple[int, int, int]):
        chunk = list(images[:64])  # one pass is short: the loop checks `running` often
        if kind == "process":
            context = multiprocessing.get_context("spawn")
            self.ready, self.running, self.stop = context.Event(), context.Event(), context.Event()
            self.done = context.Value("q", 0)
            self.worker: Any = context.Process(
                target=loop, name="background",
                args=(chunk, input_shape, self.ready, self.running, self.stop, self.done))
        else:
            self.ready, self.running, self.stop = threading.Event(), threading.Event(), threading.Event()
            self.done = multiprocessing.get_context("spawn").Value("q", 0)
            self.worker = threading.Thread(target=loop, name="background",
                                           args=(chunk, input_shape, self.ready, self.running, self.stop, self.done))
        self.worker.start()
        # A new process takes seconds to import torch and the decoder: measuring before it is ready
        # would measure the Scorer beside nothing.
        if not self.ready.wait(READY_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the background {kind} was not ready after {READY_TIMEOUT_S:.0f} s")

    def count(self) -> int:
        with self.done.get_lock():
            return self.done.value

    def close(self) -> None:
        self.stop.set()
        self.running.set()
        self.worker.join(30)


def score_on_a_thread(scorer: Any, batches: Sequence[Any]) -> float:
    """Milliseconds per image of score_batch over the batches, on a worker thread (as in the daemon)."""
    import torch

    result: list[float] = []

    def measure() -> None:
        started = time.perf_counter()
        for batch in batches:
            scorer.score_batch(batch)
        if scorer.device.type == "cuda":
            torch.cuda.synchronize(scorer.device)
        result.append(1000 * (time.perf_counter() - started) / sum(len(batch) for batch in batches))

    worker = threading.Thread(target=measure, name="scorer")
    worker.start()
    worker.join()
    return result[0]


def run(rounds: int, image_count: int, torch_threads: int, workdir: Path, device: str = "cpu") -> dict[str, Any]:
    import torch

    from monitor.calibration_cache import load_or_calibrate
    from monitor.classifiers import load_classifier, pick_device
    from monitor.evaluation.machine import describe
    from monitor.imaging import decode_image, stack_images
    from monitor.indicators import Scorer
    from tests.benchmarks.bench_pipeline import benchmark_images

    torch.set_num_threads(torch_threads)
    chosen = pick_device(device)
    classifier = load_classifier("demo", device=chosen)
    preprocessing = classifier.preprocessing
    scorer = Scorer(classifier.model, mean=preprocessing.mean, std=preprocessing.std,
                    input_shape=preprocessing.input_shape)
    load_or_calibrate(scorer, workdir / "cache", n=256, progress=False)
    images = benchmark_images(image_count)
    shape = tuple(preprocessing.input_shape)
    pixels = [decode_image(value, shape) for value in images]
    batches = [stack_images(pixels[start:start + BATCH_SIZE]).to(chosen)
               for start in range(0, len(pixels), BATCH_SIZE)]
    score_on_a_thread(scorer, batches[:2])  # warm-up: compiled kernels loaded, buffers allocated

    backgrounds: list[Background] = []
    previous_interval = sys.getswitchinterval()
    try:
        for kind, loop in (("thread", decode_forever), ("thread", parse_forever), ("process", decode_forever)):
            backgrounds.append(Background(kind, loop, images, shape))
        decoding, parsing, decoding_process = backgrounds
        conditions: list[tuple[str, Background | None, float]] = [("alone", None, DEFAULT_SWITCH_INTERVAL)]
        for label, background in (("a decoding thread", decoding), ("a pure-Python thread", parsing)):
            conditions += [(f"beside {label}, switch interval 5 ms (default)", background, 0.005),
                           (f"beside {label}, switch interval 1 ms", background, 0.001),
                           (f"beside {label}, switch interval 0.2 ms", background, 0.0002)]
        conditions.append(("beside a decoding process", decoding_process, DEFAULT_SWITCH_INTERVAL))
        times: dict[str, list[float]] = {name: [] for name, _, _ in conditions}
        background_rates: dict[str, list[float]] = {name: [] for name, loop, _ in conditions if loop is not None}
        with tqdm(total=rounds * len(conditions), desc="rounds x conditions", unit="run") as bar:
            for _ in range(rounds):
                for name, loop, interval in conditions:
                    sys.setswitchinterval(interval)
                    if loop is not None:
                        loop.running.set()
                        start_count, started = loop.count(), time.perf_counter()
                    times[name].append(score_on_a_thread(scorer, batches))
                    if loop is not None:
                        background_rates[name].append((loop.count() - start_count) / (time.perf_counter() - started))
                        loop.running.clear()
                    bar.update()
    finally:
        sys.setswitchinterval(previous_interval)
        for background in backgrounds:
            background.close()
        scorer.close()
    alone = statistics.median(times["alone"])
    rows = []
    for name, loop, interval in conditions:
        median = statistics.median(times[name])
        rows.append({"condition": name, "switch_interval_ms": interval * 1000,
                     "ms_per_image": median, "runs_ms_per_image": times[name], "slowdown": median / alone,
                     "background_per_s": statistics.median(background_rates[name]) if loop is not None else None})
    return {"model": classifier.name, "batch_size": BATCH_SIZE, "images": len(images), "rounds": rounds,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": describe(chosen),
            "conditions": rows}


def markdown(result: dict[str, Any]) -> str:
    from monitor.evaluation.machine import describe_line

    lines = [
        "# The Scorer beside other Python threads", "",
        f"Measured on {describe_line(result['machine'])}. The demo model on `{result['machine']['device']}`, batches of {result['batch_size']}, {result['images']} images per run, median of "
        f"{result['rounds']} interleaved rounds. Produced by `python -m tests.benchmarks.bench_contention` "
        "(method: the module docstring).", "",
        "| Scorer runs | Scorer ms/image | slowdown | background images/s |", "|---|---:|---:|---:|",
    ]
    for row in result["conditions"]:
        rate = "-" if row["background_per_s"] is None else f"{row['background_per_s']:.0f}"
        lines.append(f"| {row['condition']} | {row['ms_per_image']:.3f} | x{row['slowdown']:.2f} | {rate} |")
    lines += ["", "What it means for the daemon: its consumer, decoder and store threads run Python beside the "
              "scoring thread, so a small model on a CPU, and any model on a GPU (whose Scorer is mostly the "
              "CPU launching short operations), waits on the interpreter lock. See docs/daemon.md, "
              "\"Scaling\".", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, printer: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds of {QUICK_IMAGES} images")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {ROUNDS})")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads of the Scorer (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: where the Scorer runs")
    parser.add_argument("--out-dir", type=Path, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    if rounds < 1 or args.torch_threads < 1:
        parser.error("--rounds and --torch-threads: at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as scratch:
        result = run(rounds, QUICK_IMAGES if args.quick else IMAGES, args.torch_threads, Path(scratch), args.device)
        out_dir = args.out_dir or (Path(scratch) / "out" if args.quick else ROOT / "docs" / "benchmarks")
        out_dir.mkdir(parents=True, exist_ok=True)
        name = "contention" if result["machine"]["device"] == "cpu" else "contention-cuda"
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        text = markdown(result)
        (out_dir / f"{name}.md").write_text(text)
        printer(text)
        printer(f"saved {out_dir / f'{name}.json'} and {out_dir / f'{name}.md'}")
    return result


if __name__ == "__main__":
    main()
