"""Training one model of a family, with a callback after every ``report_every`` rounds (boosting rounds, or trees
for a random forest) so that the search can score intermediate models and ASHA can stop weak trials early.

The same code trains HPO trials and the final refit: a trial's score and the refit's model come from one path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.pipeline import PipelineConfig

# Called with (rounds done so far, the model so far as an artifact-compatible object); returning True stops.
RoundCallback = Callable[[int, Any], bool | None]

DEFAULT_ROUNDS = 100
RANDOM_FOREST_STEP_TREES = 10


def model_params(pipeline: PipelineConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The estimator's parameters: reproducible, single-threaded defaults, then ``model.params``, then the search's
    ``overrides`` (a trial's or the best configuration)."""
    model = pipeline.model
    family, seed = model.family, model.seed
    if family == "lightgbm":
        defaults: dict[str, Any] = {"random_state": seed, "n_jobs": 1, "verbose": -1}
    elif family == "xgboost":
        defaults = {"random_state": seed, "n_jobs": 1, "tree_method": "hist", "n_estimators": DEFAULT_ROUNDS}
    elif family == "sklearn_random_forest":
        defaults = {"random_state": seed, "n_jobs": 1, "n_estimators": DEFAULT_ROUNDS}
    else:  # sklearn_linear: LogisticRegression (classification) or Ridge (regression)
        defaults = {"random_state": seed} if model.task == "classification" else {}
        if model.task == "classification":
            defaults["max_iter"] = 1000
    return {**defaults, **model.params, **(overrides or {})}


def total_rounds(family: str, params: dict[str, Any]) -> int:
    """How many rounds a model of these params trains: the step axis of its intermediate metrics."""
    if family == "sklearn_linear":
        return 1
    return int(params.get("n_estimators", DEFAULT_ROUNDS))


def train_model(
    artifact: ModelArtifact,
    params: dict[str, Any],
    x_train: Any,
    y_train: np.ndarray,
    on_round: RoundCallback | None = None,
    report_every: int = 5,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """Fit the artifact's family on ``x_train`` (built by ``artifact.model_input``) and return the native model
    that goes into ``artifact.model``. ``on_round`` sees the model every ``report_every`` rounds and at the end.
    ``sample_weight``: per training row (None: all weigh 1)."""
    family, task = artifact.family, artifact.task
    classification = task == "classification"
    rounds = total_rounds(family, params)

    if family == "lightgbm":
        import lightgbm as lgb

        def lgb_callback(env: Any) -> None:
            done = env.iteration + 1
            reporting = done % report_every == 0 or done == rounds
            if on_round is not None and reporting and on_round(done, env.model):
                raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list or [])

        estimator = lgb.LGBMClassifier(**params) if classification else lgb.LGBMRegressor(**params)
        categorical: list[str] | Literal["auto"] = list(artifact.categories) or "auto"
        estimator.fit(
            x_train, y_train, sample_weight=sample_weight, categorical_feature=categorical, callbacks=[lgb_callback]
        )
        return estimator.booster_

    if family == "xgboost":
        import xgboost as xgb

        class XgbCallback(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                done = epoch + 1
                if on_round is not None and (done % report_every == 0 or done == rounds):
                    return bool(on_round(done, model))
                return False

        estimator_cls = xgb.XGBClassifier if classification else xgb.XGBRegressor
        estimator = estimator_cls(**params, enable_categorical=True, callbacks=[XgbCallback()])
        estimator.fit(x_train, y_train, sample_weight=sample_weight)
        return estimator.get_booster()

    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if family == "sklearn_linear":
        from sklearn.linear_model import LogisticRegression, Ridge

        estimator = LogisticRegression(**params) if classification else Ridge(**params)
        pipe = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
                ("model", estimator),
            ]
        )
        pipe.fit(x_train, y_train, model__sample_weight=sample_weight)
        if on_round is not None:
            on_round(1, pipe)
        return pipe

    if family == "sklearn_random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        forest_params = {k: v for k, v in params.items() if k != "n_estimators"}
        forest_cls = RandomForestClassifier if classification else RandomForestRegressor
        # warm_start: each step adds trees to the same forest, so intermediate forests cost nothing extra.
        pipe = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("model", forest_cls(n_estimators=0, warm_start=True, **forest_params)),
            ]
        )
        step = max(RANDOM_FOREST_STEP_TREES, report_every)
        trees = 0
        while trees < rounds:
            trees = min(rounds, trees + step)
            pipe.set_params(model__n_estimators=trees)
            pipe.fit(x_train, y_train, model__sample_weight=sample_weight)
            if on_round is not None and on_round(trees, pipe):
                break
        return pipe

    raise ValueError(f"unsupported model family {family!r}")


def feature_importance(artifact: ModelArtifact) -> dict[str, float]:
    """Importance per input feature (gain for boosters, impurity for forests, |coefficient| for linear models),
    categorical one-hot columns summed back to their feature; normalised to sum 1."""
    family, model = artifact.family, artifact.model
    if family == "lightgbm":
        raw = dict(zip(model.feature_name(), model.feature_importance(importance_type="gain"), strict=True))
    elif family == "xgboost":
        raw = model.get_score(importance_type="gain")
    else:
        estimator = model.named_steps["model"]
        values = (
            estimator.feature_importances_
            if hasattr(estimator, "feature_importances_")
            else np.abs(np.ravel(estimator.coef_))
        )
        raw = {}
        for column, value in zip(artifact.design_names(), values, strict=True):
            feature = column.split("=", 1)[0]
            raw[feature] = raw.get(feature, 0.0) + float(value)
    importance = {name: float(raw.get(name, 0.0)) for name in artifact.feature_names}
    total = sum(importance.values()) or 1.0
    return {name: value / total for name, value in importance.items()}
