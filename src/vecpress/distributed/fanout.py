"""Calls from the driver to shard actors: all at once, with a deadline, retried while a shard
restarts, never partial unless asked.

Every shard method is idempotent (an upsert replaces, a delete of what is gone deletes
nothing), so a call that met a dead or restarting actor is simply sent again until the
deadline; Ray restarts the actor (``max_restarts``), which reopens its directory. After the
deadline, :class:`ShardUnavailableError` names the shard.
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


def call_shards(actors: Sequence[Any], names: Sequence[str], method: str,
                calls: dict[int, tuple], *, timeout: float, max_restarts: int,
                allow_partial: bool = False) -> dict[int, Any]:
    """Run ``method(*args)`` on the shards ``calls`` names (``{shard number: args}``), all
    at once; their answers by shard number.

    A shard that is dead or restarting is asked again until ``timeout`` seconds have passed
    (at once an error when it cannot restart, ``max_restarts=0``); then
    :class:`ShardUnavailableError`. With ``allow_partial`` a shard that fails or is late is
    left out of the answers instead. An error the method itself raises (a bad filter, say)
    is raised as it is."""
    ray = ray_module()
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError
    from ray.exceptions import RayActorError

    if not calls:
        return {}

    def submit(shard: int, args: tuple) -> Any:
        return getattr(actors[shard], method).remote(*args)

    deadline = time.monotonic() + timeout
    pending = {submit(s, args): s for s, args in calls.items()}
    try:  # the usual case: every shard answers in time, fetched in one call
        return dict(zip(pending.values(), ray.get(list(pending), timeout=timeout)))
    except (RayActorError, ActorUnavailableError, GetTimeoutError):
        pass  # sort out who answered; send the others again (their calls are still pending)
    answers: dict[int, Any] = {}
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
            raise ShardUnavailableError(names[late[0]], reason)
        for ref in ready:
            s = pending.pop(ref)
            try:
                answers[s] = ray.get(ref)
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                failures[s] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if allow_partial:
                    continue
                permanent = isinstance(exc, ActorDiedError) and max_restarts == 0
                if permanent or time.monotonic() >= deadline:
                    raise ShardUnavailableError(names[s], failures[s]) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
                pending[submit(s, calls[s])] = s
    return answers
