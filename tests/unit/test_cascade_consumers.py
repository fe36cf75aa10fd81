"""The consumers on the training cascade's path are prompt (the broker answers their fetches sooner); the others
are not: the spec each service builds says so."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
PROMPT = {"features", "triggers", "training", "registry", "serving"}


def consumer_specs(service: str) -> list[ast.Call]:
    tree = ast.parse((SERVICES / service / "service.py").read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ConsumerSpec"
    ]


def is_prompt(call: ast.Call) -> bool:
    return any(k.arg == "prompt" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_the_cascade_s_consumers_are_prompt_and_no_other() -> None:
    with_consumers = {p.parent.name for p in SERVICES.glob("*/service.py") if consumer_specs(p.parent.name)}
    assert with_consumers >= PROMPT
    for service in with_consumers:
        assert all(is_prompt(c) == (service in PROMPT) for c in consumer_specs(service)), service
