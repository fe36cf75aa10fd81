"""Hyperparameter search on Ray Tune: Optuna's TPE (or random sampling) proposes configurations from the pipeline's
``model.search.space``; each trial trains on the fit part of the training split and reports its validation metric
every few rounds; ASHA stops weak trials early. The best configuration is then refit (see ``fit``) on the whole
training split and scored on the holdout, which the search never sees.

Tune's controller runs in this process (the driver): trials run as Ray actors, one CPU each, on the local Ray or
the cluster at ``RAY_ADDRESS``. An abort is a flag file checked by a ``Stopper`` (a Stopper is pickled, so it
cannot hold a threading.Event): ``fit()`` returns within a second and the trial actors are gone, freeing the CPUs.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import score
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.searchspace import ParamRange, SearchSpec
from driftloop.contracts.settings import Settings

from .families import model_params, total_rounds, train_model
from .fit import FitJob, RunAborted, TrainingFailed, prepare_data
from .raycluster import ensure_ray, ray_at_work, record_ray_processes

SCORE = "score"
ROUND = "round"


@dataclass
class TrialData:
    """What every trial needs, put once in Ray's object store by ``tune.with_parameters``."""

    skeleton: ModelArtifact
    pipeline: PipelineConfig
    x_fit: Any
    y_fit: np.ndarray
    x_valid: Any
    y_valid: np.ndarray
    metric: str
    report_every: int
    # A change window's weights of the fit and validation rows (None: all weigh 1), as the final fit and gate use.
    w_fit: np.ndarray | None = None
    w_valid: np.ndarray | None = None


@dataclass
class SearchResult:
    best_params: dict[str, Any]
    best_score: float
    metric: str
    mode: str
    trials: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def search_metric(pipeline: PipelineConfig) -> tuple[str, str]:
    """The metric the search optimises and its mode: ``search.metric`` or the gate's, in the gate's direction
    when it is the gate's metric, else the metric's natural direction."""
    search = pipeline.model.search
    assert search is not None
    metric = search.metric or pipeline.gate.metric
    if metric == pipeline.gate.metric:
        return metric, "max" if pipeline.gate.direction == "maximize" else "min"
    return metric, "min" if metric in ("log_loss", "rmse", "mae") else "max"


def tune_space(space: dict[str, ParamRange]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.type == "choice":
            out[name] = tune.choice(list(spec.values or []))
        elif spec.type == "int":
            low, high = int(spec.low or 0), int(spec.high or 0)
            # Tune's integer upper bounds are exclusive; the config's are inclusive.
            out[name] = tune.lograndint(low, high + 1) if spec.log else tune.randint(low, high + 1)
        else:
            low_f, high_f = float(spec.low or 0.0), float(spec.high or 0.0)
            out[name] = tune.loguniform(low_f, high_f) if spec.log else tune.uniform(low_f, high_f)
    return out


def max_rounds(pipeline: PipelineConfig) -> int:
    """ASHA's time axis ends at the largest number of rounds a trial can train."""
    search = pipeline.model.search
    assert search is not None
    rounds = search.space.get("n_estimators")
    if rounds is not None:
        if rounds.type == "choice":
            return int(max(float(v) for v in rounds.values or [1]))
        return int(rounds.high or 1)
    return total_rounds(pipeline.model.family, model_params(pipeline))


def run_trial(config: dict[str, Any], data: TrialData) -> None:
    """One trial: train with ``config`` over the fixed params, reporting the validation score every few rounds."""
    from ray import tune

    artifact = replace(data.skeleton)
    params = model_params(data.pipeline, config)

    def on_round(done: int, model: Any) -> bool:
        artifact.model = model
        value = score(data.metric, data.y_valid, artifact.predict_input(data.x_valid), data.w_valid)
        tune.report({SCORE: value if math.isfinite(value) else float("nan"), ROUND: done})
        return False

    train_model(artifact, params, data.x_fit, data.y_fit, on_round, data.report_every, sample_weight=data.w_fit)


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with numpy scalars turned into Python ones (JSON columns, YAML, logs)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in config.items()}


