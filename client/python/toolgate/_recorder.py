"""The background recorder: a bounded buffer drained over one ``Events.Stream``.

Contract:

* ``record()`` never blocks and never does I/O: it appends to an in-memory buffer bounded by
  ``max_buffered`` events (sent but unacknowledged ones included). When the buffer is full the
  new event is dropped and counted; nothing else is ever dropped silently.
* One background thread keeps one bidirectional stream open while there is something to send.
  Each ``StreamRequest`` carries a batch of what is waiting and a sequence number; the daemon
  acknowledges each batch, once durable, by that number. At most ``window`` batches are in
  flight (the daemon's own read window is ``ingest.stream_window``, 64 by default).
* When the stream breaks (daemon restarted, socket gone), the unacknowledged batches go back to
  the head of the buffer in their original order and are sent again on the next stream, with
  the same ``event_id`` (the client sets it, so a resend is recognisable downstream). A batch
  that was durable but whose acknowledgement was lost is therefore stored twice under the same
  id: delivery is at least once, deduplicated by ``event_id``.
* Acknowledgements with an error: ``RESOURCE_EXHAUSTED`` (spool full) and other transient codes
  put the batch back and pause sending (the daemon's ``retry_after_ms``, or a backoff).
  ``INVALID_ARGUMENT`` and other permanent codes refuse a whole batch for one bad event, so the
  batch is split and its events sent one by one; an event refused alone is counted as
  ``rejected`` and not retried.

Thread-safety: every public method may be called from any thread. All state is guarded by
``_cv``; the gRPC request iterator (run by a gRPC thread) and the reader thread take it too.
"""
from __future__ import annotations

import collections
import heapq
import logging
import random
import threading
import time
from typing import Deque, Dict, Iterator, List, Optional

import grpc

from .types import RecorderStats
from .v1 import events_pb2, events_pb2_grpc

log = logging.getLogger("toolgate")

# Codes of a batch acknowledgement that will not change if the same batch is sent again.
_PERMANENT = frozenset(c.value[0] for c in (
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED))
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class _Item:
    """One buffered event. ``index`` orders events by arrival; ``solo`` sends it alone."""

    __slots__ = ("index", "event", "size", "solo", "sent")

    def __init__(self, index: int, event: events_pb2.Event, size: int) -> None:
        self.index = index
        self.event = event
        self.size = size
        self.solo = False
        self.sent = False

    def __lt__(self, other: "_Item") -> bool:
        return self.index < other.index


