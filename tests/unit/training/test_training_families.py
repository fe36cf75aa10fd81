"""Model families without Ray: every family and task fits, its artifact round-trips and scores the same, an old
LightGBM artifact still loads, the export folder predicts as serving does without driftloop, search spaces are
validated."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from families_support import FAMILY_PARAMS, fit, pipeline_of
from fastapi.testclient import TestClient
from fit_support import raw_rows

from driftloop.client import Client
from driftloop.clients.objectstore import sha256_bytes
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import holdout_mask
from driftloop.contracts.fieldtypes import FIELD_TYPES
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ConfigError, NotFoundError, ValidationFailed
from driftloop.ops.export import export_artifact
from driftloop.runtime.service import base_app
from driftloop.services.serving import api as serving_api
from driftloop.services.serving.predict import predict as serve
from driftloop.services.serving.served import ModelTable, ServedModel
from driftloop.services.training.hpo import max_rounds, search_metric, tune_space


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_every_family_fits_and_its_artifact_scores_the_same_after_loading(
    tmp_path: Path, family: str, task: str
) -> None:
    cfg = pipeline_of(family, task)
    result, store, prefix = fit(tmp_path, cfg)
    artifact = ModelArtifact.from_bytes(result.artifact, expected_sha256=sha256_bytes(result.artifact))
    assert artifact.family == family and artifact.task == task and artifact.feature_names == cfg.feature_names
    frame = pq.read_table(store.local_path(prefix)).to_pandas()
    holdout = frame[holdout_mask(frame, cfg)]
    predictions = artifact.predict(holdout)
    assert np.isfinite(predictions).all() and len(predictions) == result.holdout["rows"]
    if task == "classification":
        assert ((predictions >= 0) & (predictions <= 1)).all() and result.metrics["roc_auc"] > 0.55
        assert set(result.plots) == {"feature_importance.png", "confusion_matrix.png", "roc.png"}
    else:
        assert set(result.metrics) == {"rmse", "mae", "r2"} and set(result.plots) == {"feature_importance.png"}
    assert all(png.startswith(b"\x89PNG") for png in result.plots.values())
    assert sum(result.feature_importance.values()) == pytest.approx(1.0)
    assert set(result.feature_importance) == set(cfg.feature_names)


def test_an_artifact_written_before_other_families_still_loads(tmp_path: Path) -> None:
    result, store, prefix = fit(tmp_path, pipeline_of("lightgbm", "classification"))
    with zipfile.ZipFile(io.BytesIO(result.artifact)) as zf:
        meta = json.loads(zf.read("meta.json"))
        model_text = zf.read("model.txt")
    meta.pop("model_file")  # the old layout: meta.json without model_file, and model.txt
    old = io.BytesIO()
    with zipfile.ZipFile(old, "w") as zf:
        zf.writestr("meta.json", json.dumps(meta))
        zf.writestr("model.txt", model_text)
    loaded = ModelArtifact.from_bytes(old.getvalue())
    frame = pq.read_table(store.local_path(prefix)).to_pandas()
    expected = ModelArtifact.from_bytes(result.artifact).predict(frame)
    assert loaded.predict(frame) == pytest.approx(expected)


def served_instances(rows: int) -> list[dict[str, Any]]:
    """Raw stream rows as a client sends them to serving (JSON values), with a missing age and an unseen and a
    missing category among them."""
    frame = raw_rows(rows, seed=5).drop(columns=["is_fraud"])
    instances: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", date_format="iso"))
    instances[0]["age"] = None
    instances[1]["merchant_category"] = "unheard-of"
    instances[2]["merchant_category"] = None
    return instances


def run_exported(folder: Path, rows_file: Path) -> subprocess.CompletedProcess[str]:
    # driftloop made unimportable: the folder must not need it.
    code = (
        "import sys, runpy; sys.modules['driftloop'] = None; "
        f"sys.argv = ['predict.py', {str(rows_file)!r}]; "
        f"runpy.run_path({str(folder / 'predict.py')!r}, run_name='__main__')"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def served_model(cfg: PipelineConfig, data: bytes, version: int = 1) -> ServedModel:
    return ServedModel(
        model=cfg.model.name,
        version=version,
        sha256=sha256_bytes(data),
        artifact_uri="file:///model.zip",
        artifact=ModelArtifact.from_bytes(data),
        pipeline=cfg,
        loaded_at=datetime.now(tz=UTC),
        load_seconds=0.0,
        promoted_event_id="e",
    )


def serving_app(cfg: PipelineConfig, data: bytes, version: int) -> TestClient:
    """Serving's own app (its /v2 routes) answering with ``data`` as ``version`` of ``cfg``'s model."""
    table = ModelTable()
    table.swap(served_model(cfg, data, version))
    app = base_app(SimpleNamespace(name="serving"), "serving")  # type: ignore[arg-type]
    app.state.context = serving_api.Context(table, {cfg.model.name: cfg}, lambda event: None, "replica-a")
    app.include_router(serving_api.router)
    return TestClient(app)


@contextmanager
def exported_server(folder: Path) -> Iterator[str]:
    """The folder's serve.py on a free port, driftloop unimportable: its base URL."""
    code = (
        "import sys, runpy; sys.modules['driftloop'] = None; "
        "sys.argv = ['serve.py', '--port', '0']; "
        f"runpy.run_path({str(folder / 'serve.py')!r}, run_name='__main__')"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        started = server.stdout.readline()  # printed once the model is loaded and the port is open
        assert "serving" in started, server.stderr.read() if server.stderr else ""
        yield started.split(" on ", 1)[1].split("/v2/", 1)[0]
    finally:
        server.terminate()
        server.wait(timeout=30)


def both_answer(serving: TestClient, url: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """The same OIP request to serving and to the exported server: both must answer alike (the same status; the
    same outputs, model, version and id, or the same error body). Serving's answer."""
    served = serving.post(path, json=body)
    exported = httpx.post(url + path, json=body, timeout=60)
    assert exported.status_code == served.status_code, (served.json(), exported.json())
    expected, got = served.json(), exported.json()
    if served.status_code == 200:
        assert got["parameters"].keys() == expected["parameters"].keys() == {"request_id"}
        for key in ("model_name", "model_version", "outputs"):
            assert got[key] == expected[key], key
        if isinstance(body.get("id"), str):
            assert got["id"] == expected["id"] == body["id"]
    else:
        assert got == expected
    return served.status_code, expected


def per_field_tensors(signature: dict[str, Any], instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One tensor per input: its field type's datatype, but FP64 (integral values) for integer fields, as a float64
    frame sends them."""
    return [
        {
            "name": i["name"],
            "datatype": "FP64" if FIELD_TYPES[i["type"]].is_integer else FIELD_TYPES[i["type"]].oip,
            "shape": [len(instances)],
            "data": [row.get(i["name"]) for row in instances],
        }
        for i in signature["inputs"]
    ]


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_an_exported_folder_predicts_as_serving_does_without_driftloop(tmp_path: Path, family: str) -> None:
    """From the stream's raw fields (a derived feature, log1p(amount), and a categorical one among the features),
    the exported folder answers what serving answers for the same rows, to the bit."""
    cfg = pipeline_of(family, "classification")
    assert any(f.expr for f in cfg.features) and any(f.kind == "categorical" for f in cfg.features)
    result, _, _ = fit(tmp_path / "store", cfg)
    sha = sha256_bytes(result.artifact)
    folder = export_artifact(result.artifact, tmp_path / "export", pipeline=cfg, expected_sha256=sha, version=1)
    signature = json.loads((folder / "signature.json").read_text())
    assert [i["name"] for i in signature["inputs"]] == [f for f in cfg.stream.field_names if f != "is_fraud"]
    assert [f["name"] for f in signature["features"]] == ModelArtifact.from_bytes(result.artifact).feature_names
    assert signature["artifact_sha256"] == sha
    requirements = (folder / "requirements.txt").read_text()
    assert "numpy==" in requirements and "pandas==" in requirements and "pydantic==" in requirements
    assert {
        "lightgbm": "lightgbm==",
        "xgboost": "xgboost-cpu==",
        "sklearn_linear": "scikit-learn==",
        "sklearn_random_forest": "scikit-learn==",
    }[family] in requirements

    instances = served_instances(40)
    serving = serve(served_model(cfg, result.artifact), instances)["predictions"]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(i) + "\n" for i in instances))
    done = run_exported(folder, rows_file)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["prediction"] for line in done.stdout.splitlines()] == serving

    # The same rows as CSV (what a spreadsheet gives): the same answers.
    pd.DataFrame(instances).to_csv(tmp_path / "rows.csv", index=False)
    done = run_exported(folder, tmp_path / "rows.csv")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["prediction"] for line in done.stdout.splitlines()] == pytest.approx(serving, abs=1e-12)

    # The model's features instead of the stream's fields (what the old export took): refused, naming the column.
    (tmp_path / "features.jsonl").write_text(json.dumps({**instances[3], "log_amount": 1.0}) + "\n")
    refused = run_exported(folder, tmp_path / "features.jsonl")
    assert refused.returncode != 0 and "unknown column(s) ['log_amount']" in refused.stderr
    (tmp_path / "missing.jsonl").write_text(json.dumps({k: v for k, v in instances[3].items() if k != "amount"}) + "\n")
    refused = run_exported(folder, tmp_path / "missing.jsonl")
    assert refused.returncode != 0 and "lacks column(s) ['amount']" in refused.stderr

    # Its OIP server answers the same requests as serving does, with the same numbers: one tensor per field
    # (strings, timestamps, a nullable int sent as integral FP64, an unseen and a missing category), parameters
    # and outputs as the protocol has them; and refuses alike what serving refuses (never a 500).
    app = serving_app(cfg, result.artifact, version=1)
    path = f"/v2/models/{cfg.model.name}/infer"
    with exported_server(folder) as url:
        inputs = per_field_tensors(signature, instances)
        body = {"id": "r-1", "inputs": inputs, "parameters": {"trace": "x"}, "outputs": [{"name": "predict"}]}
        status, answer = both_answer(app, url, path, body)
        assert status == 200 and answer["outputs"][0]["data"] == serving
        # The required fields as one [N, F] tensor: strings and numbers cannot share a datatype.
        meta = app.get(f"/v2/models/{cfg.model.name}").json()
        required = [i["name"] for i in meta["inputs"] if i["parameters"]["required"]]
        matrix = {"name": "x", "datatype": "FP64", "shape": [2, len(required)], "data": [[1.0] * len(required)] * 2}
        refusals = [
            {"inputs": [matrix]},
            {"inputs": [t for t in inputs if t["name"] != "amount"]},
            {"inputs": [{**t, "data": [1] * len(instances)} if t["datatype"] == "BYTES" else t for t in inputs]},
            {"inputs": [{**t, "data": [0.5] * len(instances)} if t["name"] == "age" else t for t in inputs]},
            {"inputs": inputs, "outputs": [{"name": "probability"}]},
            {"inputs": inputs, "parameters": {"nested": {"no": 1}}},
            {"inputs": [{**inputs[0], "shape": [3]}]},
            {"inputs": "rows"},
            [1, 2],
        ]
        for refused_body in refusals:
            status, error = both_answer(app, url, path, refused_body)
            assert 400 <= status < 500 and error["error"], refused_body

        # An amount of 1e308 is a finite double, but XGBoost and a forest read 32-bit floats (it would reach them
        # as infinity: XGBoost fails, the forest refuses the matrix): a 422 naming the feature and the row, alike.
        hostile = [dict(i) for i in instances]
        hostile[3]["amount"] = 1e308
        status, answer = both_answer(app, url, path, {"inputs": per_field_tensors(signature, hostile)})
        if family in ("xgboost", "sklearn_random_forest"):
            assert status == 422 and answer["reason"] == "out_of_range" and answer["field"] == "amount", answer
            assert "row 3" in answer["error"]
        else:  # families that take it answer a finite number
            assert status == 200 and all(math.isfinite(p) for p in answer["outputs"][0]["data"])


def test_the_exported_oip_server_answers_what_predict_py_answers(tmp_path: Path) -> None:
    """The folder's serve.py (standard library, driftloop unimportable) answers an Open Inference Protocol request
    with predict.py's predictions for the same rows, to the bit; its Dockerfile installs the pinned requirements
    on this Python and runs it."""
    cfg = pipeline_of("lightgbm", "classification")
    result, _, _ = fit(tmp_path / "store", cfg)
    folder = export_artifact(
        result.artifact, tmp_path / "export", pipeline=cfg, expected_sha256=sha256_bytes(result.artifact), version=3
    )
    docker = (folder / "Dockerfile").read_text()
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in docker
    assert "pip install --no-cache-dir -r requirements.txt" in docker
    assert 'CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "8080"]' in docker

    instances = served_instances(25)
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(i) + "\n" for i in instances))
    done = run_exported(folder, rows_file)
    assert done.returncode == 0, done.stderr
    expected = [json.loads(line)["prediction"] for line in done.stdout.splitlines()]

    signature = json.loads((folder / "signature.json").read_text())
    inputs = [
        {
            "name": i["name"],
            "datatype": FIELD_TYPES[i["type"]].oip,
            "shape": [len(instances)],
            "data": [row.get(i["name"]) for row in instances],
        }
        for i in signature["inputs"]
    ]
    with exported_server(folder) as url, Client(urls={"serving": url}, token="", retries=0) as dl:
        answer = dl.infer(cfg.model.name, inputs, request_id="req-1")
        meta = dl.model_metadata(cfg.model.name)
        with pytest.raises(ValidationFailed, match="lack required tensor"):
            dl.infer(cfg.model.name, [t for t in inputs if t["name"] != "amount"])
        with pytest.raises(ValidationFailed, match="must hold strings"):
            dl.infer(
                cfg.model.name,
                [{**t, "data": [1] * len(instances)} if t["datatype"] == "BYTES" else t for t in inputs],
            )
        with pytest.raises(NotFoundError):
            dl.infer("another-model", inputs)
        # Its own version by name, as serving has it; another version is not there (404, the protocol's "not ready").
        versioned = httpx.post(f"{url}/v2/models/{cfg.model.name}/versions/3/infer", json={"inputs": inputs})
        ready = httpx.get(f"{url}/v2/models/{cfg.model.name}/versions/3/ready")
        other = httpx.get(f"{url}/v2/models/{cfg.model.name}/versions/4/ready")
        other_infer = httpx.post(f"{url}/v2/models/{cfg.model.name}/versions/4/infer", json={"inputs": inputs})
    assert answer.outputs[0].data == expected and answer.outputs[0].shape == [len(instances)]
    assert (answer.model_name, answer.model_version, answer.id) == (cfg.model.name, "3", "req-1")
    assert [t.name for t in meta.inputs] == [i["name"] for i in signature["inputs"]] and meta.versions == ["3"]
    assert versioned.status_code == 200 and versioned.json()["outputs"][0]["data"] == expected
    assert ready.status_code == 200 and ready.json() == {"name": cfg.model.name, "version": "3", "ready": True}
    assert other.status_code == other_infer.status_code == 404 and "version '4'" in other.json()["error"]


def numeric_pipeline(family: str) -> PipelineConfig:
    """The demo pipeline whose required inputs are all numbers (a double, two ints): what a client sends as one
    [N, F] matrix. The key and time fields are nullable (not required), the categorical feature is gone."""
    text = pipeline_of(family, "classification").model_dump_json()
    cfg = json.loads(text)
    for f in cfg["stream"]["fields"]:
        if f["name"] in ("customer_id", "event_time"):
            f["nullable"] = True
    cfg["features"] = [f for f in cfg["features"] if f["name"] != "merchant_category"]
    return PipelineConfig.model_validate(cfg)


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_the_exported_oip_server_takes_one_matrix_tensor_as_serving_does(tmp_path: Path, family: str) -> None:
    """A single [N, F] tensor whose columns are the required inputs in the signature's order (integral FP64 values
    for the int fields, a null for the nullable one) is answered by the exported server as serving answers it, on
    the unversioned and the versioned route; a width that is neither all nor the required inputs is refused alike."""
    cfg = numeric_pipeline(family)
    result, _, _ = fit(tmp_path / "store", cfg)
    folder = export_artifact(result.artifact, tmp_path / "export", pipeline=cfg, version=2)
    app = serving_app(cfg, result.artifact, version=2)
    meta = app.get(f"/v2/models/{cfg.model.name}").json()
    required = [i["name"] for i in meta["inputs"] if i["parameters"]["required"]]
    assert required == ["amount", "age", "hour"]
    instances = served_instances(12)
    rows = [
        [float(r["amount"]), r["age"] if r["age"] is None else float(r["age"]), float(r["hour"])] for r in instances
    ]
    matrix = {"name": "x", "datatype": "FP64", "shape": [len(rows), 3], "data": rows, "parameters": {"k": 1}}
    served = serve(served_model(cfg, result.artifact, 2), [dict(zip(required, r, strict=True)) for r in rows])
    with exported_server(folder) as url:
        for path in (f"/v2/models/{cfg.model.name}/infer", f"/v2/models/{cfg.model.name}/versions/2/infer"):
            status, answer = both_answer(app, url, path, {"inputs": [matrix]})
            assert status == 200 and answer["outputs"][0]["data"] == served["predictions"]
            assert answer["model_version"] == "2"
        flat = {**matrix, "data": [v for r in rows for v in r]}  # data flat or nested
        assert both_answer(app, url, path, {"inputs": [flat]})[1]["outputs"][0]["data"] == served["predictions"]
        assert httpx.get(f"{url}/v2/models/{cfg.model.name}").json() == meta | {"versions": ["2"]}
        for refused in (
            {**matrix, "shape": [len(rows) // 2, 2], "data": [v for r in rows for v in r[:2]][: len(rows)]},
            {**matrix, "data": [[*r[:2], 1.5] for r in rows]},  # hour is an int field: integral values only
            {**matrix, "datatype": "BYTES"},
        ):
            status, error = both_answer(app, url, path, {"inputs": [refused]})
            assert status == 422 and error["reason"], refused


def test_an_answer_that_is_not_finite_is_refused_naming_its_rows() -> None:
    artifact = ModelArtifact(family="sklearn_linear", task="regression", feature_names=["x"], categories={}, model=None)
    assert artifact.finite(np.array([1.0, -2.5])).tolist() == [1.0, -2.5]
    with pytest.raises(ValidationFailed, match=r"row\(s\) 1, 3 is not finite") as refused:
        artifact.finite(np.array([0.5, np.inf, 1.0, np.nan]))
    assert refused.value.status_code == 422 and refused.value.reason == "not_scorable"


def test_a_tampered_artifact_is_refused_by_export(tmp_path: Path) -> None:
    cfg = pipeline_of("lightgbm", "classification")
    result, _, _ = fit(tmp_path, cfg)
    with pytest.raises(Exception, match="does not match"):
        export_artifact(
            result.artifact + b"x", tmp_path / "out", pipeline=cfg, expected_sha256=sha256_bytes(result.artifact)
        )


SEARCH = """  search:
    trials: 5
    space:
      num_leaves: {type: int, low: 4, high: 64, log: true}
      learning_rate: {type: float, low: 0.01, high: 0.3, log: true}
      n_estimators: {type: choice, values: [20, 40, 80]}
"""


def test_a_search_space_becomes_tune_distributions() -> None:
    cfg = pipeline_of("lightgbm", "classification", SEARCH)
    assert cfg.model.search is not None and cfg.model.search.searcher == "optuna_tpe"
    space = tune_space(cfg.model.search.space)
    assert set(space) == {"num_leaves", "learning_rate", "n_estimators"}
    samples = [space["num_leaves"].sample() for _ in range(200)]
    assert min(samples) >= 4 and max(samples) <= 64  # the config's bounds are inclusive
    assert "LogUniform" in type(space["learning_rate"].get_sampler()).__name__
    assert max_rounds(cfg) == 80
    assert search_metric(cfg) == ("roc_auc", "max")
    assert search_metric(pipeline_of("lightgbm", "regression", SEARCH)) == ("rmse", "min")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("{lr: {type: float, low: 0, high: 1, log: true}}", "log-scale range needs low > 0"),
        ("{lr: {type: float, low: 2, high: 1}}", "needs low < high"),
        ("{depth: {type: choice}}", "non-empty 'values'"),
        ("{depth: {type: choice, values: [1, 2], low: 1}}", "takes only 'values'"),
        ("{depth: {type: int, low: 1, high: 5, step: 2}}", "unknown key"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_key(space: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        pipeline_of("lightgbm", "classification", f"  search:\n    space: {space}\n")
    assert "model.search.space" in str(failure.value)
