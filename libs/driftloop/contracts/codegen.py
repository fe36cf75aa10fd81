"""Generate ``payloads.py`` from the Avro event schemas: one frozen dataclass per event type.

The schemas in ``schemas/events`` are the contract; the payload classes are derived from them, never edited by
hand. After changing a schema run ``python -m driftloop.contracts.codegen`` (``--check`` only compares);
``tests/unit/test_payloads.py`` fails while the checked-in module differs from a fresh generation.

Type mapping: string -> ``str``, int/long -> ``int``, float/double -> ``float``, boolean -> ``bool``, bytes ->
``bytes``, timestamp-millis -> ``datetime``, a union with null -> ``X | None``, map -> ``dict[str, X]``,
array -> ``list[X]``, a nested record -> a nested dataclass named after the record. Avro defaults become the
fields' defaults (keyword-only fields, so a default may precede a required field as in the schema).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.contracts.schemas import ENVELOPE, EVENTS_DIR, event_types
from driftloop.contracts.topics import EVENT_TOPICS

PAYLOADS_PATH = Path(__file__).resolve().with_name("payloads.py")
LINE_LENGTH = 120

_PRIMITIVES = {
    "string": "str",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "boolean": "bool",
    "bytes": "bytes",
    "null": "None",
}

_HEADER = '''\
"""Typed event payloads: the fields of each event type, as in its Avro schema (the envelope apart).

