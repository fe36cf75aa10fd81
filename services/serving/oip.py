"""Open Inference Protocol (KServe v2) tensors <-> driftloop instances.

The model's inputs are the stream's fields (all but the label), one tensor per field, columnar: shape ``[N]`` or
``[N, 1]`` for N rows, ``data`` flat (row-major) or nested. Datatypes follow the field types (``FIELD_TYPES`` in
``driftloop.contracts.fieldtypes``): string and timestamp (ISO 8601) fields are ``BYTES``, int/long fields
``INT*``/``UINT*``, double/float fields ``FP*`` (integer tensors are accepted too), boolean fields ``BOOL``. The
one output is ``predict`` (``FP64``, shape ``[N]``): the positive-class probability for classifiers, the value for
regressors."""

from __future__ import annotations

import math
from typing import Any

from driftloop.contracts.fieldtypes import FIELD_TYPES, OIP_DATATYPES, OIP_INTEGER_DATATYPES
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ValidationFailed

OUTPUT_NAME = "predict"


def input_fields(pipeline: PipelineConfig) -> list[str]:
    return [f.name for f in pipeline.stream.fields if f.name != pipeline.stream.label]


def required_fields(pipeline: PipelineConfig) -> list[str]:
    """Inputs a request must carry: non-nullable fields and the fields plain features read."""
    stream = pipeline.stream
    needed = {f.source or f.name for f in pipeline.features if f.expr is None}
    return [n for n in input_fields(pipeline) if n in needed or not stream.field(n).nullable]


def metadata(pipeline: PipelineConfig, versions: list[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the signature as tensor metadata (``-1``: any number of rows)."""
    required = set(required_fields(pipeline))
    stream = pipeline.stream
    return {
        "name": pipeline.model.name,
        "versions": versions,
        "platform": pipeline.model.family,
        "inputs": [
            {
                "name": name,
                "datatype": FIELD_TYPES[stream.field(name).type].oip,
                "shape": [-1],
                "parameters": {"field_type": stream.field(name).type, "required": name in required},
            }
            for name in input_fields(pipeline)
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
    }


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item)) if isinstance(item, list) else out.append(item)
        return out
    return [data]


def _convert(value: Any, datatype: str, where: str, name: str) -> Any:
    if value is None:
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
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed("wrong_type", name, f"{where} must hold numbers ({datatype}), got {value!r}")
    if not math.isfinite(value):
        raise ValidationFailed("not_finite", name, f"{where} holds a non-finite number")
    return float(value)


def instances_from_inputs(inputs: Any, pipeline: PipelineConfig) -> list[dict[str, Any]]:
    """Check the request's tensors against the signature and turn them into instances (one dict per row)."""
    if not isinstance(inputs, list) or not inputs:
        raise ValidationFailed("missing_inputs", "inputs", "inputs must be a non-empty list of tensors")
    stream = pipeline.stream
    known = set(input_fields(pipeline))
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
        where = f"input {name!r}"
        if name not in known:
            raise ValidationFailed(
                "unknown_input", name, f"{where} is not an input of {pipeline.model.name}; inputs: {sorted(known)}"
            )
        if name in columns:
            raise ValidationFailed("duplicate_input", name, f"{where} is given twice")
        datatype = tensor.get("datatype")
        if datatype not in OIP_DATATYPES:
            raise ValidationFailed(
                "bad_datatype", name, f"{where}: datatype {datatype!r} is not one of {sorted(OIP_DATATYPES)}"
            )
        field_type = stream.field(name).type
        accepted = FIELD_TYPES[field_type].oip_accepted
        if datatype not in accepted:
            raise ValidationFailed(
                "wrong_datatype",
                name,
                f"{where} is a {field_type} field: datatype must be one of {sorted(accepted)}, not {datatype}",
            )
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            raise ValidationFailed("bad_shape", name, f"{where}: shape must be [N] or [N, 1], got {shape!r}")
        if "data" not in tensor:
            raise ValidationFailed("missing_data", name, f"{where} has no data")
        data = _flatten(tensor["data"])
        if len(data) != shape[0]:
            raise ValidationFailed(
                "shape_mismatch", name, f"{where}: shape {shape} needs {shape[0]} values, data has {len(data)}"
            )
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ValidationFailed("batch_mismatch", name, f"{where} has {shape[0]} rows, earlier inputs have {rows}")
        nullable = stream.field(name).nullable
        values = []
        for i, value in enumerate(data):
            if value is None and not nullable:
                raise ValidationFailed("null_value", name, f"{where}[{i}] is null, the field is not nullable")
            values.append(_convert(value, datatype, f"{where}[{i}]", name))
        columns[name] = values
    missing = [n for n in required_fields(pipeline) if n not in columns]
    if missing:
        raise ValidationFailed("missing_input", missing[0], f"inputs lack required tensor(s) {missing}")
    if not rows:
        raise ValidationFailed("empty", "inputs", "the tensors hold no rows")
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def check_outputs(outputs: Any) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ValidationFailed("bad_outputs", "outputs", 'outputs must be a list of {"name": ...}')
    for o in outputs:
        if o.get("name") != OUTPUT_NAME:
            raise ValidationFailed(
                "unknown_output", "outputs", f"unknown output {o.get('name')!r}; the output is {OUTPUT_NAME!r}"
            )


def response(
    model: str, version: int, request_id: str, client_id: str | None, predictions: list[float]
) -> dict[str, Any]:
    return {
        "model_name": model,
        "model_version": str(version),
        "id": client_id if client_id is not None else request_id,
        "parameters": {"request_id": request_id},
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [len(predictions)], "data": predictions}],
    }