def _stopper_class() -> type:
    from ray.tune.stopper import Stopper

    class AbortFlagStopper(Stopper):
        """Stops everything once the run's abort flag file exists."""

        def __init__(self, flag: str) -> None:
            self.flag = flag

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return Path(self.flag).exists()

        def stop_all(self) -> bool:
            return Path(self.flag).exists()

    return AbortFlagStopper


# Per run being searched: its log's note function and its trials. Tune pickles its callbacks (experiment state),
# and a run log holds a lock: the callback keeps only the run id and finds these here, in the driver.
_LIVE_SEARCHES: dict[str, tuple[Callable[[str], None], dict[str, dict[str, Any]]]] = {}


def live_search(run_id: str) -> tuple[Callable[[str], None], dict[str, dict[str, Any]]]:
    # A module-level function is pickled by reference: the callback's pickle never drags the registry along.
    return _LIVE_SEARCHES[run_id]


def _recorder(run_id: str, metric: str) -> Any:
    from ray.tune import Callback

    class TrialRecorder(Callback):
        """Every trial's configuration and intermediate scores (with their rounds), as Tune reports them."""

        def __init__(self) -> None:
            self.run_id = run_id

        def _note(self, message: str) -> None:
            live_search(self.run_id)[0](message)

        def _trial(self, trial: Any) -> dict[str, Any]:
            return live_search(self.run_id)[1].setdefault(
                trial.trial_id,
                {"trial_id": trial.trial_id, "config": plain(trial.config), "steps": [], "status": "running"},
            )

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._trial(trial)
            self._note(f"trial {trial.trial_id} started: {plain(trial.config)}")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if SCORE in result and ROUND in result:
                self._trial(trial)["steps"].append({"step": int(result[ROUND]), metric: float(result[SCORE])})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record = self._trial(trial)
            record["status"] = "finished"
            last = record["steps"][-1] if record["steps"] else {}
            self._note(f"trial {trial.trial_id} ended at round {last.get('step')}: {metric} {last.get(metric)}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record = self._trial(trial)
            record["status"] = "error"
            record["error"] = str(getattr(trial, "error_file", None) or "trial failed")
            self._note(f"trial {trial.trial_id} failed")

    return TrialRecorder()


def split_validation(size: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded validation mask over the training split (the holdout stays untouched for the gate)."""
    return np.random.default_rng(seed).random(size) < fraction


def search_on_ray(settings: Settings, job: FitJob, abort_flag: Path, note: Callable[[str], None]) -> SearchResult:
    """Run the pipeline's search for ``job`` on Ray Tune; the best trial's configuration comes back."""
    with ray_at_work(settings):  # Ray stays awake for the whole search
        return _search(settings, job, abort_flag, note)


def _search(settings: Settings, job: FitJob, abort_flag: Path, note: Callable[[str], None]) -> SearchResult:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    pipeline = job.pipeline
    search: SearchSpec | None = pipeline.model.search
    if search is None:
        raise TrainingFailed(f"model {pipeline.model.name!r} has no search in its pipeline config")
    ensure_ray(settings)
    record_ray_processes()  # on record before a crash can interrupt the search
    # Tune's legacy reporter honours verbose=0: no progress boxes in the service's log (the run log has the trials).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # No CSV/JSON/TensorBoard loggers per trial result: the recorder below keeps what the run needs.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    started = time.perf_counter()
    metric, mode = search_metric(pipeline)
    data = prepare_data(job, note)
    seed = pipeline.model.seed
    in_valid = split_validation(len(data.train), search.validation_fraction, seed)
    fit_rows, valid_rows = data.train[~in_valid], data.train[in_valid]
    if len(valid_rows) == 0 or len(fit_rows) == 0:
        raise TrainingFailed(f"too few training rows ({len(data.train)}) to split off a validation set for the search")
    y_fit, y_valid = data.y_train[~in_valid], data.y_train[in_valid]
    if pipeline.model.task == "classification" and (len(set(y_fit.tolist())) < 2 or len(set(y_valid.tolist())) < 2):
        raise TrainingFailed("the search's fit or validation part has a single class: more labelled rows needed")
    skeleton = data.artifact
    trial_data = TrialData(
        skeleton=skeleton,
        pipeline=pipeline,
        x_fit=skeleton.model_input(fit_rows),
        y_fit=y_fit,
        x_valid=skeleton.model_input(valid_rows),
        y_valid=y_valid,
        metric=metric,
        report_every=search.report_every,
        w_fit=data.w_train[~in_valid] if data.w_train is not None else None,
        w_valid=data.w_train[in_valid] if data.w_train is not None else None,
    )
    rounds = max_rounds(pipeline)
    iterative = pipeline.model.family != "sklearn_linear"
    if search.early_stopping == "asha" and iterative:
        scheduler: Any = ASHAScheduler(
            time_attr=ROUND, max_t=rounds, grace_period=min(search.grace_rounds, rounds), reduction_factor=3
        )
    else:
        scheduler = FIFOScheduler()
    if search.searcher == "optuna_tpe":
        searcher: Any = ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=search.concurrency)
    else:
        searcher = BasicVariantGenerator(random_state=seed, max_concurrent=search.concurrency)
    note(
        f"search: {search.trials} trial(s), {search.concurrency} at a time, {search.searcher}, "
        f"early stopping {search.early_stopping if iterative else 'none'} on validation {metric} ({mode}), "
        f"{len(fit_rows)} fit rows, {len(valid_rows)} validation rows, up to {rounds} rounds"
    )
    recorder = _recorder(job.run_id, metric)
    _LIVE_SEARCHES[job.run_id] = (note, {})
    storage = Path(tempfile.mkdtemp(prefix=f"driftloop-tune-{job.run_id}-"))
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, data=trial_data), {"cpu": 1}),
            param_space=tune_space(search.space),
            tune_config=tune.TuneConfig(
                metric=SCORE,
                mode=mode,
                num_samples=search.trials,
                search_alg=searcher,
                scheduler=scheduler,
                time_budget_s=search.time_budget_seconds or None,
            ),
            run_config=tune.RunConfig(
                name=job.run_id,
                storage_path=str(storage),
                stop=_stopper_class()(str(abort_flag)),
                callbacks=[recorder],
                verbose=0,
                log_to_file=False,
            ),
        )
        grid = tuner.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        _, recorded = _LIVE_SEARCHES.pop(job.run_id)
    if abort_flag.exists():
        raise RunAborted(f"aborted during the search ({len(recorded)} trial(s) started)")
    trials = list(recorded.values())
    for record in trials:
        last_step = record["steps"][-1]["step"] if record["steps"] else 0
        record["final"] = record["steps"][-1][metric] if record["steps"] else None
        record["rounds"] = last_step
        record["early_stopped"] = (
            record["status"] == "finished"
            and iterative
            and last_step < total_rounds(pipeline.model.family, model_params(pipeline, record["config"]))
        )
    scored = [t for t in trials if t["final"] is not None and math.isfinite(t["final"])]
    if not scored:
        results = [grid[i] for i in range(len(grid))]  # ResultGrid indexes, its type declares no iteration
        errors = [str(r.error) for r in results if r.error is not None]
        raise TrainingFailed(f"no trial of the search finished with a score: {errors[:1] or 'no trial ran'}")
    best = (max if mode == "max" else min)(scored, key=lambda t: t["final"])
    seconds = round(time.perf_counter() - started, 3)
    summary = {
        "searcher": search.searcher,
        "early_stopping": search.early_stopping if iterative else "none",
        "metric": metric,
        "mode": mode,
        "trials": len(trials),
        "early_stopped": sum(1 for t in trials if t["early_stopped"]),
        "failed": sum(1 for t in trials if t["status"] == "error"),
        "best_trial": best["trial_id"],
        "best_validation_score": best["final"],
        "best_config": best["config"],
        "fit_rows": len(fit_rows),
        "validation_rows": len(valid_rows),
        "seconds": seconds,
    }
    note(f"search done in {seconds}s: best {metric} {best['final']:.4f} with {best['config']}")
    return SearchResult(
        best_params=dict(best["config"]),
        best_score=best["final"],
        metric=metric,
        mode=mode,
        trials=trials,
        summary=summary,
    )