class Recorder:
    """Sends events to the daemon in the background. See the module comment for the contract."""

    def __init__(self, channel: grpc.Channel, *, max_buffered: int = 10000,
                 max_batch_events: int = 500, max_batch_bytes: int = 4 << 20,
                 window: int = 32, reconnect_initial: float = 0.05,
                 reconnect_max: float = 2.0) -> None:
        if max_buffered < 1 or max_batch_events < 1 or window < 1:
            raise ValueError("max_buffered, max_batch_events and window must be positive")
        self._stub = events_pb2_grpc.EventsStub(channel)
        self._max_buffered = max_buffered
        self._max_batch_events = max_batch_events
        self._max_batch_bytes = max_batch_bytes
        self._window = window
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max

        self._cv = threading.Condition()
        # All of the following are guarded by _cv.
        self._pending: Deque[_Item] = collections.deque()  # not in flight, ordered by index
        self._inflight: Dict[int, List[_Item]] = {}  # sequence -> batch, in sequence order
        self._unacked = 0  # len(_pending) + events in _inflight
        self._next_index = 0
        self._next_sequence = 1
        self._generation = 0  # bumped when a stream ends: its request iterator must stop
        self._pause_until = 0.0  # time.monotonic() before which nothing is sent
        self._closing = False  # no new events; half-close once everything is acknowledged
        self._stopped = False  # the thread must exit now
        self._call: Optional[grpc.Future] = None
        self._thread: Optional[threading.Thread] = None
        self._streams = 0
        self._acked = 0
        self._rejected = 0
        self._dropped = 0
        self._resent = 0
        self._last_error = ""

    # ---- the caller's side ------------------------------------------------------------------

    def record(self, event: events_pb2.Event) -> bool:
        """Buffers `event` (its ids already set). False if it was dropped (full, too large)."""
        size = event.ByteSize()
        with self._cv:
            if self._closing or self._unacked >= self._max_buffered or \
                    size > self._max_batch_bytes:
                self._dropped += 1
                if size > self._max_batch_bytes:
                    self._last_error = f"event {event.event_id} larger than {self._max_batch_bytes} bytes"
                return False
            self._pending.append(_Item(self._next_index, event, size))
            self._next_index += 1
            self._unacked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="toolgate-recorder",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()
            return True

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every event recorded before this call is acknowledged (or rejected).

        Returns False if `timeout` (seconds) passed first.
        """
        with self._cv:
            target = self._next_index
            return self._cv.wait_for(lambda: self._first_unsettled_locked() >= target, timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stops taking events, waits up to `timeout` for the rest to be acknowledged, stops.

        What is still unacknowledged at the deadline is counted as dropped. Returns True when
        nothing was dropped by the close. Idempotent.
        """
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            done = self._cv.wait_for(lambda: self._unacked == 0, timeout)
            self._stopped = True
            call, thread = self._call, self._thread
            self._cv.notify_all()
        if call is not None:
            call.cancel()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._cv:
            lost = self._unacked
            self._dropped += lost
            self._unacked = 0
            self._pending.clear()
            self._inflight.clear()
            self._cv.notify_all()
        if lost:
            log.warning("toolgate: %d event(s) not acknowledged at close; dropped", lost)
        return done and lost == 0

    def stats(self) -> RecorderStats:
        with self._cv:
            return RecorderStats(recorded=self._next_index, acked=self._acked,
                                 rejected=self._rejected, dropped=self._dropped,
                                 buffered=self._unacked, resent=self._resent,
                                 reconnects=max(0, self._streams - 1),
                                 last_error=self._last_error)

    # ---- the background side ----------------------------------------------------------------

    def _first_unsettled_locked(self) -> int:
        first = self._next_index
        if self._pending:
            first = min(first, self._pending[0].index)
        for batch in self._inflight.values():
            first = min(first, batch[0].index)
        return first

    def _requeue_locked(self, items: List[_Item]) -> None:
        """Puts `items` back among the pending ones, in arrival order."""
        for it in items:
            if it.sent:
                self._resent += 1
                it.sent = False
        self._pending = collections.deque(heapq.merge(sorted(items), self._pending))

    def _run(self) -> None:
        delay = self._reconnect_initial
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopped or self._unacked > 0)
                if self._stopped:
                    return
                generation = self._generation
                self._streams += 1
            progress = False
            error = ""
            try:
                call = self._stub.Stream(self._requests(generation), wait_for_ready=True)
                with self._cv:
                    self._call = call
                    stopped = self._stopped
                if stopped:
                    call.cancel()
                for ack in call:
                    self._on_ack(ack)
                    progress = True
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                details = e.details() if hasattr(e, "details") else str(e)
                error = f"stream: {code.name if code else 'error'}: {details}"
            with self._cv:
                self._call = None
                self._generation += 1  # stops this stream's request iterator
                if self._inflight:
                    items = [it for batch in self._inflight.values() for it in batch]
                    self._inflight.clear()
                    self._requeue_locked(items)
                if error:
                    self._last_error = error
                self._cv.notify_all()
                if self._stopped or (self._closing and self._unacked == 0):
                    return
                if progress:
                    delay = self._reconnect_initial
                wait = delay * (0.5 + random.random() / 2)  # jitter: clients do not stampede
                delay = min(delay * 2, self._reconnect_max)
                if error:
                    log.info("toolgate: %s; reconnecting in %.2fs (%d event(s) buffered)",
                             error, wait, self._unacked)
                if self._cv.wait_for(lambda: self._stopped, wait):
                    return

    def _requests(self, generation: int) -> Iterator[events_pb2.StreamRequest]:
        """The request side of one stream. Runs on a gRPC thread; ends with the stream."""
        while True:
            with self._cv:
                while True:
                    if self._generation != generation or self._stopped:
                        return
                    if self._closing and self._unacked == 0:
                        return  # everything acknowledged: half-close, the daemon finishes
                    now = time.monotonic()
                    if self._pending and len(self._inflight) < self._window and \
                            now >= self._pause_until:
                        break
                    self._cv.wait(self._pause_until - now
                                  if self._pending and now < self._pause_until else None)
                batch: List[_Item] = []
                size = 0
                while self._pending and len(batch) < self._max_batch_events:
                    it = self._pending[0]
                    if batch and (it.solo or size + it.size > self._max_batch_bytes):
                        break
                    self._pending.popleft()
                    it.sent = True
                    batch.append(it)
                    size += it.size
                    if it.solo:
                        break
                sequence = self._next_sequence
                self._next_sequence += 1
                self._inflight[sequence] = batch
                request = events_pb2.StreamRequest(sequence=sequence,
                                                   events=[it.event for it in batch])
            yield request

    def _on_ack(self, ack: events_pb2.StreamAck) -> None:
        with self._cv:
            batch = self._inflight.pop(ack.sequence, None)
            if batch is None:
                return  # not ours, or from a stream that already ended
            if ack.code == 0:
                self._acked += len(batch)
                self._unacked -= len(batch)
            elif ack.code in _PERMANENT and len(batch) > 1:
                for it in batch:  # one bad event refuses the batch: find it alone
                    it.solo = True
                self._requeue_locked(batch)
            elif ack.code in _PERMANENT:
                self._rejected += 1
                self._unacked -= 1
                self._last_error = f"event {batch[0].event.event_id} rejected: {ack.message}"
                log.warning("toolgate: %s", self._last_error)
            else:
                pause = ack.retry_after_ms / 1000.0 if ack.retry_after_ms else 1.0
                if ack.code != _RESOURCE_EXHAUSTED:
                    pause = max(pause, self._reconnect_initial)
                self._pause_until = max(self._pause_until, time.monotonic() + pause)
                self._last_error = f"batch refused (code {ack.code}): {ack.message}"
                self._requeue_locked(batch)
            self._cv.notify_all()
