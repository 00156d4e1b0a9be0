"""Calls from the driver to shard actors: all at once, with a deadline, retried while a shard
restarts, never partial unless asked.

A call reaches each actor once, carrying the work of every shard it holds. Every shard
method is idempotent (an upsert replaces, a delete of what is gone deletes nothing), so a
call that met a dead or restarting actor is simply sent again until the deadline; Ray
restarts the actor (``max_restarts``), which reopens its directory. After the deadline,
:class:`ShardUnavailableError` names the shard.
"""

from __future__ import annotations

import time
from typing import Any, Sequence


class ShardUnavailableError(RuntimeError):
    """A shard did not answer in time (dead, restarting, or out of restarts)."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"{shard} is unavailable: {reason}")
        self.shard = shard


def ray_module() -> Any:
    """``ray``, or an ImportError saying which extra installs it."""
    try:
        import ray
    except ImportError:
        raise ImportError("vecpress.distributed needs Ray: pip install 'vecpress[ray]'") from None
    return ray


def call_shards(actors: Sequence[Any], placement: Sequence[tuple[int, int]],
                names: Sequence[str], method: str, calls: dict[int, tuple], *, timeout: float,
                max_restarts: int, allow_partial: bool = False) -> dict[int, Any]:
    """Run ``method(*args)`` on the shards ``calls`` names (``{shard number: args}``), all
    at once, one Ray call per actor (``placement[shard]`` is ``(actor number, the shard's
    number in that actor)``, see :class:`~vecpress.distributed.shard.ShardHost`); their
    answers by shard number.

    An actor that is dead or restarting is asked again until ``timeout`` seconds have passed
    (at once an error when it cannot restart, ``max_restarts=0``); then
    :class:`ShardUnavailableError` naming its first shard. With ``allow_partial`` the shards of
    an actor that fails or is late are left out of the answers instead. An error the method
    itself raises (a bad filter, say) is raised as it is."""
    ray = ray_module()
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError
    from ray.exceptions import RayActorError

    if not calls:
        return {}
    shards_of: dict[int, list[int]] = {}
    for s in calls:
        shards_of.setdefault(placement[s][0], []).append(s)

    def submit(host: int) -> Any:
        items = [(placement[s][1], calls[s]) for s in shards_of[host]]
        return actors[host].call.remote(method, items)

    def unpack(host: int, results: list[Any]) -> dict[int, Any]:
        return dict(zip(shards_of[host], results))

    def unavailable(host: int, reason: str) -> ShardUnavailableError:
        held = [names[s] for s, (h, _) in enumerate(placement) if h == host]
        first = names[shards_of[host][0]]
        others = [name for name in held if name != first]
        if others:
            reason += f" (its actor also holds {', '.join(others)})"
        return ShardUnavailableError(first, reason)

    deadline = time.monotonic() + timeout
    pending = {submit(h): h for h in shards_of}
    try:  # the usual case: every actor answers in time, fetched in one call
        answers: dict[int, Any] = {}
        for h, results in zip(pending.values(), ray.get(list(pending), timeout=timeout)):
            answers.update(unpack(h, results))
        return answers
    except (RayActorError, ActorUnavailableError, GetTimeoutError):
        pass  # sort out who answered; send the others again (their calls are still pending)
    answers = {}
    failures: dict[int, str] = {}
    while pending:
        remaining = deadline - time.monotonic()
        ready, _ = ray.wait(list(pending), num_returns=len(pending),
                            timeout=max(remaining, 0.0), fetch_local=True)
        if not ready:
            late = sorted(pending.values())
            if allow_partial:
                return answers
            reason = failures.get(late[0], f"no answer within timeout={timeout} s")
            raise unavailable(late[0], reason)
        for ref in ready:
            h = pending.pop(ref)
            try:
                answers.update(unpack(h, ray.get(ref)))
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                failures[h] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if allow_partial:
                    continue
                permanent = isinstance(exc, ActorDiedError) and max_restarts == 0
                if permanent or time.monotonic() >= deadline:
                    raise unavailable(h, failures[h]) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
                pending[submit(h)] = h
    return answers
