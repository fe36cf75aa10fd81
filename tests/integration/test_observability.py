"""Real Prometheus against a running stack: every target up, the key series there, every Grafana query valid.

``Stack.up(prometheus=True)`` (what ``driftloop up --prometheus`` does) starts ingestion, registry, serving and
monitor on the real broker plus Debian's Prometheus, with the config made from the project's
``infra/prometheus/prometheus.yml``. A small real cascade gives the series something to show: the test plays the
training side (a small real LightGBM model), the registry promotes it, serving switches to it and answers drifted
traffic, the monitor detects the drift (a cascade's root). Then everything is asked of Prometheus' HTTP API, and
the stack (Prometheus included) is stopped by PID by ``Stack.down``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from model_factory import feature_frame, make_pipeline, put_feature_set
from stack_support import TrainingData, drift_window_pipelines, play_training, post_drifted_traffic

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ExternalTrigger
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, pid_alive, wait_until
from driftloop.ops.stack import PROMETHEUS_TEMPLATE, Component, Stack
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "infra" / "grafana" / "dashboards" / "driftloop.json"
PROCESSES = ("ingestion", "registry", "serving", "monitor")
WINDOW = 40  # predictions per drift window: one request fills it
# Grafana's built-in variables, as Grafana would expand them for a 1-hour view.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced: built-ins by a 1-hour view's values, the dashboard's own by
    their "All" value. An unknown variable is an error (the panel would not render in Grafana either)."""

    def substitute(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        value = GRAFANA_BUILTINS.get(name, variables.get(name))
        assert value is not None, f"{expr!r} uses ${name}, which neither Grafana nor the dashboard defines"
        return value

    return _VARIABLE.sub(substitute, expr)


class Observed:
    def __init__(self, settings: Settings, model: str, prometheus: Component, config_path: Path) -> None:
        self.settings = settings
        self.model = model
        self.prometheus = prometheus
        self.config_path = config_path

    def query(self, promql: str) -> dict[str, Any]:
        """Prometheus' answer to an instant query: ``status`` and ``data`` (or ``error``), any status code."""
        response = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
        return response.json()

    def series(self, promql: str) -> list[dict[str, Any]]:
        answer = self.query(promql)
        assert answer["status"] == "success", f"{promql}: {answer.get('error')}"
        return list(answer["data"]["result"])


@pytest.fixture(scope="module")
def observed(broker, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("observability")
    unique = uuid.uuid4().hex[:8]
    model, stream = f"obs-{unique}", f"obs-{unique}"
    pipelines = drift_window_pipelines(tmp / "pipelines", model, stream, WINDOW)
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=pipelines,
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000, "embedded": False},
        schema_registry={"url": schema_registry_url, "embedded": False},
        services={f"{name}_port": free_port() for name in PROCESSES},
    )
    stack = Stack(settings)
    bus: EventBus | None = None
    try:
        # A short scrape interval so that the test waits seconds, not the template's 10 s, for new samples.
        components = stack.up(
            timeout=150, services=PROCESSES, prometheus=True, prometheus_port=free_port(), scrape_interval="1s"
        )
        prometheus = components[-1]
        assert prometheus.name == "prometheus"
        state = Observed(settings, model, prometheus, tmp / "home" / "prometheus" / "prometheus.yml")

        # A cascade: a first version trained (by the test), promoted by the registry, served.
        pipeline = make_pipeline(model=model, stream=stream)
        store = open_object_store(settings)
        features = feature_frame(pipeline, rows=1500)
        trained = TrainingData(pipeline, store, features, put_feature_set(store, stream, 1, features))
        bus = EventBus(settings, producer_name="test-training")
        root = new_event(ExternalTrigger(model=model, reason="bootstrap", details_json="{}"), producer="t")
        bus.publish(root)
        # The completed run keeps the default trigger of training_completed_data and a request id of its own.
        play_training(
            bus,
            trained,
            root,
            f"run1-{unique}",
            trigger="external",
            reason="test",
            rounds=2,
            request_id=f"req-{unique}",
            completed_trigger="manual",
        )

        def served(service: str, path: str) -> int | None:
            response = httpx.get(settings.services.url(service) + path)
            return response.json()["version"] if response.status_code == 200 else None

        wait_until(lambda: served("serving", f"/v1/models/{model}") == 1, 90, "serving v1")
        wait_until(lambda: served("monitor", f"/v1/monitor/{model}") == 1, 60, "the monitor watching v1")
        # Drifted traffic (amounts 30 times larger, night hours): the monitor's DriftDetected starts a cascade.
        post_drifted_traffic(settings.services.url("serving"), model, WINDOW)
        yield state
    finally:
        if bus is not None:
            bus.close()
        started = stack.components()
        stack.down()
        assert started and not any(pid_alive(c.pid) for c in started), "a component outlived Stack.down"


