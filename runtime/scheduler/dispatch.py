"""Priority dispatch: earliest-deadline-first onto per-device worker pools, with admission control.

A request is admitted only if its tenant has a token (token bucket per tenant, from the policy) and
its deadline is still reachable given the work already ahead of it on that device's pool. Rejecting
at the door with a clear error beats accepting a ``stat`` request that is already certain to be late.
Dispatch is non-preemptive: a running request finishes; EDF decides who runs next.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sealinfer.runtime.errors import (
    ConfigurationError,
    DeadlineInfeasibleError,
    QuotaExceededError,
    SealinferError,
)
from sealinfer.runtime.scheduler.devices import DeviceDescriptor
from sealinfer.runtime.scheduler.policy import PlacementPolicy, TenantQuota

DISCIPLINES = ("edf", "fifo")


class DispatcherClosedError(SealinferError):
    code = "dispatcher_closed"


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; not thread-safe (the dispatcher holds its lock)."""

    def __init__(self, quota: TenantQuota, now: float) -> None:
        self.rate, self.burst = quota.rate_per_s, quota.burst
        self.tokens, self.stamp = quota.burst, now

    def take(self, now: float) -> float:
        """Take one token; returns 0.0 on success, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def refund(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)


@dataclass
class RequestRecord:
    """Timeline of one request (monotonic seconds), handed to the observer when it finishes."""

    priority: str
    tenant: str
    device: str
    predicted_s: float
    submitted: float
    deadline: float
    started: float = 0.0
    finished: float = 0.0
    ok: bool = False

    @property
    def met_deadline(self) -> bool:
        return self.ok and self.finished <= self.deadline

    @property
    def queue_s(self) -> float:
        return self.started - self.submitted

    @property
    def run_s(self) -> float:
        return self.finished - self.started


@dataclass(order=True)
class _Item:
    sort_key: tuple[float, int]
    fn: Callable[[], Any]
    future: Future
    record: RequestRecord


class _Pool:
    def __init__(self, device_id: str, workers: int) -> None:
        self.device_id = device_id
        self.workers = workers
        self.heap: list[_Item] = []
        self.queued_work = 0.0  # sum of predicted_s over the heap, kept so admission rarely scans it
        self.running: dict[int, RequestRecord] = {}  # worker index -> record
        self.threads: list[threading.Thread] = []


class Dispatcher:
    """Queues requests by deadline per device pool; ``submit`` returns a Future.

    ``pools`` maps device id to worker count (or is a list of descriptors: one worker each — a
    device's parallelism lives in its session's intra-op threads). ``discipline="fifo"`` with
    ``admission=False, quotas=False`` is the plain baseline the benchmark compares against.
    """

    def __init__(self, pools: Mapping[str, int] | Iterable[DeviceDescriptor], policy: PlacementPolicy, *,
                 discipline: str = "edf", admission: bool = True, quotas: bool = True,
                 observer: Callable[[RequestRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if discipline not in DISCIPLINES:
            raise ConfigurationError(f"unknown discipline {discipline!r}.", hint="Use 'edf' or 'fifo'.")
        sizes = dict(pools) if isinstance(pools, Mapping) else {d.id: 1 for d in pools}
        if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes.values()):
            raise ConfigurationError("every device pool needs at least one worker.",
                                     hint="Pass {device_id: workers} with workers >= 1.")
        self.policy = policy
        self.discipline = discipline
        self.admission = admission
        self.quotas = quotas
        self.observer = observer
        self.clock = clock
        self._pools = {device_id: _Pool(device_id, n) for device_id, n in sizes.items()}
        self._buckets: dict[str, TokenBucket] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.rejected = {"quota": 0, "deadline": 0}
        for pool in self._pools.values():
            for index in range(pool.workers):
                thread = threading.Thread(target=self._work, args=(pool, index), daemon=True,
                                          name=f"sealinfer-{pool.device_id}-{index}")
                pool.threads.append(thread)
                thread.start()

    # --- admission ---------------------------------------------------------------------------

    def _pool_for(self, device: str | None) -> _Pool:
        if device is None:
            if len(self._pools) == 1:
                return next(iter(self._pools.values()))
            raise ConfigurationError("this dispatcher has several device pools; say which device runs the request.",
                                     hint="Pass device=placement.device.id.")
        pool = self._pools.get(device)
        if pool is None:
            raise ConfigurationError(f"no worker pool for device {device!r}.",
                                     hint=f"Known pools: {', '.join(self._pools)}.")
        return pool

    def _estimated_finish(self, pool: _Pool, now: float, deadline: float, predicted_s: float) -> float:
        """When this request would finish: work ahead of it (EDF order) spread over the pool's workers."""
        busy = sum(max(r.started + r.predicted_s - now, 0.0) for r in pool.running.values())
        bound = now + (busy + pool.queued_work) / pool.workers + predicted_s
        if self.discipline == "fifo" or bound <= deadline:
            return bound  # even all queued work ahead of it fits: no need to scan the heap
        ahead = sum(i.record.predicted_s for i in pool.heap if i.record.deadline <= deadline)
        return now + (busy + ahead) / pool.workers + predicted_s

    def submit(self, fn: Callable[[], Any], *, priority: str, tenant: str, deadline_s: float | None = None,
               predicted_s: float, device: str | None = None) -> Future:
        """Admit ``fn`` (called with no arguments on a worker) or raise why it cannot be admitted.

        ``deadline_s`` is relative to now (default: the priority class's deadline); ``predicted_s`` is
        the calibrated placement estimate used for admission control.
        """
        class_deadline = self.policy.deadline_for(priority)
        relative = class_deadline if deadline_s is None else deadline_s
        if not (isinstance(predicted_s, int | float) and math.isfinite(predicted_s) and predicted_s >= 0):
            raise ConfigurationError(f"predicted_s must be a finite number >= 0, got {predicted_s!r}.",
                                     hint="Pass placement.predicted_latency_s.")
        if not (isinstance(relative, int | float) and relative > 0):
            raise ConfigurationError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}.",
                                     hint="Omit it to use the priority class's deadline.")
        pool = self._pool_for(device)
        with self._cond:
            if self._closed:
                raise DispatcherClosedError("the dispatcher is closed.", hint="Create a new one.")
            now = self.clock()
            deadline = now + relative
            bucket = None
            if self.quotas:
                quota = self.policy.quota_for(tenant)
                if quota is None:
                    self.rejected["quota"] += 1
                    raise QuotaExceededError(f"tenant {tenant!r} has no quota in policy {self.policy.policy_id}.",
                                             hint="Add the tenant (or a 'default' tenant) to the policy's tenants.")
                bucket = self._buckets.get(tenant)
                if bucket is None:
                    bucket = self._buckets[tenant] = TokenBucket(quota, now)
                wait = bucket.take(now)
                if wait > 0:
                    self.rejected["quota"] += 1
                    raise QuotaExceededError(
                        f"tenant {tenant!r} is over its quota ({quota.rate_per_s:g}/s, burst {quota.burst:g}).",
                        hint=f"Retry in {wait:.3f} s or raise the tenant's rate in the policy.",
                    )
            if self.admission:
                finish = self._estimated_finish(pool, now, deadline, predicted_s)
                if finish > deadline:
                    if bucket is not None:
                        bucket.refund()
                    self.rejected["deadline"] += 1
                    raise DeadlineInfeasibleError(
                        f"{priority} request on {pool.device_id} would finish in {finish - now:.4f} s, after its "
                        f"deadline of {relative:.4f} s (predicted run {predicted_s:.4f} s plus queued work).",
                        hint="Retry later, lower the batch size, or place the model on a faster device.",
                    )
            record = RequestRecord(priority, tenant, pool.device_id, float(predicted_s), now, deadline)
            seq = next(self._seq)
            sort_key = (deadline, seq) if self.discipline == "edf" else (float(seq), seq)
            future: Future = Future()
            heapq.heappush(pool.heap, _Item(sort_key, fn, future, record))
            pool.queued_work += record.predicted_s
            self._cond.notify_all()
        return future

    # --- workers -----------------------------------------------------------------------------

    def _work(self, pool: _Pool, index: int) -> None:
        while True:
            with self._cond:
                while not pool.heap and not self._closed:
                    self._cond.wait()
                if not pool.heap:
                    return
                item = heapq.heappop(pool.heap)
                record = item.record
                pool.queued_work = max(pool.queued_work - record.predicted_s, 0.0) if pool.heap else 0.0
                record.started = self.clock()
                pool.running[index] = record
            if item.future.set_running_or_notify_cancel():
                try:
                    result = item.fn()
                except BaseException as exc:  # the caller gets its exception through the future
                    record.finished = self.clock()
                    item.future.set_exception(exc)
                else:
                    record.finished = self.clock()
                    record.ok = True
                    item.future.set_result(result)
            else:
                record.finished = self.clock()
            with self._cond:
                pool.running.pop(index, None)
            if self.observer is not None:
                self.observer(record)

    def queued(self, device: str | None = None) -> int:
        with self._cond:
            pools = [self._pool_for(device)] if device else list(self._pools.values())
            return sum(len(p.heap) for p in pools)

    def close(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop admitting; finish (or cancel) what is queued; join the workers when ``wait``."""
        with self._cond:
            self._closed = True
            if cancel_pending:
                for pool in self._pools.values():
                    for item in pool.heap:
                        item.future.cancel()
            self._cond.notify_all()
        if wait:
            for pool in self._pools.values():
                for thread in pool.threads:
                    thread.join()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
