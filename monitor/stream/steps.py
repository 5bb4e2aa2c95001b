"""The processing steps of the stream, each small and testable alone, chained in `pipeline.py`.

Every step has the same tiny interface (after Sentry's Arroyo): `submit(item)` takes work and passes
its result to the next step, `poll()` lets time-based steps act, `join(deadline)` pushes everything
in flight through, `discard()` drops what is in flight (it will be consumed again), `close()` frees
resources. Committing offsets is the last step, so an offset is committed only after its message's
row is stored and its dead-letter or alert message is acknowledged: a property of the chain's shape.

    DecodeStep -> BatchStep -> PolicyStep -> ScoreStep -> JudgeStep -> [StoreStep -> PublishStep] -> CommitStep

The bracketed steps run on a worker thread (WorkerStep) while the next batch is decoded and scored;
commits stay on the consumer's thread and in order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from kafka.errors import MessageSizeTooLargeError

from monitor.errors import InputError
from monitor.store.records import ImageBlob, Policy, RejectRecord, ScoredSample, WriteResult
from monitor.stream.messages import (
    DEAD_LETTER_KIND,
    InboundMessage,
    dead_letter_document,
    encode_json,
    flagged_sample_alert,
    message_key,
    next_offsets,
    stripped_dead_letter,
    utc_now,
)

log = logging.getLogger(__name__)


class BatchAbandoned(Exception):
    """The batch in flight was given up at shutdown: nothing of it is committed; it will be replayed."""


class Step(Protocol):
    def submit(self, item: Any) -> None: ...

    def congested(self) -> bool:
        """Whether a submit now could block: the consumer stops submitting (and pauses its
        partitions, polling on to stay in its group) until this clears."""
        ...

    def poll(self) -> None: ...

    def join(self, deadline: float | None = None) -> None: ...

    def discard(self) -> None: ...

    def close(self) -> None: ...


class Shutdown:
    """Shared by the steps that wait (database and broker retries): when to stop waiting."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._abandon_at: float | None = None
        self._wake = threading.Event()

    def request(self, grace_s: float) -> None:
        """Stop consuming; the batch in flight has `grace_s` seconds to be stored, then it is abandoned."""
        abandon_at = time.monotonic() + grace_s
        if self._abandon_at is None or abandon_at < self._abandon_at:
            self._abandon_at = abandon_at
        self.stopping.set()
        self._wake.set()

    def abandon_now(self) -> None:
        self.request(0.0)

    @property
    def should_abandon(self) -> bool:
        return self._abandon_at is not None and time.monotonic() >= self._abandon_at

    def wait(self, seconds: float) -> None:
        """Sleep between retries, waking early when shutdown is requested."""
        if self._abandon_at is not None:
            seconds = min(seconds, max(0.0, self._abandon_at - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()


def retry_until_done(action: Callable[[], Any], what: str, shutdown: Shutdown, initial_s: float, max_s: float,
                     on_failure: Callable[[Exception], None] | None = None) -> Any:
    """Run `action` until it succeeds, waiting initial_s, doubling up to max_s between attempts.

    Gives up (BatchAbandoned) only when shutdown asks for it: nothing is ever dropped silently.
    """
    wait = initial_s
    attempt = 1
    while True:
        if shutdown.should_abandon:
            raise BatchAbandoned(f"{what}: abandoned at shutdown")
        try:
            return action()
        except BatchAbandoned:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the database or broker is retried
            if on_failure:
                on_failure(error)
            log.warning("%s failed (attempt %d), retrying in %.1f s: %s", what, attempt,
                        wait, str(error).splitlines()[0] if str(error) else type(error).__name__)
            shutdown.wait(wait)
            wait = min(max_s, max(wait * 2, 0.05))
            attempt += 1


# --- what flows between the steps ----------------------------------------------------------------


@dataclass
class Decoded:
    """A message after decoding: either pixels (float tensor [C, H, W]) or a reject reason."""

    message: InboundMessage
    pixels: Any = None
    image_format: str | None = None
    reject_reason: str | None = None
    reject_detail: str | None = None

    @property
    def rejected(self) -> bool:
        return self.reject_reason is not None


@dataclass
class Batch:
    items: list[Decoded]
    opened_at: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    predicted: np.ndarray | None = None
    policy: Policy | None = None  # attached before scoring; the batch is scored and judged by it
    flagged: np.ndarray | None = None
    scored_at: datetime | None = None
    score_seconds: float = 0.0
    write_result: WriteResult | None = None
    samples: list[ScoredSample] = field(default_factory=list)
    rejects: list[RejectRecord] = field(default_factory=list)

    @property
    def images(self) -> list[Decoded]:
        return [item for item in self.items if not item.rejected]

    @property
    def rejected(self) -> list[Decoded]:
        return [item for item in self.items if item.rejected]

    def offsets(self) -> dict[tuple[str, int], int]:
        return next_offsets(item.message.position for item in self.items)


# --- steps ---------------------------------------------------------------------------------------


class OrderedPoolStep:
    """Run `work(item)` on a thread pool while the caller goes on; results move on to `next_step` in
    submission order, on the caller's thread, because Kafka consumers (and so commits) belong to one
    thread. At most `max_pending` items wait: the step is then `congested()`, and a submit anyway
    blocks on the oldest. Finished results move on only while the next step is not congested, so
    polling never blocks.
    """

    def __init__(self, next_step: Step, work: Callable[[Any], Any], *, threads: int, max_pending: int,
                 name: str):
        self.next_step = next_step
        self.work = work
        self.max_pending = max_pending
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def submit(self, item: Any) -> None:
        while len(self.pending) >= self.max_pending:  # finish the oldest first
            self.next_step.submit(self.pending.popleft().result())
        self.pending.append(self.pool.submit(self.work, item))
        self._forward_done()

    def congested(self) -> bool:
        return len(self.pending) >= self.max_pending

    def _forward_done(self) -> None:
        while self.pending and self.pending[0].done() and not self.next_step.congested():
            self.next_step.submit(self.pending.popleft().result())

    def poll(self) -> None:
        self.next_step.poll()  # downstream first: what it moves on makes room for ours
        self._forward_done()

    def join(self, deadline: float | None = None) -> None:
        while self.pending:
            self.next_step.submit(self.pending.popleft().result())
        self.next_step.join(deadline)

    def discard(self) -> None:
        # Work already running finishes (or gives up at shutdown); none of it moves on, so none is committed.
        for future in self.pending:
            future.cancel()
        for future in self.pending:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - the item is dropped uncommitted either way
                    pass
        self.pending.clear()
        self.next_step.discard()

    def close(self) -> None:
        self.discard()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.next_step.close()


class DecodeStep(OrderedPoolStep):
    """Decode messages in a small thread pool while the model scores; results leave in order."""

    def __init__(self, next_step: Step, decode: Callable[[InboundMessage], Decoded], threads: int,
                 max_pending: int | None = None):
        super().__init__(next_step, decode, threads=threads, max_pending=max_pending or threads * 64,
                         name="decode")


class BatchStep:
    """Group decoded messages: a batch leaves when it holds `batch_size` messages or its oldest has
    waited `max_wait_s`."""

    def __init__(self, next_step: Step, batch_size: int, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.next_step = next_step
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.items: list[Decoded] = []
        self.opened_at = 0.0

    def submit(self, item: Decoded) -> None:
        if not self.items:
            self.opened_at = self.clock()
        self.items.append(item)
        if len(self.items) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        batch = Batch(items=self.items, opened_at=self.opened_at)
        self.items = []
        self.next_step.submit(batch)

    def congested(self) -> bool:
        return self.next_step.congested()  # the next item may complete a batch

    def poll(self) -> None:
        self.next_step.poll()
        if self.items and self.clock() - self.opened_at >= self.max_wait_s and not self.next_step.congested():
            self._flush()

    def join(self, deadline: float | None = None) -> None:
        if self.items:
            self._flush()
        self.next_step.join(deadline)

    def discard(self) -> None:
        self.items = []
        self.next_step.discard()

    def close(self) -> None:
        self.next_step.close()


class BatchScorer(Protocol):
    """Scores a stack of images [N, C, H, W] with a policy's 1C-Sum weights (None: uniform):
    (indicator name -> float64 [N], predicted class [N]). Raises PolicyRefused when the weights
    do not fit the model."""

    def __call__(self, pixels: Sequence[Any], policy: Policy | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]: ...


class PolicyRefused(Exception):
    """The scorer cannot apply a policy's 1C-Sum weights (they name other members than its own)."""


class ForwardStep:
    """Base of the steps that transform a whole batch and pass it on."""

    next_step: Step

    def congested(self) -> bool:
        return self.next_step.congested()

    def poll(self) -> None:
        self.next_step.poll()

    def join(self, deadline: float | None = None) -> None:
        self.next_step.join(deadline)

    def discard(self) -> None:
        self.next_step.discard()

    def close(self) -> None:
        self.next_step.close()


UNSCORABLE = "unscorable"
"""Reject reason of an image the decoder accepted but the Scorer refused (an InputError)."""


class PolicyStep(ForwardStep):
    """Attach the active policy to a batch before it is scored: the batch is scored with its 1C-Sum
    weights and judged by its threshold, so a policy replaced meanwhile is never half-applied."""

    def __init__(self, next_step: Step, current_policy: Callable[[], Policy | None]):
        self.next_step = next_step
        self.current_policy = current_policy

    def submit(self, batch: Batch) -> None:
        batch.policy = self.current_policy() if batch.images else None
        self.next_step.submit(batch)


class ScoreStep(ForwardStep):
    """Score the batch's images in one pass on the model's device.

    If the Scorer refuses the batch because of its input, the images are scored one by one and the
    ones it refuses become rejects (`unscorable`): one bad input never stops the stream. Any other
    failure (the device itself) stops the daemon, and the batch is replayed after restart.
    """

    def __init__(self, next_step: Step, scorer: BatchScorer):
        self.next_step = next_step
        self.scorer = scorer

    def _one_by_one(self, images: list[Decoded], policy: Policy | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        scored: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        for item in images:
            try:
                scored.append(self.scorer([item.pixels], policy))
            except InputError as error:
                log.warning("%s/%s/%s: the scorer refused the image: %s", item.message.topic,
                            item.message.partition, item.message.offset, error)
                item.reject_reason, item.reject_detail = UNSCORABLE, str(error)[:500]
        if not scored:
            return {}, np.zeros(0, dtype=np.int64)
        names = scored[0][0].keys()
        return ({name: np.concatenate([values[name] for values, _ in scored]) for name in names},
                np.concatenate([predicted for _, predicted in scored]))

    def process(self, batch: Batch) -> Batch:
        """Score the batch in place (callable from a worker thread: see build_pipeline)."""
        images = batch.images
        if images:
            started = time.perf_counter()
            pixels = [item.pixels for item in images]
            try:
                try:
                    batch.scores, batch.predicted = self.scorer(pixels, batch.policy)
                except PolicyRefused as error:
                    # Scores made with other weights must not be judged by this policy's threshold.
                    log.error("policy #%s not applied (%s): scoring with uniform 1C-Sum weights and "
                              "flagging nothing until a policy that fits the model is stored",
                              batch.policy.version if batch.policy else None, error)
                    batch.policy = None
                    batch.scores, batch.predicted = self.scorer(pixels, None)
            except InputError as error:
                log.warning("the scorer refused a batch (%s); scoring its images one by one", error)
                batch.scores, batch.predicted = self._one_by_one(images, batch.policy)
            batch.score_seconds = time.perf_counter() - started
        batch.scored_at = utc_now()
        return batch

    def submit(self, batch: Batch) -> None:
        self.next_step.submit(self.process(batch))


class JudgeStep(ForwardStep):
    """Compare the chosen indicator with the threshold of the batch's policy (the one it was scored
    with) that judges each sample: its predicted class's own threshold when the policy has one,
    else the global one. Above it, a sample is flagged. No policy: nothing is flagged."""

    def __init__(self, next_step: Step, indicator: str):
        self.next_step = next_step
        self.indicator = indicator

    def submit(self, batch: Batch) -> None:
        count = len(batch.images)
        values = batch.scores.get(self.indicator)
        if batch.policy is None or values is None:
            batch.flagged = np.zeros(count, dtype=bool)
        else:
            with np.errstate(invalid="ignore"):
                # NaN: not flagged
                batch.flagged = batch.policy.thresholds.judge(np.asarray(values, dtype=np.float64), batch.predicted)
        self.next_step.submit(batch)


def keeps_image(position: tuple[str, int, int], share: float) -> bool:
    """Whether an unflagged image's bytes are kept: a fixed hash of its position, so replays agree."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{position[0]}/{position[1]}/{position[2]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "bmp": "image/bmp",
                "npy": "application/x-npy"}


class StoreStep(ForwardStep):
    """Turn the batch into score rows and reject rows and write them in one transaction.

    A failed write is retried with a capped, doubling wait; the batch does not move on (so nothing
    is committed) until it is stored. Replays are absorbed by the store's unique source position.
    """

    def __init__(self, next_step: Step, write: Callable[..., WriteResult], *, model_id: int, indicator: str,
                 keep_image_share: float, shutdown: Shutdown, retry_initial_s: float, retry_max_s: float,
                 on_failure: Callable[[Exception], None] | None = None):
        self.next_step = next_step
        self.write = write
        self.model_id = model_id
        self.indicator = indicator
        self.keep_image_share = keep_image_share
        self.shutdown = shutdown
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_failure = on_failure

    def records(self, batch: Batch) -> tuple[list[ScoredSample], list[RejectRecord]]:
        samples = []
        policy = batch.policy
        for index, item in enumerate(batch.images):
            message = item.message
            scores = {name: float(values[index]) for name, values in batch.scores.items()}
            flagged = bool(batch.flagged[index])
            image = None
            if message.value and (flagged or keeps_image(message.position, self.keep_image_share)):
                image = ImageBlob(content_type=_IMAGE_TYPES.get(item.image_format or "", "application/octet-stream"),
                                  data=message.value)
            samples.append(ScoredSample(
                topic=message.topic, partition=message.partition, offset=message.offset,
                sample_key=message.sample_key, model_id=self.model_id, received_at=message.received_at,
                scored_at=batch.scored_at or utc_now(), predicted_class=int(batch.predicted[index]),
                scores=scores, flagged=flagged, score=scores.get(self.indicator),
                score_indicator=self.indicator if self.indicator in scores else None,
                threshold_id=policy.version if policy else None,
                produced_at=message.produced_at, image=image,
            ))
        rejects = [
            RejectRecord(topic=item.message.topic, partition=item.message.partition, offset=item.message.offset,
                         sample_key=item.message.sample_key, reason=item.reject_reason or "corrupt",
                         detail=item.reject_detail or "", size=item.message.size,
                         received_at=item.message.received_at)
            for item in batch.rejected
        ]
        return samples, rejects

    def process(self, batch: Batch) -> Batch:
        batch.samples, batch.rejects = self.records(batch)
        batch.write_result = retry_until_done(
            lambda: self.write(samples=batch.samples, rejects=batch.rejects), "storing a batch", self.shutdown,
            self.retry_initial_s, self.retry_max_s, self.on_failure)
        return batch

    def submit(self, batch: Batch) -> None:
        self.next_step.submit(self.process(batch))


class Producer(Protocol):
    """What PublishStep needs of a Kafka producer (kafka-python's KafkaProducer fits)."""

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...


class PublishStep(ForwardStep):
    """Send a dead-letter message per reject and an alert per flagged sample; wait for the broker's
    acknowledgement before the batch moves on to the commit (retrying like the store)."""

    def __init__(self, next_step: Step, producer: Producer, *, dead_letter_topic: str, alerts_topic: str | None,
                 group_id: str, model_name: str, shutdown: Shutdown, retry_initial_s: float, retry_max_s: float,
                 class_name: Callable[[int], str | None] = lambda index: None,
                 on_alert: Callable[[dict[str, Any]], None] | None = None, send_timeout_s: float = 30.0):
        self.next_step = next_step
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.alerts_topic = alerts_topic
        self.group_id = group_id
        self.model_name = model_name
        self.shutdown = shutdown
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.class_name = class_name
        self.on_alert = on_alert
        self.send_timeout_s = send_timeout_s

    def documents(self, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        dead_letters = [dead_letter_document(item.message, item.reject_reason or "corrupt", item.reject_detail or "",
                                             group_id=self.group_id) for item in batch.rejected]
        alerts = []
        if self.alerts_topic is None:
            return dead_letters, alerts
        sample_ids = batch.write_result.sample_ids if batch.write_result else {}
        replayed = batch.write_result.replayed if batch.write_result else {}
        for sample in batch.samples:
            stored = replayed.get(sample.position)
            if stored is not None:
                # A replay (after a crash or a rebalance) alerts on what the store says: the
                # threshold may have changed since the row was written, the judgement may not.
                if not stored.flagged:
                    continue
                judged = (stored.score, stored.indicator or self._indicator(batch), stored.threshold,
                          stored.threshold_id, stored.sample_id)
            elif sample.flagged and batch.policy is not None:
                judged = (sample.score, batch.policy.indicator,
                          batch.policy.thresholds.threshold_of(sample.predicted_class),
                          batch.policy.version, sample_ids.get(sample.position))
            else:
                continue
            score, indicator, threshold, threshold_id, sample_id = judged
            alerts.append(flagged_sample_alert(
                sample_key=sample.sample_key, position=sample.position, score=score, indicator=indicator,
                threshold=threshold, threshold_id=threshold_id, model_id=sample.model_id,
                model_name=self.model_name, predicted_class=sample.predicted_class, sample_id=sample_id,
                time=sample.scored_at, class_name=self.class_name(sample.predicted_class)))
        return dead_letters, alerts

    @staticmethod
    def _indicator(batch: Batch) -> str | None:
        return batch.policy.indicator if batch.policy is not None else None

    def _send(self, topic: str, document: dict[str, Any]) -> Any:
        return self.producer.send(topic, encode_json(document), key=message_key(document))

    def _send_all(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        # A dead letter too large for the broker is sent again without the original bytes: retrying
        # it unchanged would block the batch forever (its source position still holds the bytes).
        sent = []
        for topic, document in messages:
            try:
                sent.append((topic, document, self._send(topic, document)))
            except MessageSizeTooLargeError:
                if document.get("kind") != DEAD_LETTER_KIND:
                    raise
                sent.append((topic, document, self._send(topic, stripped_dead_letter(document))))
        self.producer.flush(self.send_timeout_s)
        for topic, document, future in sent:
            try:
                future.get(timeout=self.send_timeout_s)  # raises if the broker refused it
            except MessageSizeTooLargeError:
                if document.get("kind") != DEAD_LETTER_KIND or document.get("value_base64") is None:
                    raise
                retry = self._send(topic, stripped_dead_letter(document))
                self.producer.flush(self.send_timeout_s)
                retry.get(timeout=self.send_timeout_s)

    def process(self, batch: Batch) -> Batch:
        dead_letters, alerts = self.documents(batch)
        messages = [(self.dead_letter_topic, doc) for doc in dead_letters]
        messages += [(self.alerts_topic, doc) for doc in alerts]
        if messages:
            retry_until_done(lambda: self._send_all(messages), "publishing dead letters and alerts", self.shutdown,
                             self.retry_initial_s, self.retry_max_s)
        if self.on_alert:
            for document in alerts:
                self.on_alert(document)
        return batch

    def submit(self, batch: Batch) -> None:
        self.next_step.submit(self.process(batch))


class InlineStep(ForwardStep):
    """Run `work(item)` on the caller's thread and hand the result on: the chain of a worker that
    keeps every step on one thread (no Python thread beside the Scorer, see docs/daemon.md)."""

    def __init__(self, next_step: Step, work: Callable[[Any], Any]):
        self.next_step = next_step
        self.work = work

    def submit(self, item: Any) -> None:
        self.next_step.submit(self.work(item))


class WorkerStep(OrderedPoolStep):
    """Run `work(batch)` on one worker thread while the chain before it goes on (messages are
    consumed, decoded and scored meanwhile); results move on in order, on the caller's thread.
    At most `max_pending` batches wait.
    """

    def __init__(self, next_step: Step, work: Callable[[Batch], Batch], max_pending: int = 2,
                 name: str = "store"):
        super().__init__(next_step, work, threads=1, max_pending=max_pending, name=name)


class CommitStep:
    """The end of the chain: commit the offsets of a stored batch, then tell the observers."""

    def __init__(self, commit: Callable[[dict[tuple[str, int], int]], None],
                 observers: Sequence[Callable[[Batch], None]] = ()):
        self.commit = commit
        self.observers = list(observers)

    def submit(self, batch: Batch) -> None:
        offsets = batch.offsets()
        try:
            self.commit(offsets)
        except Exception as error:  # noqa: BLE001 - a lost partition cannot commit; its new owner replays
            log.warning("could not commit offsets %s (partitions reassigned?): %s; they will be consumed again "
                        "and absorbed as replays", offsets, error)
        for observe in self.observers:
            try:
                observe(batch)
            except Exception:  # noqa: BLE001 - an observer (metrics, console) must not stop the stream
                log.exception("batch observer failed")

    def congested(self) -> bool:
        return False

    def poll(self) -> None:
        pass

    def join(self, deadline: float | None = None) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self) -> None:
        pass
