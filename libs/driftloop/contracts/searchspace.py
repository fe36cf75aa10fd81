"""The hyperparameter search part of the pipeline config (``model.family``, ``model.search``): which model
families exist and how a search space, budget and searcher are written. See the README's pipeline reference."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ModelFamily = Literal["lightgbm", "xgboost", "sklearn_linear", "sklearn_random_forest"]


class ParamRange(_Strict):
    """One hyperparameter's search range: ``int``/``float`` between ``low`` and ``high`` (``log``: sampled on a
    log scale), or ``choice`` among ``values``."""

    type: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _check_range(self) -> ParamRange:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' range needs a non-empty 'values' list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a 'choice' range takes only 'values' (no low/high/log)")
            return self
        if self.values is not None:
            raise ValueError(f"an {self.type!r} range takes low/high, not 'values'")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"an {self.type!r} range needs low < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class SearchSpec(_Strict):
    """Hyperparameter search on Ray Tune: the best trial's configuration is refit and becomes the run's model."""

    # The search space: parameter name -> range. Fixed ``model.params`` apply to every trial; the space wins.
    space: dict[str, ParamRange] = Field(min_length=1)
    trials: int = Field(default=8, ge=1, le=1000)
    concurrency: int = Field(default=1, ge=1)
    # optuna_tpe: Bayesian (Optuna's TPE); random: random sampling at the same budget.
    searcher: Literal["optuna_tpe", "random"] = "optuna_tpe"
    # asha: stop weak trials early on their validation metric per boosting round (or per tree batch).
    early_stopping: Literal["asha", "none"] = "asha"
    # Minimum rounds before ASHA may stop a trial, and the rounds between reports.
    grace_rounds: int = Field(default=10, ge=1)
    report_every: int = Field(default=5, ge=1)
    # Trials are scored on this share of the training split (never on the holdout, which the gate uses).
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Metric the search optimises; default: the gate's metric and direction.
    metric: Literal["roc_auc", "accuracy", "f1", "log_loss", "rmse", "mae", "r2"] | None = None
    # The whole search stops after this many seconds (0: no limit); finished trials still count.
    time_budget_seconds: float = Field(default=0.0, ge=0)
