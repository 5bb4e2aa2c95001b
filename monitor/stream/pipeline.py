"""Wires the steps of the stream in one place, with the parts they compose: imaging, the Scorer,
the store and a producer. `build_pipeline` returns the head step; feed it `InboundMessage`s."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from monitor.imaging import ImageLimits, ImageRejected, decode_image, sniff_format, stack_images
from monitor.store.payloads import ThresholdParameters
from monitor.store.records import ThresholdRecord
from monitor.stream.messages import UNREADABLE, InboundMessage
from monitor.stream.steps import (
    Batch,
    BatchScorer,
    BatchStep,
    CommitStep,
    Decoded,
    DecodeStep,
    InlineStep,
    JudgeStep,
    Producer,
    PublishStep,
    ScoreStep,
    Shutdown,
    Step,
    StoreStep,
    Threshold,
    WorkerStep,
)

log = logging.getLogger(__name__)


def image_decoder(input_shape: Sequence[int], limits: ImageLimits, *,
                  apply_exif_orientation: bool = False) -> Callable[[InboundMessage], Decoded]:
    """Message -> Decoded: pixels at the model's input shape, or the reject reason of monitor.imaging."""

    def decode(message: InboundMessage) -> Decoded:
        if message.unreadable is not None:
            return Decoded(message, reject_reason=UNREADABLE, reject_detail=message.unreadable[:500])
        if message.value is None:  # a tombstone, or a producer that sent no value
            return Decoded(message, reject_reason="empty", reject_detail="the message has no value (null)")
        data = message.value
        try:
            pixels = decode_image(data, input_shape, content_type=message.content_type, limits=limits,
                                  apply_exif_orientation=apply_exif_orientation)
        except ImageRejected as rejected:
            return Decoded(message, reject_reason=rejected.reason, reject_detail=rejected.detail)
        except Exception as error:  # noqa: BLE001 - hostile bytes must become a reject, never a crash
            log.warning("decoder failed on %s/%s/%s: %r", message.topic, message.partition, message.offset, error)
            return Decoded(message, reject_reason="corrupt", reject_detail=f"decoder failed: {error!r}"[:500])
        return Decoded(message, pixels=pixels, image_format=sniff_format(data))

    return decode