def test_generated_config_is_the_projects_with_the_stacks_targets(observed: Observed) -> None:
    generated = yaml.safe_load(observed.config_path.read_text())
    template = yaml.safe_load(PROMETHEUS_TEMPLATE.read_text())
    assert [j["job_name"] for j in generated["scrape_configs"]] == [j["job_name"] for j in template["scrape_configs"]]
    assert [j.get("metrics_path") for j in generated["scrape_configs"]] == [
        j.get("metrics_path") for j in template["scrape_configs"]
    ]
    groups = [g for job in generated["scrape_configs"] for g in job["static_configs"]]
    expected = {name: f"127.0.0.1:{observed.settings.services.port(name)}" for name in PROCESSES}
    assert {g["labels"]["service"]: g["targets"] for g in groups} == {k: [v] for k, v in expected.items()}
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is missing: run `make setup`"
    check = subprocess.run([promtool, "check", "config", str(observed.config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_target_is_up(observed: Observed) -> None:
    def all_up() -> bool:
        series = observed.series('up{job="driftloop"}')
        return len(series) == len(PROCESSES) and all(s["value"][1] == "1" for s in series)

    wait_until(all_up, 60, "every service target up in Prometheus")
    assert {s["metric"]["service"] for s in observed.series('up{job="driftloop"}')} == set(PROCESSES)
    targets = httpx.get(f"{observed.prometheus.url}/api/v1/targets").json()["data"]["activeTargets"]
    assert sorted(t["labels"]["service"] for t in targets) == sorted(PROCESSES)
    assert all(t["health"] == "up" and t["lastError"] == "" for t in targets), targets
    # `driftloop status` shows Prometheus like any component.
    status = {row["name"]: row for row in Stack(observed.settings).status()}
    assert set(status) == {*PROCESSES, "prometheus"}
    assert status["prometheus"]["ready"] and status["prometheus"]["pid"] == observed.prometheus.pid


def test_key_series_are_scraped(observed: Observed) -> None:
    model = observed.model
    predict_route = 'service="serving", route="/v1/models/{name}/predict", le="+Inf"'
    expectations = {
        # What the serving replica serves.
        f'driftloop_serving_version{{service="serving", model="{model}"}} == 1': "the served version",
        # Request latency histogram of the predict route.
        f"driftloop_http_request_seconds_bucket{{{predict_route}}} >= 1": "predict latency buckets",
        # Consumer lag of the registry's and the monitor's groups.
        'driftloop_consumer_lag{service="registry", group="driftloop-registry"}': "the registry's consumer lag",
        'driftloop_consumer_lag{service="monitor", group="driftloop-monitor-faust"}': "the monitor's consumer lag",
        # Cascade counts: the monitor's drift starts one, the registry's promotion is a step of one.
        'driftloop_cascades_started_total{service="monitor", event_type="DriftDetected"} >= 1': "drift cascades",
        'driftloop_cascade_steps_total{service="registry", event_type="ModelPromoted"} >= 1': "promotion steps",
        f'driftloop_monitor_drift_statistic{{service="monitor", model="{model}"}}': "drift statistics",
        f'driftloop_registry_gate_decisions_total{{model="{model}", decision="promoted"}} >= 1': "gate decisions",
    }
    for promql, what in expectations.items():
        wait_until(lambda promql=promql: bool(observed.series(promql)), 90, f"{what} in Prometheus ({promql})")


def _dashboard_queries() -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    panels += [inner for p in dashboard["panels"] for inner in p.get("panels", [])]  # collapsed rows
    exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]
    return exprs, dashboard.get("templating", {}).get("list", [])


def test_every_grafana_query_evaluates_in_prometheus(observed: Observed) -> None:
    exprs, variables = _dashboard_queries()
    assert len(exprs) >= 12
    values = {v["name"]: v.get("allValue") or ".*" for v in variables}
    # Wait until the cascade's last series is scraped (twice, for rate and increase), so that data is checked too.
    scraped_twice = 'count_over_time(driftloop_cascades_started_total{service="monitor"}[1m]) >= 2'
    wait_until(lambda: bool(observed.series(scraped_twice)), 90, "two scrapes of the drift cascade")
    failures, with_data = [], set()
    for title, expr in exprs:
        promql = grafana_to_promql(expr, values)
        answer = observed.query(promql)
        if answer["status"] != "success":
            failures.append(f"{title}: {promql}: {answer.get('errorType')}: {answer.get('error')}")
        elif answer["data"]["result"]:
            with_data.add(expr)
    assert not failures, "\n".join(failures)
    # The panels of what the cascade produced show data, not only parse.
    for metric in (
        "driftloop_serving_version",
        "driftloop_consumer_lag",
        "driftloop_cascades_started_total",
        "driftloop_http_request_seconds_bucket",
        "driftloop_monitor_drift_psi",
    ):
        assert any(metric in expr for expr in with_data), f"no panel querying {metric} has data"

    # The dashboard's variables: their queries find the model.
    for variable in variables:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
        assert match, f"variable {variable['name']}: unsupported query {query!r}"
        params = {"match[]": match.group(1)} if match.group(1) else {}
        response = httpx.get(f"{observed.prometheus.url}/api/v1/label/{match.group(2)}/values", params=params)
        assert response.status_code == 200 and observed.model in response.json()["data"], response.text


def test_grafana_variable_substitution() -> None:
    assert grafana_to_promql('rate(x{m=~"$model"}[$__rate_interval])', {"model": ".*"}) == 'rate(x{m=~".*"}[1m])'
    assert grafana_to_promql('x{m=~"${model:regex}"} [[model]]', {"model": "a"}) == 'x{m=~"a"} a'
    with pytest.raises(AssertionError, match="nosuch"):
        grafana_to_promql('x{m="$nosuch"}', {})
