"""A search's trials fit and score with a change window's weights, as the final fit and the gate do."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fit_support import pipeline

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import score
from driftloop.services.training import hpo


def test_a_trial_fits_and_scores_with_the_change_windows_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    cfg = pipeline()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + rng.normal(scale=0.8, size=200) > 0).astype(int)
    seen: dict[str, Any] = {}
    reported: list[float] = []

    def fake_train(
        artifact: ModelArtifact, params: dict[str, Any], x_fit: Any, y_fit: Any, on_round: Any, every: int, **kw: Any
    ) -> None:
        seen.update(kw)
        on_round(1, None)

    class Scores:  # a "model" whose positive-class scores are the first feature
        def predict_input(self, x_valid: Any) -> np.ndarray:
            return np.asarray(x_valid)[:, 0]

    monkeypatch.setattr(hpo, "train_model", fake_train)
    monkeypatch.setattr(hpo, "replace", lambda skeleton: Scores())
    monkeypatch.setattr(tune, "report", lambda values: reported.append(values[hpo.SCORE]))
    w_fit, w_valid = np.linspace(0.2, 1.0, 150), np.linspace(0.2, 1.0, 50)
    data = hpo.TrialData(
        skeleton=None,  # type: ignore[arg-type]
        pipeline=cfg,
        x_fit=x[:150],
        y_fit=y[:150],
        x_valid=x[150:],
        y_valid=y[150:],
        metric="roc_auc",
        report_every=1,
        w_fit=w_fit,
        w_valid=w_valid,
    )
    hpo.run_trial({}, data)
    assert seen["sample_weight"] is w_fit
    assert reported == [pytest.approx(score("roc_auc", y[150:], x[150:, 0], w_valid))]
    assert reported[0] != pytest.approx(score("roc_auc", y[150:], x[150:, 0]))
