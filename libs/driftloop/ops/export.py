"""Export a model artifact as a self-contained folder that predicts without driftloop:

- ``model/``: ``meta.json`` and the native model file, unzipped from the artifact;
- ``signature.json``: input fields (numeric, or categorical with their vocabulary), the output, the artifact's sha256;
- ``requirements.txt``: the pinned packages the model file needs (the versions this environment has);
- ``predict.py``: ``python predict.py rows.csv|rows.jsonl`` (or JSON lines on stdin) prints one JSON prediction a line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from driftloop.contracts.artifact import ModelArtifact

FAMILY_PACKAGES = {
    "lightgbm": ["lightgbm", "scikit-learn", "scipy"],
    "xgboost": ["xgboost-cpu", "scipy"],
    "sklearn_linear": ["scikit-learn", "scipy", "joblib", "threadpoolctl"],
    "sklearn_random_forest": ["scikit-learn", "scipy", "joblib", "threadpoolctl"],
}
BASE_PACKAGES = ["numpy", "pandas", "python-dateutil", "pytz", "tzdata", "six"]


def _pinned(packages: list[str]) -> list[str]:
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def signature(artifact: ModelArtifact, artifact_sha256: str) -> dict[str, Any]:
    inputs = [
        {"name": name, "type": "categorical", "categories": artifact.categories[name]}
        if name in artifact.categories
        else {"name": name, "type": "numeric"}
        for name in artifact.feature_names
    ]
    output = (
        {"name": "prediction", "type": "probability of the positive class"}
        if artifact.task == "classification"
        else {"name": "prediction", "type": "numeric"}
    )
    return {
        "family": artifact.family,
        "task": artifact.task,
        "inputs": inputs,
        "output": output,
        "artifact_sha256": artifact_sha256,
        "metadata": artifact.metadata,
    }


def export_artifact(data: bytes, directory: Path, expected_sha256: str | None = None) -> Path:
    """Write the export folder for the artifact ``data`` (verified against ``expected_sha256`` when given)."""
    artifact = ModelArtifact.from_bytes(data, expected_sha256=expected_sha256)
    directory = Path(directory)
    (directory / "model").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            (directory / "model" / Path(name).name).write_bytes(zf.read(name))
    sha256 = hashlib.sha256(data).hexdigest()
    (directory / "signature.json").write_text(json.dumps(signature(artifact, sha256), indent=2, default=str) + "\n")
    requirements = _pinned(BASE_PACKAGES + FAMILY_PACKAGES.get(artifact.family, []))
    (directory / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (directory / "predict.py").write_text(PREDICT_PY)
    (directory / "README.md").write_text(
        f"# {artifact.metadata.get('model', 'model')} ({artifact.family}, {artifact.task})\n\n"
        "    pip install -r requirements.txt\n"
        "    python predict.py rows.csv        # or rows.jsonl, or JSON lines on stdin\n\n"
        "One JSON object a line: the row's `prediction` (classification: probability of the positive class).\n"
        "Inputs are listed in `signature.json`; a missing numeric is allowed, an unseen category counts as missing.\n"
    )
    return directory


PREDICT_PY = '''"""Predict with an exported driftloop model. Needs only requirements.txt, not driftloop.

    python predict.py rows.csv | rows.jsonl     (or JSON lines on stdin)
"""

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "model" / "meta.json").read_text())
FEATURES, CATEGORIES, FAMILY = META["feature_names"], META["categories"], META["family"]
MODEL_FILE = HERE / "model" / META.get("model_file", "model.txt")


def load_model():
    if FAMILY == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_file=str(MODEL_FILE))
    if FAMILY == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(MODEL_FILE))
        return booster
    return pickle.loads(MODEL_FILE.read_bytes())


def typed(rows):
    x = rows.reindex(columns=FEATURES).copy()
    for name, cats in CATEGORIES.items():
        x[name] = pd.Categorical(x[name].astype("object"), categories=cats)
    for name in FEATURES:
        if name not in CATEGORIES:
            x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
    return x


def design(x):
    columns = []
    for name in FEATURES:
        if name in CATEGORIES:
            codes = x[name].cat.codes.to_numpy()
            columns.append(np.eye(len(CATEGORIES[name]) + 1)[codes][:, :-1])
        else:
            columns.append(x[name].to_numpy(dtype="float64").reshape(-1, 1))
    return np.hstack(columns)


def predict(rows):
    model, x = load_model(), typed(rows)
    if FAMILY == "lightgbm":
        return np.asarray(model.predict(x), dtype="float64")
    if FAMILY == "xgboost":
        import xgboost

        return np.asarray(model.predict(xgboost.DMatrix(x, enable_categorical=True)), dtype="float64")
    if META["task"] == "classification":
        return model.predict_proba(design(x))[:, 1]
    return model.predict(design(x))


def read_rows(argv):
    if len(argv) > 1 and argv[1].endswith(".csv"):
        return pd.read_csv(argv[1])
    text = Path(argv[1]).read_text() if len(argv) > 1 else sys.stdin.read()
    return pd.read_json(io.StringIO(text), lines=True)


if __name__ == "__main__":
    for value in predict(read_rows(sys.argv)):
        print(json.dumps({"prediction": float(value)}))
'''
