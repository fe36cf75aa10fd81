"""Export a model version as a self-contained folder that predicts exactly as serving does, without driftloop:

- ``predict.py``: ``python predict.py rows.jsonl|rows.csv`` (or JSON lines on stdin) prints one JSON prediction a
  line; ``predict.predict(rows)`` from Python. Rows are the stream's **raw fields**, as serving takes them: the
  features are computed by serving's own function and scored by the artifact's own code, both shipped in
  ``driftloop_frozen/`` (driftloop's ``errors`` and the contracts they need, copied unchanged but for the package
  name). A missing or unknown column is refused with a message, as is a row serving would refuse;
- ``pipeline.json``: the stream and the feature definitions the features are computed from;
- ``model.zip``: the artifact (checked against its sha256 on load), and ``model/``: its files unzipped;
- ``signature.json``: the inputs (raw fields: type, nullable, required), the features, the output, the sha256;
- ``requirements.txt``: the pinned packages it needs (the versions this environment has);
- ``serve.py``: an Open Inference Protocol (v2 REST) server of ``predict.py``'s answers, standard library only
  (``python serve.py --port 8080``; ``POST /v2/models/{model}/infer``), which decodes requests with serving's own
  ``driftloop.contracts.oip`` (shipped in ``driftloop_frozen/``): it takes and refuses what serving does; and a
  ``Dockerfile`` that runs it (the exporting Python's version, ``requirements.txt``, port 8080).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import driftloop.contracts
import driftloop.errors
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.oip import required_fields
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ConfigError

FAMILY_PACKAGES = {
    "lightgbm": ["lightgbm", "scikit-learn", "scipy"],
    "xgboost": ["xgboost-cpu", "scipy"],
    "sklearn_linear": ["scikit-learn", "scipy", "joblib", "threadpoolctl"],
    "sklearn_random_forest": ["scikit-learn", "scipy", "joblib", "threadpoolctl"],
}
# What the shipped feature function and artifact code import: pandas and numpy, pydantic and PyYAML (the pipeline
# model), pyarrow (the field-type table).
BASE_PACKAGES = [
    "numpy",
    "pandas",
    "python-dateutil",
    "pytz",
    "tzdata",
    "six",
    "pyarrow",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "PyYAML",
]
# The package the shipped driftloop modules are renamed to: the folder never imports (nor shadows) driftloop.
FROZEN_PACKAGE = "driftloop_frozen"
# The contracts the feature function and the artifact code need: their whole import closure.
# serve.py decodes Open Inference Protocol requests with serving's own module, ``oip``.
FROZEN_CONTRACTS = ("artifact", "featuredefs", "fieldtypes", "oip", "pipeline", "searchspace", "topics")
PREDICT_TEMPLATE = Path(__file__).with_name("exported_predict.py")
SERVE_TEMPLATE = Path(__file__).with_name("exported_serve.py")
SERVE_PORT = 8080


def dockerfile(python: str = f"{sys.version_info.major}.{sys.version_info.minor}") -> str:
    """The image recipe: the pinned requirements on the Python they were pinned with, then the folder; serve.py on
    port 8080, the model loaded (and its sha256 checked) before the port opens."""
    return (
        f"FROM python:{python}-slim\n"
        "WORKDIR /model\n"
        "COPY requirements.txt .\n"
        "RUN pip install --no-cache-dir -r requirements.txt\n"
        "COPY . .\n"
        "RUN useradd --no-create-home model\n"
        "USER model\n"
        f"EXPOSE {SERVE_PORT}\n"
        f'CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "{SERVE_PORT}"]\n'
    )


def _pinned(packages: list[str]) -> list[str]:
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def signature(
    artifact: ModelArtifact, artifact_sha256: str, pipeline: PipelineConfig, version: int | None = None
) -> dict[str, Any]:
    stream = pipeline.stream
    required = set(required_fields(pipeline))
    inputs = [
        {"name": f.name, "type": f.type, "nullable": f.nullable, "required": f.name in required}
        for f in stream.fields
        if f.name != stream.label
    ]
    features = [
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
        "model": pipeline.model.name,
        "version": version,
        "stream": stream.name,
        "family": artifact.family,
        "task": artifact.task,
        "inputs": inputs,
        "features": features,
        "output": output,
        "artifact_sha256": artifact_sha256,
        "metadata": artifact.metadata,
    }


def _frozen(source: str) -> str:
    """A driftloop module's source with its driftloop imports renamed to the shipped package."""
    return re.sub(r"\bdriftloop\.(errors|contracts)\b", FROZEN_PACKAGE + r".\1", source)


