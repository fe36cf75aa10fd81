"""Open Inference Protocol (KServe v2, REST) tensors <-> driftloop instances.

The model's inputs (its signature) are the stream's fields but the label, in the stream's order. A request sends
them either one tensor per field, columnar (shape ``[N]`` or ``[N, 1]`` for N rows, ``data`` flat or nested), or
as ONE ``[N, F]`` tensor (any name) whose F columns are the signature's inputs in order: all of them, or only the
required ones (``parameters.required`` in the metadata), which is what many clients send from a matrix. Datatypes
follow the field types (``FIELD_TYPES`` in ``driftloop.contracts.fieldtypes``): string and timestamp (ISO 8601)
fields are ``BYTES``, int/long fields ``INT*``/``UINT*`` (``FP*`` too when every value is integral, e.g. a float64
frame), double/float fields ``FP*`` (integer tensors too), boolean fields ``BOOL``. ``parameters`` (of the
request, an input or an output) is an object of scalars; none changes the answer. The one output is ``predict``
(``FP64``, shape ``[N]``): the positive-class probability for classifiers, the value for regressors; ``outputs``
in a request may name it, and nothing else.

Serving (``services/serving/api.py``) and an exported model's ``serve.py`` (``driftloop.ops.export`` ships this
module with the folder) both decode requests here, so they accept and refuse the same requests, with the same
messages. It imports only the contracts and errors the export ships."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from driftloop.contracts.fieldtypes import FIELD_TYPES, OIP_DATATYPES, OIP_FLOAT_DATATYPES, OIP_INTEGER_DATATYPES
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import BadRequest, DriftloopError, ValidationFailed, http_status_of

OUTPUT_NAME = "predict"
MAX_ROWS = 10_000  # rows per request
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class _Input:
    name: str
    field_type: str
    datatype: str  # what metadata advertises
    accepted: frozenset[str]  # what a request may send
    integral: bool  # an integer field: FP tensors must hold integral values
    nullable: bool
    required: bool


@dataclass(frozen=True)
class Signature:
    """The inputs of one pipeline's model, worked out once."""

    inputs: tuple[_Input, ...]
    by_name: dict[str, _Input]
    required: tuple[str, ...]


_SIGNATURES: dict[int, tuple[PipelineConfig, Signature]] = {}


def signature(pipeline: PipelineConfig) -> Signature:
    cached = _SIGNATURES.get(id(pipeline))
    if cached is not None and cached[0] is pipeline:
        return cached[1]
    stream = pipeline.stream
    # The fields plain features read (as ``features_from_instances`` requires them); an aggregate's value comes by
    # name or is missing, so its source field is not needed.
    needed = {f.source or f.name for f in pipeline.features if f.expr is None and f.aggregate is None}
    inputs = []
    for f in stream.fields:
        if f.name == stream.label:
            continue
        info = FIELD_TYPES[f.type]
        accepted = info.oip_accepted | (OIP_FLOAT_DATATYPES if info.is_integer else frozenset())
        inputs.append(
            _Input(
                name=f.name,
                field_type=f.type,
                datatype=info.oip,
                accepted=accepted,
                integral=info.is_integer,
                nullable=f.nullable,
                required=f.name in needed or not f.nullable,
            )
        )
    built = Signature(tuple(inputs), {i.name: i for i in inputs}, tuple(i.name for i in inputs if i.required))
    _SIGNATURES[id(pipeline)] = (pipeline, built)
    return built


def input_fields(pipeline: PipelineConfig) -> list[str]:
    return [i.name for i in signature(pipeline).inputs]


def required_fields(pipeline: PipelineConfig) -> list[str]:
    """Inputs a request must carry: non-nullable fields and the fields plain features read."""
    return list(signature(pipeline).required)


