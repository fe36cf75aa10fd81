"""The model artifact contract shared by training (writes), registry (gates) and serving (predicts):
a zip with ``meta.json`` and the native model file, verified by sha256 before it is loaded.

Families and their model file (``meta.json`` names it in ``model_file``; artifacts without it are LightGBM's
``model.txt``, so every artifact written before other families existed still loads):

- ``lightgbm``: ``model.txt`` (LightGBM's text format), a ``lightgbm.Booster``.
- ``xgboost``: ``model.json`` (XGBoost's JSON format), an ``xgboost.Booster`` with native categoricals.
- ``sklearn_linear`` / ``sklearn_random_forest``: ``model.pkl``, a pickled scikit-learn pipeline fed the
  one-hot matrix of ``design_matrix`` (only load artifacts whose sha256 you have verified).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.errors import DriftloopError, ValidationFailed

ARTIFACT_FORMAT = "driftloop-model/1"
SKLEARN_FAMILIES = ("sklearn_linear", "sklearn_random_forest")


class ArtifactError(DriftloopError):
    """A model artifact is unreadable or does not match its recorded sha256."""

    default_code = "invalid_artifact"


# Families whose models read their inputs as 32-bit floats.
FLOAT32_INPUT_FAMILIES = ("xgboost", "sklearn_random_forest")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class ModelArtifact:
    family: str
    task: str
    feature_names: list[str]
    categories: dict[str, list[str]]
    model: Any  # lightgbm.Booster, xgboost.Booster or a scikit-learn pipeline (see the module docstring)
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's input matrix: its features in order, categoricals with the training vocabulary."""
        x = features.reindex(columns=self.feature_names).copy()
        for name, cats in self.categories.items():
            x[name] = pd.Categorical(x[name].astype("object"), categories=cats)
        for name in self.feature_names:
            if name not in self.categories:
                x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
        return x

    def design_matrix(self, features: pd.DataFrame) -> np.ndarray:
        """Numbers only, for scikit-learn: numeric features as they are (NaN kept, the pipeline imputes), then one
        0/1 column per category of each categorical (an unseen or missing category is all zeros)."""
        x = self.matrix(features)
        columns = []
        for name in self.feature_names:
            if name in self.categories:
                codes = x[name].cat.codes.to_numpy()
                columns.append(np.eye(len(self.categories[name]) + 1, dtype="float64")[codes][:, :-1])
            else:
                columns.append(x[name].to_numpy(dtype="float64").reshape(-1, 1))
        return np.hstack(columns) if columns else np.empty((len(x), 0))

    def design_names(self) -> list[str]:
        """Column names of ``design_matrix``."""
        names: list[str] = []
        for name in self.feature_names:
            if name in self.categories:
                names.extend(f"{name}={value}" for value in self.categories[name])
            else:
                names.append(name)
        return names

    def model_input(self, features: pd.DataFrame) -> Any:
        """What this family's model is fed: the typed frame (boosters) or the design matrix (scikit-learn)."""
        if self.family.startswith("sklearn_"):
            return self.design_matrix(features)
        return self.matrix(features)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Classification: probability of the positive class. Regression: the predicted value. Rows this model
        cannot score (a number beyond its input type, an answer that is not finite) are refused (422)."""
        self.check_input_range(features)
        return self.finite(self.predict_input(self.model_input(features)))

    def check_input_range(self, features: pd.DataFrame) -> None:
        """XGBoost and scikit-learn's forests read their inputs as 32-bit floats: a larger number would reach them
        as infinity (XGBoost then fails, a forest refuses the matrix). Refused here, naming the feature."""
        if self.family not in FLOAT32_INPUT_FAMILIES:
            return
        for name in self.feature_names:
            if name in self.categories or name not in features.columns:
                continue
            values = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype="float64")
            beyond = np.abs(values) > FLOAT32_MAX  # NaN (missing) compares False
            if beyond.any():
                row = int(np.argmax(beyond))
                raise ValidationFailed(
                    "out_of_range",
                    name,
                    f"feature {name} of row {row} is {values[row]:g}: a {self.family} model takes 32-bit floats, "
                    f"at most ±{FLOAT32_MAX:.3g}",
                )

    def finite(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` if every one is finite. A finite input can still overflow a model (a linear model's
        weighted sum of ±1e308): those rows are beyond what it can score, refused with their indices (422)."""
        finite = np.isfinite(scores)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            listed = ", ".join(str(int(r)) for r in rows[:10]) + (", …" if len(rows) > 10 else "")
            raise ValidationFailed(
                "not_scorable",
                None,
                f"the model's answer for row(s) {listed} is not finite: their values are beyond what this "
                f"{self.family} model can score",
            )
        return scores

    def predict_input(self, model_input: Any) -> np.ndarray:
        """``predict`` on an input already built by ``model_input`` (training scores many rounds on one)."""
        if self.family == "lightgbm":
            return np.asarray(self.model.predict(model_input), dtype="float64")
        if self.family == "xgboost":
            import xgboost as xgb

            return np.asarray(self.model.predict(xgb.DMatrix(model_input, enable_categorical=True)), dtype="float64")
        if self.task == "classification":
            return np.asarray(self.model.predict_proba(model_input)[:, 1], dtype="float64")
        return np.asarray(self.model.predict(model_input), dtype="float64")

    def model_file(self) -> tuple[str, bytes]:
        """The native model file's name in the zip and its bytes."""
        if self.family == "lightgbm":
            return "model.txt", self.model.model_to_string().encode()
        if self.family == "xgboost":
            return "model.json", bytes(self.model.save_raw(raw_format="json"))
        if self.family in SKLEARN_FAMILIES:
            return "model.pkl", pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
        raise ArtifactError(f"unsupported model family {self.family!r}")

    def to_bytes(self) -> bytes:
        meta = {
            "format": ARTIFACT_FORMAT,
            "family": self.family,
            "task": self.task,
            "feature_names": self.feature_names,
            "categories": self.categories,
            "params": self.params,
            "metadata": self.metadata,
        }
        name, model_bytes = self.model_file()
        meta["model_file"] = name
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
            zf.writestr(name, model_bytes)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None) -> ModelArtifact:
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise ArtifactError(
                    f"artifact sha256 {actual} does not match the recorded {expected_sha256}: refusing it"
                )
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                meta = json.loads(zf.read("meta.json"))
                # Artifacts written before other families existed have no "model_file": LightGBM's model.txt.
                model_bytes = zf.read(meta.get("model_file", "model.txt"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"not a driftloop model artifact: {exc}") from exc
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"unsupported artifact format {meta.get('format')!r}")
        return cls(
            family=meta["family"],
            task=meta["task"],
            feature_names=meta["feature_names"],
            categories=meta["categories"],
            model=load_native_model(meta["family"], model_bytes),
            params=meta.get("params", {}),
            metadata=meta.get("metadata", {}),
        )


def import_family(family: str) -> None:
    """Import the library that loads and runs models of ``family`` (what ``load_native_model`` and ``predict``
    import on first use): a service warms it up at start so that its first model does not pay for it."""
    if family == "lightgbm":
        import lightgbm  # noqa: F401
    elif family == "xgboost":
        import xgboost  # noqa: F401
    elif family in SKLEARN_FAMILIES:
        import sklearn.ensemble
        import sklearn.linear_model
        import sklearn.pipeline  # noqa: F401
    else:
        raise ArtifactError(f"unsupported model family {family!r}")


def load_native_model(family: str, model_bytes: bytes) -> Any:
    if family == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_str=model_bytes.decode())
    if family == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(model_bytes))
        return booster
    if family in SKLEARN_FAMILIES:
        try:
            # Only artifacts whose sha256 matched (or that training just wrote) reach here.
            return pickle.loads(model_bytes)
        except Exception as exc:
            raise ArtifactError(f"the scikit-learn model in the artifact does not load: {exc}") from exc
    raise ArtifactError(f"unsupported model family {family!r}")