def _write_frozen_package(directory: Path) -> None:
    package = directory / FROZEN_PACKAGE
    contracts = Path(driftloop.contracts.__file__).parent
    (package / "contracts").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        '"""driftloop\'s feature function and artifact code, as serving runs them."""\n'
    )
    (package / "contracts" / "__init__.py").write_text('"""The driftloop contracts predictions need."""\n')
    (package / "errors.py").write_text(_frozen(Path(driftloop.errors.__file__).read_text()))
    for name in FROZEN_CONTRACTS:
        (package / "contracts" / f"{name}.py").write_text(_frozen((contracts / f"{name}.py").read_text()))


def export_artifact(
    data: bytes,
    directory: Path,
    *,
    pipeline: PipelineConfig,
    expected_sha256: str | None = None,
    version: int | None = None,
) -> Path:
    """Write the export folder of the artifact ``data`` (verified against ``expected_sha256`` when given) of
    ``pipeline``'s model (its registry ``version``, when known): it predicts from the stream's raw fields as serving
    does."""
    artifact = ModelArtifact.from_bytes(data, expected_sha256=expected_sha256)
    if artifact.feature_names != pipeline.feature_names:
        raise ConfigError(
            f"the artifact's features {artifact.feature_names} are not the pipeline's {pipeline.feature_names}: "
            "export with the pipeline file the version was trained with"
        )
    directory = Path(directory)
    (directory / "model").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            (directory / "model" / Path(name).name).write_bytes(zf.read(name))
    (directory / "model.zip").write_bytes(data)
    described = signature(artifact, hashlib.sha256(data).hexdigest(), pipeline, version)
    (directory / "signature.json").write_text(json.dumps(described, indent=2, default=str) + "\n")
    (directory / "pipeline.json").write_text(json.dumps(pipeline.model_dump(mode="json"), indent=2) + "\n")
    _write_frozen_package(directory)
    requirements = _pinned(BASE_PACKAGES + FAMILY_PACKAGES.get(artifact.family, []))
    (directory / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (directory / "predict.py").write_text(PREDICT_TEMPLATE.read_text())
    (directory / "serve.py").write_text(SERVE_TEMPLATE.read_text())
    (directory / "Dockerfile").write_text(dockerfile())
    required = ", ".join(i["name"] for i in described["inputs"] if i["required"])
    (directory / "README.md").write_text(
        f"# {pipeline.model.name} ({artifact.family}, {artifact.task})\n\n"
        "    pip install -r requirements.txt\n"
        "    python predict.py rows.jsonl        # or rows.csv, or JSON lines on stdin\n\n"
        "One JSON object a line: the row's `prediction` (classification: probability of the positive class), the\n"
        "number serving answers for the same row. Rows are the raw fields of stream "
        f"`{pipeline.stream.name}` (`signature.json` inputs;\nrequired: {required}); the features are computed from "
        "them by serving's own function (`driftloop_frozen/`).\nA missing required column or an unknown column is "
        "refused with a message.\n\n"
        "An Open Inference Protocol (v2 REST) server of the same answers, standard library only:\n\n"
        f"    python serve.py --port {SERVE_PORT}     # POST /v2/models/{pipeline.model.name}/infer\n"
        f"    docker build -t {pipeline.model.name} . && docker run -p {SERVE_PORT}:{SERVE_PORT} "
        f"{pipeline.model.name}\n\n"
        "It takes what serving takes (the same decoding code): one tensor per input field (shape [N], BYTES for\n"
        "strings and timestamps), or one [N, F] tensor whose columns are the inputs in order; the output `predict`\n"
        f"(FP64, [N]). `/v2/models/{pipeline.model.name}/versions/{{version}}/infer` answers for its own version.\n"
    )
    return directory
