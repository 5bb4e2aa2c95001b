"""Wires the steps of the stream in one place, with the parts they compose: imaging, the Scorer,
the store and a producer. `build_pipeline` returns the head step; feed it `InboundMessage`s."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from monitor.errors import InputError
from monitor.imaging import ImageLimits, ImageRejected, decode_image, sniff_format, stack_images
from monitor.store.payloads import ThresholdParameters
from monitor.store.records import Policy, ThresholdRecord
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
    PolicyRefused,
    PolicyStep,
    Producer,
    PublishStep,
    ScoreStep,
    Shutdown,
    Step,
    StoreStep,
    WorkerStep,
)

log = logging.getLogger(__name__)


def image_decoder(input_shape: Sequence[int], limits: ImageLimits, *, apply_exif_orientation: bool = False,
                  decoder: Callable[..., Any] | None = None) -> Callable[[InboundMessage], Decoded]:
    """Message -> Decoded: pixels at the model's input shape, or the reject reason of monitor.imaging.
    `decoder`: monitor.imaging's `decode_image` (None), or monitor.imaging_device's
    `deferring_decoder()` (the JPEGs then decoded with their batch on the model's device)."""
    decode_one = decoder or decode_image

    def decode(message: InboundMessage) -> Decoded:
        if message.unreadable is not None:
            return Decoded(message, reject_reason=UNREADABLE, reject_detail=message.unreadable[:500])
        if message.value is None:  # a tombstone, or a producer that sent no value
            return Decoded(message, reject_reason="empty", reject_detail="the message has no value (null)")
        data = message.value
        try:
            pixels = decode_one(data, input_shape, content_type=message.content_type, limits=limits,
                                  apply_exif_orientation=apply_exif_orientation)
        except ImageRejected as rejected:
            return Decoded(message, reject_reason=rejected.reason, reject_detail=rejected.detail)
        except Exception as error:  # noqa: BLE001 - hostile bytes must become a reject, never a crash
            log.warning("decoder failed on %s/%s/%s: %r", message.topic, message.partition, message.offset, error)
            return Decoded(message, reject_reason="corrupt", reject_detail=f"decoder failed: {error!r}"[:500])
        return Decoded(message, pixels=pixels, image_format=sniff_format(data))

    return decode


class ScorerAdapter:
    """monitor.Scorer as a BatchScorer: apply the batch's policy's 1C-Sum weights, stack on the
    model's device, return NumPy arrays. Called from one thread (the scoring one) at a time."""

    def __init__(self, scorer: Any, assemble: Callable[[list[Any]], Any] | None = None):
        self.scorer = scorer
        self.assemble = assemble  # pixels -> one batch on the device (monitor.imaging_device.assemble)
        self._applied: tuple[int | None] | None = None  # the weights set on the scorer: (summary_weights_id,)

    def _apply(self, policy: Policy | None) -> None:
        wanted = (policy.summary_weights_id if policy is not None and policy.weights is not None else None,)
        if wanted == self._applied:
            return
        self.scorer.reset_summary_weights()
        self._applied = (None,)
        if wanted[0] is None:
            log.info("1C-Sum weights: uniform (policy #%s)", policy.version if policy else None)
            return
        try:
            self.scorer.set_summary_weights(policy.weights)
        except InputError as error:
            self.scorer.reset_summary_weights()
            raise PolicyRefused(f"1C-Sum weights #{policy.summary_weights_id}: {error}") from error
        self._applied = wanted
        log.info("1C-Sum weights #%s applied (policy #%s)", policy.summary_weights_id, policy.version)

    def __call__(self, pixels: Sequence[Any], policy: Policy | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        self._apply(policy)
        if self.assemble is not None:
            batch = self.assemble(list(pixels))
        else:
            batch = stack_images(list(pixels))
            if getattr(self.scorer, "device", None) is not None:
                batch = batch.to(self.scorer.device, non_blocking=True)
        scored = self.scorer.score_batch(batch)
        return ({name: values.numpy() for name, values in scored.indicators.items()},
                scored.predicted.numpy())


class PolicySource:
    """The active policy of (model, indicator), re-read from the store (one query) every `refresh_s`.

    A database that cannot be read keeps the last known policy (logged), so scoring and judging go on.
    """

    def __init__(self, store: Any, model_id: int, indicator: str, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.model_id = model_id
        self.indicator = indicator
        self.refresh_s = refresh_s
        self.clock = clock
        self.current: Policy | None = None
        self._read_at: float | None = None

    def refresh(self) -> Policy | None:
        try:
            found = self.store.active_policy(self.model_id, self.indicator)
        except Exception as error:  # noqa: BLE001 - the store may be down; keep judging with what we have
            log.warning("could not read the active policy, keeping %s: %s",
                        self.current.describe() if self.current else "none", error)
            return self.current
        if found != self.current:
            log.info("active policy: %s", found.describe() if found else
                     f"none for {self.indicator} (nothing is flagged)")
        self.current = found
        return found

    def __call__(self) -> Policy | None:
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
    current_policy: Callable[[], Policy | None]
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
    """decode (thread pool) -> batch -> attach the policy -> [score on a worker thread] -> judge ->
    [store -> publish on a worker thread] -> commit; the head step. Results move between threads in order, and every
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
    judge = JudgeStep(background, parts.indicator)
    # Threaded, scoring runs on its own thread: the consumer thread keeps polling, parsing and handing
    # messages to the decoders while the model works (torch and the compiled kernels release the GIL).
    score = ScoreStep(judge, parts.scorer).process
    scoring = WorkerStep(judge, score, name="score") if threaded else InlineStep(judge, score)
    # The policy is read on the caller's thread and travels with the batch: scoring (its weights)
    # and judging (its threshold) cannot see two different versions.
    batch = BatchStep(PolicyStep(scoring, parts.current_policy), parts.batch_size, parts.max_batch_wait_s)
    if not threaded:
        return InlineStep(batch, parts.decode)
    return DecodeStep(batch, parts.decode, parts.decode_threads, max_pending=max(2 * parts.batch_size, 16))
