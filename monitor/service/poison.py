"""A message that crashes the decoder (a fault in a native image library) must end as a reject and
a dead letter, not as a worker that dies on it again and again.

Each scoring worker notes in a few shared integers (`DecodeSlot`, memory its supervisor also sees)
the position of the message it is decoding, and clears it after. When a worker dies of a crash
signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL: not SIGKILL or SIGTERM, which say nothing about
the message) while the slot is set, the supervisor records that position as poison and tells every
worker, present and future; whichever worker meets the message again rejects it without decoding
it. The rest of the dead worker's batch was not committed: it is consumed again and stored once.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL})
IDLE, DECODING = 0, 1
Position = tuple[str, int, int]


def new_slot(context: Any) -> Any:
    """[state, topic index, partition, offset] in memory shared with a spawned child (an unlinked
    file in /dev/shm: nothing to clean up, however the processes end)."""
    return context.RawArray("q", 4)


def crashed_on(slot: Any, exitcode: int | None, topics: Sequence[str]) -> Position | None:
    """The position a worker was decoding when it died of a crash signal; None otherwise."""
    if exitcode is None or exitcode >= 0 or -exitcode not in CRASH_SIGNALS or slot[0] != DECODING:
        return None
    index = slot[1]
    if not 0 <= index < len(topics):
        return None
    return topics[index], int(slot[2]), int(slot[3])


def poison_detail(exitcode: int) -> str:
    return (f"decoding this message crashed the worker process ({signal.Signals(-exitcode).name}); "
            "it is not decoded again")


class DecodeGuard:
    """Worker side: wraps the decoder, notes each position in the slot, rejects known poison."""

    def __init__(self, slot: Any, topics: Sequence[str], poison: dict[Position, str] | None = None):
        self.slot = slot
        self.topic_index = {topic: index for index, topic in enumerate(topics)}
        self.poison: dict[Position, str] = dict(poison or {})

    def learn(self, poison: dict[Position, str]) -> None:
        self.poison.update(poison)

    def __call__(self, decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
        from monitor.stream.steps import Decoded

        slot, topic_index, poison = self.slot, self.topic_index, self.poison

        def guarded(message: Any) -> Any:
            detail = poison.get((message.topic, message.partition, message.offset)) if poison else None
            if detail is not None:
                log.warning("%s/%s/%s: %s", message.topic, message.partition, message.offset, detail)
                return Decoded(message, reject_reason="corrupt", reject_detail=detail)
            slot[1] = topic_index.get(message.topic, -1)
            slot[2] = message.partition
            slot[3] = message.offset
            slot[0] = DECODING
            try:
                return decode(message)
            finally:
                slot[0] = IDLE

        return guarded