class ScorerAdapter:
    """monitor.Scorer as a BatchScorer: stack on the model's device, return NumPy arrays."""

    def __init__(self, scorer: Any):
        self.scorer = scorer

    def __call__(self, pixels: Sequence[Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        batch = stack_images(list(pixels))
        if getattr(self.scorer, "device", None) is not None:
            batch = batch.to(self.scorer.device, non_blocking=True)
        scored = self.scorer.score_batch(batch)
        return ({name: values.numpy() for name, values in scored.indicators.items()},
                scored.predicted.numpy())


class ThresholdSource:
    """The active threshold of (model, indicator), re-read from the store every `refresh_s`; with a
    `scorer`, the active label-fitted 1C-Sum weights are applied to it as they change.

    A database that cannot be read keeps the last known threshold (logged), so judging goes on.
    """

    def __init__(self, store: Any, model_id: int, indicator: str, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic, scorer: Any = None):
        self.store = store
        self.model_id = model_id
        self.indicator = indicator
        self.refresh_s = refresh_s
        self.clock = clock
        self.scorer = scorer
        self.current: Threshold | None = None
        self.weights_id: int | None = None
        self._read_at: float | None = None

    def _refresh_weights(self) -> None:
        row = self.store.active_summary_weights(self.model_id)
        if row is None or row.id == self.weights_id:
            return
        weights = row.weights.weights
        try:
            self.scorer.set_summary_weights({name: float(value) for name, value in weights.items()
                                             if name in self.scorer.summary_members})
        except Exception as error:  # noqa: BLE001 - bad weights must not stop scoring; keep the old ones
            log.error("1C-Sum weights #%s not applied: %s", row.id, error)
        else:
            log.info("1C-Sum weights #%s applied", row.id)
        self.weights_id = row.id

    def refresh(self) -> Threshold | None:
        try:
            row = self.store.active_threshold(self.model_id, self.indicator)
            if self.scorer is not None:
                self._refresh_weights()
        except Exception as error:  # noqa: BLE001 - the store may be down; keep judging with what we have
            log.warning("could not read the active threshold, keeping %s: %s", self.current, error)
            return self.current
        found = Threshold(float(row.value), row.id, row.indicator) if row is not None else None
        if found != self.current:
            log.info("active threshold for %s: %s", self.indicator,
                     f"{found.value:.6g} (#{found.threshold_id})" if found else "none (nothing is flagged)")
        self.current = found
        return found

    def __call__(self) -> Threshold | None:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            self._read_at = now
            self.refresh()
        return self.current


def install_default_threshold(store: Any, model_id: int, indicator: str, value: float | None) -> None:
    """Store [stream] default_threshold as the active threshold when none was fitted yet."""
    if value is None or store.active_threshold(model_id, indicator) is not None:
        return
    store.add_threshold(ThresholdRecord(model_id=model_id, indicator=indicator, method="configured",
                                        value=float(value), parameters=ThresholdParameters(source="[stream] default_threshold"),
                                        fitted_by="config"), activate=True)
    log.info("no fitted threshold yet: using [stream] default_threshold = %s for %s", value, indicator)


@dataclass
class PipelineParts:
    """Everything the chain needs, so tests can assemble it from local parts."""

    decode: Callable[[InboundMessage], Decoded]
    scorer: BatchScorer
    current_threshold: Callable[[], Threshold | None]
    write: Callable[..., Any]
    producer: Producer
    commit: Callable[[dict[tuple[str, int], int]], None]
    model_id: int
    model_name: str
    indicator: str
    dead_letter_topic: str
    alerts_topic: str | None
    group_id: str
    batch_size: int = 64
    max_batch_wait_s: float = 0.2
    decode_threads: int = 2
    keep_image_share: float = 0.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    class_name: Callable[[int], str | None] = lambda index: None
    on_alert: Callable[[dict[str, Any]], None] | None = None
    on_store_failure: Callable[[Exception], None] | None = None


def build_pipeline(parts: PipelineParts, shutdown: Shutdown,
                   observers: Sequence[Callable[[Batch], None]] = ()) -> Step:
    """decode (thread pool) -> batch -> [score on a worker thread] -> judge -> [store -> publish on
    a worker thread] -> commit; the head step. Results move between threads in order, and every
    commit happens on the caller's (the consumer's) thread. With `decode_threads = 0` every step
    runs on the caller's thread, one after the other."""
    commit = CommitStep(parts.commit, observers)
    publish = PublishStep(commit, parts.producer, dead_letter_topic=parts.dead_letter_topic,
                          alerts_topic=parts.alerts_topic, group_id=parts.group_id, model_name=parts.model_name,
                          shutdown=shutdown, retry_initial_s=parts.retry_initial_s, retry_max_s=parts.retry_max_s,
                          class_name=parts.class_name, on_alert=parts.on_alert)
    store = StoreStep(publish, parts.write, model_id=parts.model_id, indicator=parts.indicator,
                      keep_image_share=parts.keep_image_share, shutdown=shutdown,
                      retry_initial_s=parts.retry_initial_s, retry_max_s=parts.retry_max_s,
                      on_failure=parts.on_store_failure)
    threaded = parts.decode_threads > 0
    background = (WorkerStep if threaded else InlineStep)(commit, lambda batch: publish.process(store.process(batch)))
    judge = JudgeStep(background, parts.current_threshold, parts.indicator)
    # Threaded, scoring runs on its own thread: the consumer thread keeps polling, parsing and handing
    # messages to the decoders while the model works (torch and the compiled kernels release the GIL).
    score = ScoreStep(judge, parts.scorer).process
    scoring = WorkerStep(judge, score, name="score") if threaded else InlineStep(judge, score)
    batch = BatchStep(scoring, parts.batch_size, parts.max_batch_wait_s)
    if not threaded:
        return InlineStep(batch, parts.decode)
    return DecodeStep(batch, parts.decode, parts.decode_threads, max_pending=max(2 * parts.batch_size, 16))
