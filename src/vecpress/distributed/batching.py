"""Coalesce searches that threads make at the same time into one call per shard.

Every shard call through Ray costs about a millisecond of CPU in the driver and in the actor,
whatever it carries, so on a busy driver (a web server answering many users at once) the
calls, not the searches, would bound the query rate. :class:`QueryBatcher` lets the queries
that arrive while earlier ones are in flight travel together: the first thread of a kind
becomes the leader and sends its query at once (a lone query waits for nothing); threads that
arrive while ``max_in_flight`` batches of their kind are out queue up, and when a batch comes
back the oldest waiting thread leads everything queued so far as the next batch. No timer, so
no added latency; a batch holds only queries with the same key (same ``k``, filter and
options), which is what lets one shard call answer them all.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable

#: batches of one key a driver keeps in flight at once (two keep a shard busy while the
#: driver merges the other's answers)
MAX_IN_FLIGHT = 2


class _Request:
    __slots__ = ("query", "event", "batch", "value", "error")

    def __init__(self, query: Any) -> None:
        self.query = query
        self.event = threading.Event()
        #: the batch this request's thread must send (it leads), else None
        self.batch: list[_Request] | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class QueryBatcher:
    """Runs ``run(key, queries) -> answers`` (one answer per query, in order) on batches of
    the queries that :meth:`submit` receives concurrently under the same ``key``."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]],
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._run = run
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[_Request]] = {}
        self._in_flight: dict[Hashable, int] = {}

    def submit(self, key: Hashable, query: Any) -> Any:
        """The answer to ``query``, computed alone or in a batch with concurrent ones."""
        request = _Request(query)
        with self._lock:
            self._waiting.setdefault(key, []).append(request)
            if self._in_flight.get(key, 0) < self._max_in_flight:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                request.batch = self._waiting.pop(key)
        if request.batch is None:
            request.event.wait()
        if request.batch is not None:
            self._lead(key, request.batch)
        if request.error is not None:
            raise request.error
        return request.value

    def _lead(self, key: Hashable, batch: list[_Request]) -> None:
        try:
            answers = self._run(key, [r.query for r in batch])
            for request, answer in zip(batch, answers):
                request.value = answer
        except BaseException as exc:  # every query of the batch gets the error
            for request in batch:
                request.error = exc
        finally:
            with self._lock:
                queued = self._waiting.pop(key, None)
                if queued:  # the oldest waiting thread leads everything queued, next
                    queued[0].batch = queued
                    queued[0].event.set()
                else:
                    self._in_flight[key] -= 1
                    if not self._in_flight[key]:
                        del self._in_flight[key]
            for request in batch:
                request.event.set()
