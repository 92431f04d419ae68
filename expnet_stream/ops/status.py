"""The worker's lifecycle status and the liveness/readiness facts it feeds to ``/healthz`` and ``/readyz``.

The worker's main thread writes facts (a loop tick, partitions assigned, engine loaded, broker reachable, phase); the
health server's thread reads a :class:`HealthSnapshot`. Writes are single attribute stores and the snapshot is taken
under a lock, so no torn reads.

Example:
    >>> h = WorkerHealth(liveness_timeout_s=30.0)
    >>> h.status
    <WorkerStatus.STARTING: 'starting'>
    >>> h.set_running(); h.set_engine_loaded(True); h.set_broker_reachable(True); h.set_assigned(2)
    >>> h.status, h.snapshot().ready
    (<WorkerStatus.READY: 'ready'>, True)
    >>> h.set_assigned(0); h.status
    <WorkerStatus.NOT_READY: 'not_ready'>
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class WorkerStatus(enum.StrEnum):
    """Lifecycle of a worker as operators see it (``/readyz`` is 200 only in READY)."""

    STARTING = "starting"  # building the engine, joining the group
    READY = "ready"  # running, partitions assigned, engine loaded, broker reachable
    NOT_READY = "not_ready"  # running but a readiness check fails (no partitions, broker unreachable, ...)
    DRAINING = "draining"  # SIGTERM or stop(): no more polling; flushing, publishing, committing
    STOPPED = "stopped"  # the main loop has exited


class _Phase(enum.Enum):
    STARTING = 0
    RUNNING = 1
    DRAINING = 2
    STOPPED = 3


@dataclass(frozen=True)
class HealthSnapshot:
    """What ``/healthz`` and ``/readyz`` report."""

    status: WorkerStatus
    alive: bool
    ready: bool
    last_tick_age_s: float | None
    checks: dict[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "alive": self.alive,
            "ready": self.ready,
            "last_tick_age_s": None if self.last_tick_age_s is None else round(self.last_tick_age_s, 3),
            "checks": dict(self.checks),
        }


class WorkerHealth:
    """Facts the worker reports about itself; derives :class:`WorkerStatus`, liveness and readiness.

    Args:
        liveness_timeout_s: alive while the main loop ticked within this many seconds (or has not started yet).
        ready_requires_partitions: ready only with at least one assigned partition; with ``False`` a member that
            joined the group with an empty assignment (more replicas than partitions) counts as ready.
        startup_timeout_s: alive while STARTING for at most this long (engine load, first group join).
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        liveness_timeout_s: float = 60.0,
        *,
        ready_requires_partitions: bool = True,
        startup_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.ready_requires_partitions = ready_requires_partitions
        self._clock = clock
        self._lock = threading.RLock()  # re-entrant: stop() may run in a signal handler on the main thread
        self._phase = _Phase.STARTING
        self._last_tick: float | None = None
        self._started = clock()
        self._assigned = 0
        self._joined = False
        self._engine_loaded = False
        self._broker_reachable = False

    # ---------------------------------------------------------------- writers (worker thread)
    def tick(self) -> None:
        """Call once per main-loop iteration."""
        self._last_tick = self._clock()

    def set_running(self) -> None:
        """The main loop has started polling."""
        with self._lock:
            if self._phase is _Phase.STARTING:
                self._phase = _Phase.RUNNING
            self._last_tick = self._clock()

    def set_draining(self) -> None:
        """Stop requested: the worker drains, publishes and commits before it stops."""
        with self._lock:
            if self._phase is not _Phase.STOPPED:
                self._phase = _Phase.DRAINING

    def set_stopped(self) -> None:
        with self._lock:
            self._phase = _Phase.STOPPED

    def set_assigned(self, partitions: int) -> None:
        """Partitions currently assigned (after every assign/revoke/lost callback); marks the group joined."""
        with self._lock:
            self._assigned = max(0, int(partitions))
            self._joined = True

    def set_engine_loaded(self, loaded: bool) -> None:
        self._engine_loaded = bool(loaded)

    def set_broker_reachable(self, reachable: bool) -> None:
        """True after a successful broker round trip (assignment, commit, flush); False after a broker error."""
        self._broker_reachable = bool(reachable)

    # ---------------------------------------------------------------- readers (any thread)
    @property
    def status(self) -> WorkerStatus:
        return self.snapshot().status

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            now = self._clock()
            phase = self._phase
            age = None if self._last_tick is None else max(0.0, now - self._last_tick)
            partitions_ok = self._assigned > 0 if self.ready_requires_partitions else self._joined
            checks = {
                "partitions_assigned": partitions_ok,
                "engine_loaded": self._engine_loaded,
                "broker_reachable": self._broker_reachable,
            }
        if phase is _Phase.STARTING:
            # not ticking yet: loading the engine and joining the group may take a while
            alive = now - self._started <= self.startup_timeout_s
            status = WorkerStatus.STARTING
        elif phase is _Phase.STOPPED:
            alive = False
            status = WorkerStatus.STOPPED
        else:
            alive = age is not None and age <= self.liveness_timeout_s
            if phase is _Phase.DRAINING:
                status = WorkerStatus.DRAINING
            else:
                status = WorkerStatus.READY if all(checks.values()) else WorkerStatus.NOT_READY
        ready = status is WorkerStatus.READY and alive
        return HealthSnapshot(status=status, alive=alive, ready=ready, last_tick_age_s=age, checks=checks)
