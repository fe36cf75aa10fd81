"""Predict with an exported driftloop model, exactly as driftloop's serving does. Needs only requirements.txt.

    python predict.py rows.jsonl | rows.csv     (or JSON lines on stdin)

Rows are the stream's raw fields (signature.json "inputs"). The features are computed by serving's own function and
scored by the artifact's own code, both shipped in driftloop_frozen/. From Python: ``predict(rows)`` with rows a list
of dicts (JSON objects) returns the predictions; ``InputError`` for rows serving would refuse.

(In driftloop this file is the template ``driftloop.ops.export`` copies into an export folder as ``predict.py``;
it is never imported there.)
"""

import csv
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from driftloop_frozen.contracts.artifact import ModelArtifact  # noqa: E402
from driftloop_frozen.contracts.featuredefs import features_from_instances  # noqa: E402
from driftloop_frozen.contracts.pipeline import PipelineConfig  # noqa: E402
from driftloop_frozen.errors import DriftloopError  # noqa: E402

SIGNATURE = json.loads((HERE / "signature.json").read_text())
PIPELINE = PipelineConfig.model_validate(json.loads((HERE / "pipeline.json").read_text()))
REQUIRED = [i["name"] for i in SIGNATURE["inputs"] if i["required"]]
# The stream's fields (the label too: it is ignored) and the aggregate features a row may carry by name.
KNOWN = {f.name for f in PIPELINE.stream.fields} | {f.name for f in PIPELINE.features if f.aggregate is not None}
_loaded: list[ModelArtifact] = []


class InputError(ValueError):
    """Rows that serving would refuse: a missing or unknown column, a value of the wrong type."""


def artifact() -> ModelArtifact:
    """The model, loaded once, after checking model.zip against the sha256 of signature.json."""
    if not _loaded:
        data = (HERE / "model.zip").read_bytes()
        if hashlib.sha256(data).hexdigest() != SIGNATURE["artifact_sha256"]:
            raise InputError("model.zip does not match the sha256 in signature.json: refusing it")
        _loaded.append(ModelArtifact.from_bytes(data))
    return _loaded[0]


def check_columns(rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"row {index} is not an object of field values")
        missing = [name for name in REQUIRED if name not in row]
        if missing:
            raise InputError(f"row {index} lacks column(s) {missing}; every row needs {REQUIRED}")
        unknown = sorted(set(row) - KNOWN)
        if unknown:
            raise InputError(f"row {index} has unknown column(s) {unknown}; the inputs are {sorted(KNOWN)}")


def predict(rows: list[dict]) -> list[float]:
    """Serving's answer for each row of raw fields."""
    rows = list(rows)
    check_columns(rows)
    model = artifact()
    try:
        # Refused as serving refuses: fields that do not convert, numbers beyond the model, answers not finite.
        scores = model.predict(features_from_instances(rows, PIPELINE))
    except DriftloopError as exc:
        raise InputError(str(exc)) from exc  # serve.py answers with the cause's status, reason and field
    return [float(p) for p in scores]


def _typed(text: str, kind: str) -> object:
    """A CSV cell as the JSON value serving would get: empty is null, numbers by the field's type."""
    if text == "":
        return None
    if kind in ("int", "long"):
        number = float(text)
        return int(number) if number.is_integer() else number
    if kind in ("double", "float"):
        return float(text)
    if kind == "boolean":
        return text.strip().lower() in ("true", "1", "yes")
    return text


def read_rows(argv: list[str]) -> list[dict]:
    if len(argv) > 1 and argv[1].endswith(".csv"):
        kinds = {f.name: f.type for f in PIPELINE.stream.fields}
        with open(argv[1], newline="") as handle:
            return [{k: _typed(v, kinds.get(k, "string")) for k, v in r.items()} for r in csv.DictReader(handle)]
    text = Path(argv[1]).read_text() if len(argv) > 1 else sys.stdin.read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


if __name__ == "__main__":
    try:
        predictions = predict(read_rows(sys.argv))
    except InputError as exc:
        sys.exit(f"error: {exc}")
    for value in predictions:
        print(json.dumps({"prediction": value}))