def metadata(pipeline: PipelineConfig, versions: list[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}[/versions/{v}]``: the signature as tensor metadata (``-1``: any number of rows)."""
    sig = signature(pipeline)
    return {
        "name": pipeline.model.name,
        "versions": versions,
        "platform": pipeline.model.family,
        "inputs": [
            {
                "name": i.name,
                "datatype": i.datatype,
                "shape": [-1],
                "parameters": {"field_type": i.field_type, "required": i.required},
            }
            for i in sig.inputs
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
    }


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        if not any(isinstance(item, list) for item in data):
            return data
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item)) if isinstance(item, list) else out.append(item)
        return out
    return [data]


def _integer(value: int | float, where: str, name: str) -> int:
    number = int(value)
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise ValidationFailed("out_of_range", name, f"{where} holds {value!r}, which does not fit in 64 bits")
    return number


def _convert(value: Any, datatype: str, where: str, column: _Input) -> Any:
    name = column.name
    if value is None:
        if not column.nullable:
            raise ValidationFailed("null_value", name, f"{where} is null, the field is not nullable")
        return None
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise ValidationFailed("wrong_type", name, f"{where} must hold booleans (BOOL), got {value!r}")
        return value
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise ValidationFailed("wrong_type", name, f"{where} must hold strings (BYTES), got {value!r}")
        return value
    if datatype in OIP_INTEGER_DATATYPES:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValidationFailed("wrong_type", name, f"{where} must hold integers ({datatype}), got {value!r}")
        if datatype.startswith("UINT") and value < 0:
            raise ValidationFailed("out_of_range", name, f"{where} is {datatype} but holds {value}")
        return _integer(value, where, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed("wrong_type", name, f"{where} must hold numbers ({datatype}), got {value!r}")
    if not math.isfinite(value):
        raise ValidationFailed("not_finite", name, f"{where} holds a non-finite number")
    if column.integral:
        if isinstance(value, float) and not value.is_integer():
            raise ValidationFailed(
                "wrong_type", name, f"{where} must hold integral values ({column.field_type} field), got {value!r}"
            )
        return _integer(value, where, name)
    return float(value)


def _column(values: list[Any], datatype: str, where: str, column: _Input) -> list[Any]:
    # The common case, checked in one pass: an FP64 tensor of finite floats for a float field.
    if datatype == "FP64" and not column.integral and all(type(v) is float and math.isfinite(v) for v in values):
        return values
    return [_convert(v, datatype, f"{where}[{i}]", column) for i, v in enumerate(values)]


def check_parameters(parameters: Any, where: str) -> None:
    """``parameters``: an object whose values are strings, numbers or booleans (the protocol's $parameters)."""
    if parameters is None:
        return
    if not isinstance(parameters, dict) or not all(
        isinstance(v, str | int | float | bool) and not isinstance(v, dict | list) for v in parameters.values()
    ):
        raise ValidationFailed(
            "bad_parameters", "parameters", f"{where} must be an object of strings, numbers or booleans"
        )


def _check_datatype(tensor: dict[str, Any], where: str, field: str) -> str:
    datatype = tensor.get("datatype")
    if datatype not in OIP_DATATYPES:
        raise ValidationFailed(
            "bad_datatype", field, f"{where}: datatype {datatype!r} is not one of {sorted(OIP_DATATYPES)}"
        )
    return datatype


def _check_shape(tensor: dict[str, Any], where: str, field: str) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ValidationFailed("bad_shape", field, f"{where}: shape must be [N], [N, 1] or [N, F], got {shape!r}")
    return shape


def _data(tensor: dict[str, Any], where: str, field: str, size: int, shape: list[int]) -> list[Any]:
    if "data" not in tensor:
        raise ValidationFailed("missing_data", field, f"{where} has no data")
    data = _flatten(tensor["data"])
    if len(data) != size:
        raise ValidationFailed(
            "shape_mismatch", field, f"{where}: shape {shape} needs {size} values, data has {len(data)}"
        )
    return data


def _matrix_columns(tensor: dict[str, Any], shape: list[int], sig: Signature, model: str) -> dict[str, list[Any]]:
    """One ``[N, F]`` tensor: its F columns are the signature's inputs in order (all, or the required ones)."""
    rows, width = shape
    name = tensor.get("name")
    where = f"input {name!r}"
    if width == len(sig.inputs):
        columns = [i.name for i in sig.inputs]
    elif width == len(sig.required):
        columns = list(sig.required)
    else:
        raise ValidationFailed(
            "shape_mismatch",
            "inputs",
            f"{where}: an [N, F] tensor's columns are {model}'s inputs in order: F = {len(sig.inputs)} "
            f"({[i.name for i in sig.inputs]}) or the {len(sig.required)} required ones ({list(sig.required)}), "
            f"not {width}",
        )
    datatype = _check_datatype(tensor, where, "inputs")
    data = _data(tensor, where, "inputs", rows * width, shape)
    out: dict[str, list[Any]] = {}
    for j, column_name in enumerate(columns):
        column = sig.by_name[column_name]
        if datatype not in column.accepted:
            raise ValidationFailed(
                "wrong_datatype",
                column_name,
                f"{where} column {j} is {column_name!r}, a {column.field_type} field: datatype must be one of "
                f"{sorted(column.accepted)}, not {datatype}",
            )
        out[column_name] = _column(data[j::width], datatype, f"{where}[:, {j}] ({column_name})", column)
    return out


def instances_from_inputs(inputs: Any, pipeline: PipelineConfig) -> list[dict[str, Any]]:
    """Check the request's tensors against the signature and turn them into instances (one dict per row)."""
    if not isinstance(inputs, list) or not inputs:
        raise ValidationFailed("missing_inputs", "inputs", "inputs must be a non-empty list of tensors")
    sig = signature(pipeline)
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for position, tensor in enumerate(inputs):
        where = f"inputs[{position}]"
        if not isinstance(tensor, dict):
            raise ValidationFailed(
                "not_a_tensor", "inputs", f"{where} must be an object with name, shape, datatype, data"
            )
        name = tensor.get("name")
        if not isinstance(name, str):
            raise ValidationFailed("missing_name", "inputs", f"{where}.name must be a string")
        check_parameters(tensor.get("parameters"), f"{where}.parameters")
        shape = tensor.get("shape")
        if len(inputs) == 1 and isinstance(shape, list) and len(shape) == 2 and shape[1] != 1:
            shape = _check_shape(tensor, f"input {name!r}", "inputs")
            columns = _matrix_columns(tensor, shape, sig, pipeline.model.name)
            rows = shape[0]
            break
        where = f"input {name!r}"
        column = sig.by_name.get(name)
        if column is None:
            raise ValidationFailed(
                "unknown_input",
                name,
                f"{where} is not an input of {pipeline.model.name}; inputs: {sorted(sig.by_name)}",
            )
        if name in columns:
            raise ValidationFailed("duplicate_input", name, f"{where} is given twice")
        datatype = _check_datatype(tensor, where, name)
        if datatype not in column.accepted:
            raise ValidationFailed(
                "wrong_datatype",
                name,
                f"{where} is a {column.field_type} field: datatype must be one of {sorted(column.accepted)}, "
                f"not {datatype}",
            )
        shape = _check_shape(tensor, where, name)
        if len(shape) == 2 and shape[1] != 1:
            raise ValidationFailed(
                "bad_shape", name, f"{where}: shape must be [N] or [N, 1] (one tensor per input), got {shape!r}"
            )
        data = _data(tensor, where, name, shape[0], shape)
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ValidationFailed("batch_mismatch", name, f"{where} has {shape[0]} rows, earlier inputs have {rows}")
        columns[name] = _column(data, datatype, where, column)
    missing = [n for n in sig.required if n not in columns]
    if missing:
        raise ValidationFailed("missing_input", missing[0], f"inputs lack required tensor(s) {missing}")
    if not rows:
        raise ValidationFailed("empty", "inputs", "the tensors hold no rows")
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def check_outputs(outputs: Any) -> list[dict[str, Any]] | None:
    """The requested outputs (None: all). Each names ``predict``; its ``parameters`` are checked."""
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ValidationFailed("bad_outputs", "outputs", 'outputs must be a list of {"name": ...}')
    for i, o in enumerate(outputs):
        if o.get("name") != OUTPUT_NAME:
            raise ValidationFailed(
                "unknown_output", "outputs", f"unknown output {o.get('name')!r}; the output is {OUTPUT_NAME!r}"
            )
        check_parameters(o.get("parameters"), f"outputs[{i}].parameters")
    return outputs


def response(
    model: str,
    version: int | str,
    request_id: str,
    client_id: str | None,
    predictions: list[float],
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The inference response: ``predict`` unless ``outputs`` asked for none of it (an empty list)."""
    tensor = {"name": OUTPUT_NAME, "datatype": "FP64", "shape": [len(predictions)], "data": predictions}
    return {
        "model_name": model,
        "model_version": str(version),
        "id": client_id if client_id is not None else request_id,
        "parameters": {"request_id": request_id},
        "outputs": [tensor] if outputs is None or outputs else [],
    }


@dataclass(frozen=True)
class InferenceRequest:
    """What an inference request asks: its rows of raw fields, the client's ``id``, the requested outputs."""

    instances: list[dict[str, Any]]
    client_id: str | None
    outputs: list[dict[str, Any]] | None


def decode_request(body: bytes | Any, pipeline: PipelineConfig, max_rows: int | None = MAX_ROWS) -> InferenceRequest:
    """An inference request (its JSON text, or the parsed body); BadRequest (400) for a body that is not a JSON
    object, ValidationFailed (422) for an id, parameters, inputs or outputs that do not fit the model's signature or
    the protocol, or more than ``max_rows`` rows."""
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'inputs'")
    client_id = body.get("id")
    if client_id is not None and not isinstance(client_id, str):
        raise ValidationFailed("wrong_type", "id", "id must be a string")
    check_parameters(body.get("parameters"), "parameters")
    instances = instances_from_inputs(body.get("inputs"), pipeline)
    outputs = check_outputs(body.get("outputs"))
    if max_rows is not None and len(instances) > max_rows:
        raise ValidationFailed("too_many_rows", "inputs", f"at most {max_rows} rows per request")
    return InferenceRequest(instances, client_id, outputs)


def error_body(exc: DriftloopError) -> tuple[int, dict[str, Any]]:
    """The protocol's error answer for ``exc``: its status and ``{"error": message}`` (+ ``reason`` and ``field``
    for an input that does not fit)."""
    if isinstance(exc, ValidationFailed):
        return http_status_of(exc), {"error": str(exc), "reason": exc.reason, "field": exc.field}
    return http_status_of(exc), {"error": str(exc)}