GENERATED from schemas/events/*.avsc by ``python -m driftloop.contracts.codegen``: do not edit by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from driftloop.contracts import topics
from driftloop.contracts.topics import Topic


def _timestamp(value: Any) -> datetime:
    """An Avro timestamp-millis as a datetime: fastavro already gives one; a record built by hand may hold millis,
    one read back from the event log (JSON) an ISO-8601 string."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _optional(decode: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else decode(value)


class Payload:
    """The fields of one event type. Each subclass knows its ``event_type`` and ``topic``."""

    __slots__ = ()
    event_type: ClassVar[str]
    topic: ClassVar[Topic]

    def to_avro(self) -> dict[str, Any]:
        """The fields as an Avro record (without the envelope)."""
        raise NotImplementedError

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        """The payload of a decoded Avro record (the envelope, if present, is ignored)."""
        raise NotImplementedError
'''


VALUE = "$"  # where a conversion expression puts the converted value


@dataclass(frozen=True)
class PyType:
    """How one Avro type looks in Python: its annotation and the expressions converting a value to/from Avro."""

    annotation: str
    encode: str = VALUE  # the Python value -> its Avro value; VALUE alone: it is Avro as it is
    decode: str = VALUE  # the Avro value -> its Python value
    decoder: str | None = None  # the callable ``decode`` applies, if it is one call (nullable unions use it)

    @property
    def plain(self) -> bool:
        return self.encode == VALUE and self.decode == VALUE


def _apply(template: str, value: str) -> str:
    return template.replace(VALUE, value)


@dataclass
class Record:
    name: str
    doc: str | None
    fields: list[tuple[str, PyType, Any, str | None]]  # name, type, Avro default (or _REQUIRED), doc
    event_type: str | None = None


_REQUIRED = object()


class Generator:
    def __init__(self) -> None:
        self.records: dict[str, Record] = {}  # in order of definition: nested records before their users

    def record(self, schema: dict[str, Any], event_type: str | None = None) -> Record:
        name = schema["name"]
        if name in self.records:
            raise ValueError(f"record {name!r} is defined twice: reuse it by name")
        fields = []
        for f in schema["fields"]:
            if f["type"] == ENVELOPE:
                continue
            fields.append((f["name"], self.type_of(f["type"]), f.get("default", _REQUIRED), f.get("doc")))
        record = Record(name=name, doc=schema.get("doc"), fields=fields, event_type=event_type)
        self.records[name] = record
        return record

    def type_of(self, avro: Any) -> PyType:
        if isinstance(avro, str):
            if avro in _PRIMITIVES:
                return PyType(_PRIMITIVES[avro])
            name = avro.rpartition(".")[2]
            if name in self.records:
                return self._record_type(name)
            raise ValueError(f"unsupported Avro type reference {avro!r}")
        if isinstance(avro, list):
            return self._union(avro)
        kind = avro["type"]
        if avro.get("logicalType") == "timestamp-millis" and kind == "long":
            return PyType("datetime", decode=f"_timestamp({VALUE})", decoder="_timestamp")
        if kind == "record":
            self.record(avro)
            return self._record_type(avro["name"])
        if kind == "array":
            item = self.type_of(avro["items"])
            if item.plain:
                return PyType(f"list[{item.annotation}]")
            return PyType(
                f"list[{item.annotation}]",
                encode=f"[{_apply(item.encode, 'v')} for v in {VALUE}]",
                decode=f"[{_apply(item.decode, 'v')} for v in {VALUE}]",
            )
        if kind == "map":
            value = self.type_of(avro["values"])
            if value.plain:
                return PyType(f"dict[str, {value.annotation}]")
            return PyType(
                f"dict[str, {value.annotation}]",
                encode=f"{{k: {_apply(value.encode, 'v')} for k, v in {VALUE}.items()}}",
                decode=f"{{k: {_apply(value.decode, 'v')} for k, v in {VALUE}.items()}}",
            )
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return PyType(_PRIMITIVES[kind])
        raise ValueError(f"unsupported Avro type {avro!r}")

    def _record_type(self, name: str) -> PyType:
        return PyType(
            name, encode=f"{VALUE}.to_avro()", decode=f"{name}.from_avro({VALUE})", decoder=f"{name}.from_avro"
        )

    def _union(self, branches: list[Any]) -> PyType:
        nullable = "null" in branches
        others = [self.type_of(b) for b in branches if b != "null"]
        annotation = " | ".join([t.annotation for t in others] + (["None"] if nullable else []))
        if all(t.plain for t in others):
            return PyType(annotation)
        if len(others) != 1:
            raise ValueError(f"unsupported union {branches!r}: only null plus one converted type")
        inner = others[0]
        if not nullable:
            return PyType(annotation, encode=inner.encode, decode=inner.decode)
        # The value's expression appears once in a decode (it may be long): ``_optional(decoder, value)``.
        decode = (
            f"_optional({inner.decoder}, {VALUE})" if inner.decoder else f"None if {VALUE} is None else {inner.decode}"
        )
        encode = VALUE if inner.encode == VALUE else f"None if {VALUE} is None else {inner.encode}"
        return PyType(annotation, encode=encode, decode=decode)


def _default_literal(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value) if isinstance(value, str) else repr(value)
    raise ValueError(f"unsupported Avro default {value!r}: only null and primitives")


def _docstring(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    words = " ".join(text.split())
    one_line = f'{indent}"""{words}"""'
    if len(one_line) <= LINE_LENGTH:
        return [one_line, ""]
    lines = textwrap.wrap(words, LINE_LENGTH - len(indent) - 3)
    return [f'{indent}"""{lines[0]}', *(f"{indent}{line}" for line in lines[1:]), f'{indent}"""', ""]


def _call(head: str, arguments: list[str], tail: str, indent: str) -> list[str]:
    """``head(arg, arg)tail`` on one line if it fits, else one argument per line (as ruff formats it)."""
    one_line = f"{indent}{head}{', '.join(arguments)}{tail}"
    if len(one_line) <= LINE_LENGTH:
        return [one_line]
    return [f"{indent}{head}", *(f"{indent}    {a}," for a in arguments), f"{indent}{tail}"]


def _render_record(record: Record, topic_constants: dict[str, str]) -> list[str]:
    base = "(Payload)" if record.event_type else ""
    lines = ["@dataclass(frozen=True, slots=True, kw_only=True)", f"class {record.name}{base}:"]
    lines += _docstring(record.doc, "    ")
    if record.event_type:
        lines += [
            f'    event_type: ClassVar[str] = "{record.event_type}"',
            f"    topic: ClassVar[Topic] = topics.{topic_constants[record.event_type]}",
            "",
        ]
    for name, py, default, doc in record.fields:
        if doc:
            lines += [f"    #: {line}" for line in textwrap.wrap(" ".join(doc.split()), LINE_LENGTH - 7)]
        suffix = "" if default is _REQUIRED else f" = {_default_literal(default)}"
        lines.append(f"    {name}: {py.annotation}{suffix}")
    encoded = [f'"{name}": {_apply(py.encode, f"self.{name}")}' for name, py, _, _ in record.fields]
    lines += ["", "    def to_avro(self) -> dict[str, Any]:"]
    lines += _call("return {", encoded, "}", "        ")
    decoded = []
    for name, py, default, _ in record.fields:
        if default is _REQUIRED:
            value = f'record["{name}"]'
        elif default is None:
            value = f'record.get("{name}")'
        else:
            value = f'record.get("{name}", {_default_literal(default)})'
        decoded.append(f"{name}={_apply(py.decode, value)}")
    lines += ["", "    @classmethod", "    def from_avro(cls, record: Mapping[str, Any]) -> Self:"]
    lines += _call("return cls(", decoded, ")", "        ")
    return lines


def _topic_constants() -> dict[str, str]:
    import driftloop.contracts.topics as topics_module

    by_topic = {id(value): name for name, value in vars(topics_module).items() if name.isupper()}
    return {topic.event_type: by_topic[id(topic)] for topic in EVENT_TOPICS}


def render() -> str:
    """The source of ``payloads.py`` for the schemas as they are now."""
    generator = Generator()
    event_records = []
    for event_type in event_types():
        schema = json.loads((EVENTS_DIR / f"{event_type}.avsc").read_text())
        if schema["name"] != event_type:
            raise ValueError(f"{event_type}.avsc defines record {schema['name']!r}: the file is named after it")
        event_records.append(generator.record(schema, event_type=event_type))
    constants = _topic_constants()
    lines = [_HEADER.rstrip("\n")]
    for record in generator.records.values():
        lines += ["", "", *_render_record(record, constants)]
    lines += ["", "", "PAYLOAD_TYPES: dict[str, type[Payload]] = {"]
    lines += [f"    {r.event_type!r}: {r.name},".replace("'", '"') for r in event_records]
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.contracts.codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 if payloads.py is out of date")
    args = parser.parse_args(argv)
    source = render()
    current = PAYLOADS_PATH.read_text() if PAYLOADS_PATH.is_file() else ""
    if args.check:
        if current != source:
            print(f"{PAYLOADS_PATH} is out of date: run python -m driftloop.contracts.codegen", file=sys.stderr)
            return 1
        return 0
    if current != source:
        PAYLOADS_PATH.write_text(source)
        print(f"wrote {PAYLOADS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
