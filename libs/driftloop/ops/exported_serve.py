"""An Open Inference Protocol (KServe v2, REST) server for an exported driftloop model: the standard library and
predict.py, nothing else (``Dockerfile`` runs it).

    python serve.py [--host 127.0.0.1] [--port 8080]

``POST /v2/models/{model}/infer`` (and ``/v2/models/{model}/versions/{version}/infer``) takes exactly what driftloop's
serving takes, decoded by the same code (``driftloop_frozen/contracts/oip.py``): one tensor per input (the stream's
raw fields, signature.json "inputs"), shape ``[N]`` or ``[N, 1]``, or ONE ``[N, F]`` tensor whose F columns are
the inputs in order (all of them, or only the required ones); string and timestamp (ISO 8601) fields ``BYTES``,
integer fields ``INT*``/``UINT*`` (or ``FP*`` holding integral values), number fields ``INT*``/``FP*``, boolean
fields ``BOOL``; ``null`` for a missing value of a nullable field; ``parameters`` (objects of scalars) and
``outputs`` (naming ``predict``) as the protocol has them. It answers predict.py's predictions for those rows as
the ``FP64`` output ``predict`` (shape ``[N]``), as serving does. ``GET /v2``, ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{model}[/versions/{version}]`` (metadata) and their ``/ready`` too. Errors are
the protocol's ``{"error": message}`` (+ ``reason`` and ``field`` for an input that does not fit): 400 for a body
that is not a JSON object, 404 for another model, version or path, 422 for inputs serving would refuse.

(In driftloop this file is the template ``driftloop.ops.export`` copies into an export folder as ``serve.py``;
it is never imported there.)
"""

import argparse
import importlib
import json
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from driftloop_frozen.contracts import oip  # noqa: E402
from driftloop_frozen.errors import BadRequest, DriftloopError, NotFoundError, ValidationFailed  # noqa: E402

predict = importlib.import_module("predict")  # this folder's predict.py: the one place rows are scored

MODEL = predict.SIGNATURE["model"]
VERSION = str(predict.SIGNATURE.get("version") or "")
VERSIONS = [VERSION] if VERSION else []


def unknown_model(name: str) -> NotFoundError:
    return NotFoundError(f"unknown model {name!r}; known models: {[MODEL]}")


def check_version(version: str) -> None:
    if version not in VERSIONS:
        raise NotFoundError(
            f"model {MODEL!r} version {version!r} is not loaded on this server (loaded: {VERSIONS or 'none'})"
        )


def infer(raw: bytes) -> dict[str, Any]:
    """The answer to an inference request's body: serving's decoding, predict.py's predictions."""
    request = oip.decode_request(raw, predict.PIPELINE)
    try:
        predictions = predict.predict(request.instances)
    except predict.InputError as exc:
        cause = exc.__cause__
        raise cause if isinstance(cause, DriftloopError) else ValidationFailed("invalid", None, str(exc)) from None
    request_id = uuid.uuid4().hex
    return oip.response(MODEL, VERSION, request_id, request.client_id, predictions, request.outputs)


def route(method: str, path: str) -> tuple[str, str | None] | None:
    """``(what, version)`` for a path under ``/v2/models/{MODEL}``: what is "metadata", "ready" or "infer"."""
    parts = path.split("/")[1:]  # "", "v2", "models", name, ...
    if parts[:2] != ["v2", "models"] or len(parts) < 3:
        return None
    if parts[2] != MODEL:
        raise unknown_model(parts[2])
    rest, version = parts[3:], None
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
    what = {(): "metadata", ("ready",): "ready", ("infer",): "infer"}.get(tuple(rest))
    if what is None or (what == "infer") != (method == "POST"):
        return None
    if version is not None:
        check_version(version)
    return what, version


class Handler(BaseHTTPRequestHandler):
    server_version = "driftloop-export"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
            raw = self.rfile.read(length) if method == "POST" else b""
            if method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
                # The model is loaded before the port opens: ready as soon as it answers.
                self._answer(200, {"live": True} if path.endswith("live") else {"ready": True})
                return
            if method == "GET" and path == "/v2":
                self._answer(200, {"name": "driftloop-export", "version": VERSION, "extensions": []})
                return
            found = route(method, path)
            if found is None:
                raise NotFoundError(f"no route {method} {path!r}; infer at POST /v2/models/{MODEL}/infer")
            what, version = found
            if what == "metadata":
                self._answer(200, oip.metadata(predict.PIPELINE, [version] if version else VERSIONS))
            elif what == "ready":
                ready = {"name": MODEL, "ready": True}
                self._answer(200, {**ready, "version": version} if version else ready)
            else:
                self._answer(200, infer(raw))
        except DriftloopError as exc:
            self._answer(*oip.error_body(exc))
        except Exception as exc:  # a bug, not the client's: answered, never a dropped connection
            self._answer(500, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


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
