"""An Open Inference Protocol (KServe v2, REST) server for an exported driftloop model: the standard library and
predict.py, nothing else (``Dockerfile`` runs it).

    python serve.py [--host 127.0.0.1] [--port 8080]

``POST /v2/models/{model}/infer`` takes one tensor per input (the stream's raw fields, signature.json "inputs"):
shape ``[N]`` or ``[N, 1]``, ``data`` flat or nested; string and timestamp (ISO 8601) fields ``BYTES``, integer
fields ``INT*``/``UINT*`` (or ``FP*`` holding integral values), number fields ``INT*``/``FP*``, boolean fields
``BOOL``; ``null`` for a missing value of a nullable field. It answers predict.py's predictions for those rows as the
``FP64`` output ``predict`` (shape ``[N]``), as serving does. ``GET /v2/health/live``, ``/v2/health/ready``,
``/v2/models/{model}`` (metadata) and ``/v2/models/{model}/ready`` too. Errors are the protocol's ``{"error":
message}``: 400 for a body that is not a JSON object, 404 for another model or path, 422 for inputs serving would
refuse.

(In driftloop this file is the template ``driftloop.ops.export`` copies into an export folder as ``serve.py``;
it is never imported there.)
"""

import argparse
import importlib
import json
import math
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from driftloop_frozen.contracts.fieldtypes import FIELD_TYPES, OIP_FLOAT_DATATYPES  # noqa: E402

predict = importlib.import_module("predict")  # this folder's predict.py: the one place rows are scored

MODEL = predict.SIGNATURE["model"]
VERSION = str(predict.SIGNATURE.get("version") or "")
OUTPUT = "predict"
STREAM = predict.PIPELINE.stream
FIELDS = {f.name: f for f in STREAM.fields if f.name != STREAM.label}


class RequestError(ValueError):
    """A request serving would refuse: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def metadata() -> dict[str, Any]:
    required = set(predict.REQUIRED)
    return {
        "name": MODEL,
        "versions": [VERSION] if VERSION else [],
        "platform": predict.SIGNATURE["family"],
        "inputs": [
            {
                "name": f.name,
                "datatype": FIELD_TYPES[f.type].oip,
                "shape": [-1],
                "parameters": {"field_type": f.type, "required": f.name in required},
            }
            for f in FIELDS.values()
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
    }


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item)) if isinstance(item, list) else out.append(item)
    return out


def _value(value: Any, datatype: str, name: str) -> Any:
    field = FIELDS[name]
    info = FIELD_TYPES[field.type]
    if value is None:
        if not field.nullable:
            raise RequestError(f"input {name!r} holds a null, the field is not nullable")
        return None
    if datatype == "BYTES" or datatype == "BOOL":
        if not isinstance(value, str if datatype == "BYTES" else bool):
            raise RequestError(f"input {name!r} must hold {'strings' if datatype == 'BYTES' else 'booleans'}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"input {name!r} must hold finite numbers ({datatype}), got {value!r}")
    if info.is_integer:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"input {name!r} is a {field.type} field: integral values only, got {value!r}")
        return int(value)
    return float(value)


def rows_of(body: Any) -> list[dict[str, Any]]:
    """The rows of raw fields an inference request's tensors hold."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("inputs must be a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(f"inputs[{position}] must be an object with name, shape, datatype, data")
        name, shape, datatype = tensor["name"], tensor.get("shape"), str(tensor.get("datatype"))
        if name not in FIELDS:
            raise RequestError(f"input {name!r} is not an input of {MODEL}; inputs: {sorted(FIELDS)}")
        if name in columns:
            raise RequestError(f"input {name!r} is given twice")
        accepted = FIELD_TYPES[FIELDS[name].type].oip_accepted
        if FIELD_TYPES[FIELDS[name].type].is_integer:
            accepted = accepted | OIP_FLOAT_DATATYPES
        if datatype not in accepted:
            raise RequestError(f"input {name!r}: datatype must be one of {sorted(accepted)}, not {datatype!r}")
        if not (isinstance(shape, list) and len(shape) in (1, 2) and shape[1:] in ([], [1])):
            raise RequestError(f"input {name!r}: shape must be [N] or [N, 1], got {shape!r}")
        data = _flatten(tensor.get("data"))
        if len(data) != shape[0]:
            raise RequestError(f"input {name!r}: shape {shape} needs {shape[0]} values, data has {len(data)}")
        columns[name] = [_value(v, datatype, name) for v in data]
    if len({len(c) for c in columns.values()}) != 1:
        raise RequestError("every input must have the same number of rows")
    missing = [n for n in predict.REQUIRED if n not in columns]
    if missing:
        raise RequestError(f"inputs lack required tensor(s) {missing}")
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def infer(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with 'inputs'", 400)
    rows = rows_of(body)
    try:
        predictions = predict.predict(rows)
    except predict.InputError as exc:
        raise RequestError(str(exc)) from None
    request_id = uuid.uuid4().hex
    client_id = body.get("id")
    return {
        "model_name": MODEL,
        "model_version": VERSION,
        "id": client_id if isinstance(client_id, str) else request_id,
        "parameters": {"request_id": request_id},
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [len(predictions)], "data": predictions}],
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "driftloop-export"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v2/health/live", "/v2/health/ready"):
            self._answer(200, {"live": True} if path.endswith("live") else {"ready": True})
        elif path == "/v2":
            self._answer(200, {"name": "driftloop-export", "version": VERSION, "extensions": []})
        elif path == f"/v2/models/{MODEL}":
            self._answer(200, metadata())
        elif path == f"/v2/models/{MODEL}/ready":
            self._answer(200, {"name": MODEL, "ready": True})
        else:
            self._answer(404, {"error": f"no route {path!r}; the model is {MODEL!r}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if path != f"/v2/models/{MODEL}/infer":
            self._answer(404, {"error": f"no route {path!r}; infer at /v2/models/{MODEL}/infer"})
            return
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise RequestError(f"the request body is not JSON: {exc}", 400) from None
            self._answer(200, infer(body))
        except RequestError as exc:
            self._answer(exc.status, {"error": str(exc)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Open Inference Protocol server of {MODEL}")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    predict.artifact()  # load (and check the sha256 of) the model before answering anything
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving {MODEL} on http://{args.host}:{server.server_address[1]}/v2/models/{MODEL}/infer", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
