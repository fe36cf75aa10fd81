"""Rollout of a newly promoted version on this replica: canary (a share of requests to the challenger, stepped up
while it behaves) or shadow (the challenger scores a copy; answers come from the champion), with automatic
rollback when the challenger's error rate, latency or mean prediction is worse than the champion's past the
pipeline's ``serving.rollout`` thresholds. Every start, step, completion and rollback is an event.

The split is deterministic (a weighted counter, not a coin): over any run of requests the challenger gets
exactly its share, rounded down. A challenger that fails a canary request is counted and the champion answers:
a bad challenger never fails a client's request."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ModelPromoted, Payload, RolloutRolledBack, RolloutStepped, ServingSwitched
from driftloop.contracts.pipeline import RolloutSpec
from driftloop.errors import DriftloopError, ValidationFailed

from .served import ModelTable, ServedModel

log = logging.getLogger(__name__)

PRODUCER = "serving"
LATENCY_SAMPLES = 5000
# Shadow copies waiting for the challenger beyond this are dropped (counted): shadow must not queue unboundedly.
MAX_SHADOW_BACKLOG = 256

ROLLOUT_SHARE = Gauge("driftloop_serving_rollout_share", "Challenger's share of answered requests", ["model"])
ROLLOUT_ACTIONS = Counter("driftloop_serving_rollout_actions_total", "Rollout steps and rollbacks", ["model", "action"])
CHALLENGER_ERRORS = Counter("driftloop_serving_challenger_errors_total", "Failed challenger predictions", ["model"])
SHADOW_DROPPED = Counter("driftloop_serving_shadow_dropped_total", "Shadow copies dropped (backlog full)", ["model"])


@dataclass
class ArmStats:
    """What one arm (champion or challenger) did during the current step."""

    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    prediction_sum: float = 0.0
    prediction_count: int = 0

    def record(self, seconds: float, predictions: list[float] | None) -> None:
        self.requests += 1
        if predictions is None:
            self.errors += 1
            return
        self.latencies.append(seconds)
        self.prediction_sum += sum(predictions)
        self.prediction_count += len(predictions)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float | None:
        return float(np.percentile(list(self.latencies), 95)) * 1000 if self.latencies else None

    @property
    def mean_prediction(self) -> float | None:
        return self.prediction_sum / self.prediction_count if self.prediction_count else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "mean_prediction": self.mean_prediction,
        }


@dataclass(frozen=True)
class Verdict:
    action: str  # "stepped" | "completed" | "rolled_back"
    reason: str
    step: int
    share: float
    stats: dict[str, Any]


class Rollout:
    """One challenger against one champion for one model, on this replica."""

    def __init__(
        self, champion: ServedModel, challenger: ServedModel, spec: RolloutSpec, promoted: Event[ModelPromoted]
    ) -> None:
        self.champion = champion
        self.challenger = challenger
        self.spec = spec
        self.promoted = promoted
        self.step = 0
        self.champion_stats = ArmStats()
        self.challenger_stats = ArmStats()
        self._routed = 0
        self._finished = False
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.champion.model

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def share(self) -> float:
        return self.spec.canary_steps[self.step] if self.mode == "canary" else 0.0

    def take_challenger(self) -> bool:
        """Canary routing: true for exactly ``floor(n * share)`` of the first n requests of a step."""
        with self._lock:
            n, share = self._routed, self.share
            self._routed += 1
            return math.floor((n + 1) * share) > math.floor(n * share)

    def record(self, arm: str, seconds: float, predictions: list[float] | None) -> None:
        with self._lock:
            (self.challenger_stats if arm == "challenger" else self.champion_stats).record(seconds, predictions)

    def stats(self) -> dict[str, Any]:
        return {"champion": self.champion_stats.as_dict(), "challenger": self.challenger_stats.as_dict()}

    def _problem(self) -> str | None:
        spec, ch, cc = self.spec, self.champion_stats, self.challenger_stats
        if cc.error_rate - ch.error_rate > spec.max_error_rate_increase:
            return (
                f"challenger error rate {cc.error_rate:.3f} exceeds the champion's {ch.error_rate:.3f} "
                f"by more than {spec.max_error_rate_increase:g}"
            )
        slow, fast = cc.p95_ms, ch.p95_ms
        if (
            slow is not None
            and fast is not None
            and slow > spec.max_latency_ratio * fast
            and slow - fast > spec.latency_slack_ms
        ):
            return (
                f"challenger p95 latency {slow:.2f} ms is more than {spec.max_latency_ratio:g}x the "
                f"champion's {fast:.2f} ms"
            )
        if spec.max_mean_prediction_shift is not None:
            a, b = cc.mean_prediction, ch.mean_prediction
            if a is not None and b is not None and abs(a - b) > spec.max_mean_prediction_shift:
                return (
                    f"challenger mean prediction {a:.4f} differs from the champion's {b:.4f} "
                    f"by more than {spec.max_mean_prediction_shift:g}"
                )
        return None

    def judge(self) -> Verdict | None:
        """After enough challenger requests in this step: roll back, step up, or complete. Once per step: the
        caller that gets a verdict acts on it; concurrent callers get None."""
        with self._lock:
            if self._finished or self.challenger_stats.requests < self.spec.step_min_requests:
                return None
            stats = self.stats()
            problem = self._problem()
            if problem is not None:
                self._finished = True
                return Verdict("rolled_back", problem, self.step, 0.0, stats)
            if self.mode == "canary" and self.step + 1 < len(self.spec.canary_steps):
                self.step += 1
                self._routed = 0
                self.champion_stats, self.challenger_stats = ArmStats(), ArmStats()
                return Verdict("stepped", "challenger within thresholds", self.step, self.share, stats)
            self._finished = True
            return Verdict("completed", "challenger within thresholds at the last step", self.step, 1.0, stats)


class RolloutController:
    """Starts rollouts (from the loader), routes requests during them, and acts on their verdicts."""

    def __init__(self, table: ModelTable, publish: Callable[[Event[Payload]], None], replica: str) -> None:
        self.table = table
        self.publish = publish
        self.replica = replica
        self._rollouts: dict[str, Rollout] = {}
        # ModelPromoted event ids whose rollout was rolled back (here or on another replica): a redelivery or a
        # replay of the same promotion is not rolled out again. A new promotion of the same version is.
        self._rolled_back: set[str] = set()
        self._lock = threading.Lock()
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_backlog = threading.BoundedSemaphore(MAX_SHADOW_BACKLOG)

    def get(self, model: str) -> Rollout | None:
        with self._lock:
            return self._rollouts.get(model)

    def all(self) -> list[Rollout]:
        with self._lock:
            return list(self._rollouts.values())

    def start(
        self, champion: ServedModel, challenger: ServedModel, spec: RolloutSpec, promoted: Event[ModelPromoted]
    ) -> None:
        rollout = Rollout(champion, challenger, spec, promoted)
        with self._lock:
            superseded = self._rollouts.get(champion.model)
            self._rollouts[champion.model] = rollout
        if superseded is not None:
            self._emit_rollback(
                superseded, f"superseded by the promotion of v{challenger.version}", superseded.stats(), "superseded"
            )
        ROLLOUT_SHARE.labels(rollout.model).set(rollout.share)
        ROLLOUT_ACTIONS.labels(rollout.model, "started").inc()
        log.info("%s: %s rollout of v%d against v%d", rollout.model, spec.mode, challenger.version, champion.version)
        self._emit_step(rollout, "started", rollout.step, rollout.share, rollout.stats())

    def was_rolled_back(self, promotion_id: str) -> bool:
        with self._lock:
            return promotion_id in self._rolled_back

    def follow_rollback(self, event: Event[RolloutRolledBack]) -> None:
        """Another replica rolled a promotion back: stop the same rollout here (replicas agree on bad news)."""
        stopped = event.payload
        if stopped.replica == self.replica or event.envelope.caused_by is None:
            return
        with self._lock:
            self._rolled_back.add(event.envelope.caused_by)
            rollout = self._rollouts.get(stopped.model)
            if rollout is None or rollout.promoted.id != event.envelope.caused_by:
                return
            del self._rollouts[stopped.model]
        ROLLOUT_SHARE.labels(rollout.model).set(0.0)
        ROLLOUT_ACTIONS.labels(rollout.model, "rolled_back").inc()
        log.warning(
            "%s: v%d rolled back on replica %s; following", rollout.model, rollout.challenger.version, stopped.replica
        )
        self._emit_rollback(
            rollout, f"rolled back on replica {stopped.replica}: {stopped.reason}", rollout.stats(), "followed"
        )

    def cancel(self, model: str, reason: str) -> None:
        """Stop a running rollout of ``model`` (the champion changed by other means)."""
        with self._lock:
            rollout = self._rollouts.pop(model, None)
        if rollout is not None:
            ROLLOUT_SHARE.labels(model).set(0.0)
            ROLLOUT_ACTIONS.labels(model, "rolled_back").inc()
            self._emit_rollback(rollout, reason, rollout.stats(), "champion_moved")

    def predict(
        self,
        rollout: Rollout,
        instances: list[dict[str, Any]],
        predict: Callable[[ServedModel, list[dict[str, Any]], bool], dict[str, Any]],
    ) -> dict[str, Any]:
        """Answer with the arm the rollout picks. ``predict(served, instances, log_it)`` scores (and, if
        ``log_it``, logs) the rows; it raises ValidationFailed for the client's mistakes."""
        if rollout.mode == "canary" and rollout.take_challenger():
            started = time.perf_counter()
            try:
                result = predict(rollout.challenger, instances, True)
            except ValidationFailed:
                raise  # the client's input, not the challenger's fault: same answer from either arm
            except Exception as exc:
                CHALLENGER_ERRORS.labels(rollout.model).inc()
                log.warning("%s challenger v%d failed a request: %r", rollout.model, rollout.challenger.version, exc)
                rollout.record("challenger", time.perf_counter() - started, None)
            else:
                rollout.record("challenger", time.perf_counter() - started, result["predictions"])
                self._judge(rollout)
                return result
            self._judge(rollout)
        started = time.perf_counter()
        try:
            result = predict(rollout.champion, instances, True)
        except ValidationFailed:
            raise
        except Exception:
            rollout.record("champion", time.perf_counter() - started, None)
            raise
        rollout.record("champion", time.perf_counter() - started, result["predictions"])
        if rollout.mode == "shadow":
            self._shadow(rollout, instances, predict)
        return result

    def _shadow(
        self,
        rollout: Rollout,
        instances: list[dict[str, Any]],
        predict: Callable[[ServedModel, list[dict[str, Any]], bool], dict[str, Any]],
    ) -> None:
        if not self._shadow_backlog.acquire(blocking=False):
            SHADOW_DROPPED.labels(rollout.model).inc()
            return

        def score_copy() -> None:
            started = time.perf_counter()
            try:
                predictions = predict(rollout.challenger, instances, False)["predictions"]
            except Exception as exc:
                CHALLENGER_ERRORS.labels(rollout.model).inc()
                log.warning("%s shadow v%d failed: %r", rollout.model, rollout.challenger.version, exc)
                predictions = None
            finally:
                self._shadow_backlog.release()
            rollout.record("challenger", time.perf_counter() - started, predictions)
            self._judge(rollout)

        self._shadow_pool.submit(score_copy)

    def _judge(self, rollout: Rollout) -> None:
        verdict = rollout.judge()
        if verdict is None:
            return
        ROLLOUT_ACTIONS.labels(rollout.model, verdict.action).inc()
        if verdict.action == "rolled_back":
            self._finish(rollout, rolled_back=True)
            log.warning("%s: ROLLED BACK v%d: %s", rollout.model, rollout.challenger.version, verdict.reason)
            self._emit_rollback(rollout, verdict.reason, verdict.stats, "verdict")
            return
        if verdict.action == "completed":
            previous = self.table.swap(rollout.challenger)
            self._finish(rollout)
            log.info("%s: rollout of v%d completed", rollout.model, rollout.challenger.version)
            self._emit_step(rollout, "completed", verdict.step, 1.0, verdict.stats)
            self._emit_switched(rollout, previous)
            return
        ROLLOUT_SHARE.labels(rollout.model).set(verdict.share)
        log.info("%s: canary of v%d stepped to %.0f%%", rollout.model, rollout.challenger.version, verdict.share * 100)
        self._emit_step(rollout, "stepped", verdict.step, verdict.share, verdict.stats)

    def _finish(self, rollout: Rollout, rolled_back: bool = False) -> None:
        with self._lock:
            if rolled_back:
                self._rolled_back.add(rollout.promoted.id)
            if self._rollouts.get(rollout.model) is rollout:
                del self._rollouts[rollout.model]
        ROLLOUT_SHARE.labels(rollout.model).set(0.0)

    def _send(self, payload: RolloutStepped | RolloutRolledBack | ServingSwitched, rollout: Rollout) -> None:
        event = new_event(payload, producer=PRODUCER, cause=rollout.promoted)
        try:
            self.publish(event)
        except (DriftloopError, BufferError, ValueError):
            log.exception("%s for %s was not published", event.type, payload.model)

    def _emit_step(self, rollout: Rollout, action: str, step: int, share: float, stats: dict[str, Any]) -> None:
        stepped = RolloutStepped(
            model=rollout.model,
            version=rollout.challenger.version,
            champion_version=rollout.champion.version,
            mode=rollout.mode,
            action=action,
            step=step,
            share=share,
            replica=self.replica,
            stats_json=json.dumps(stats),
        )
        self._send(stepped, rollout)

    def _emit_rollback(self, rollout: Rollout, reason: str, stats: dict[str, Any], origin: str) -> None:
        """``origin``: "verdict" (this replica judged the challenger worse: the registry moves its champion alias
        back on it), "followed", "superseded" or "champion_moved" (consequences of another move: not acted on)."""
        rolled_back = RolloutRolledBack(
            model=rollout.model,
            version=rollout.challenger.version,
            champion_version=rollout.champion.version,
            mode=rollout.mode,
            reason=reason,
            replica=self.replica,
            stats_json=json.dumps(stats),
            origin=origin,
        )
        self._send(rolled_back, rollout)

    def _emit_switched(self, rollout: Rollout, previous: ServedModel | None) -> None:
        switched = ServingSwitched(
            model=rollout.model,
            version=rollout.challenger.version,
            previous_version=previous.version if previous else None,
            artifact_sha256=rollout.challenger.sha256,
            replica=self.replica,
            load_seconds=rollout.challenger.load_seconds,
        )
        self._send(switched, rollout)

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
