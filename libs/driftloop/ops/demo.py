"""The closed-loop demo: a synthetic card-transaction stream through the real stack.

1. Records flow in through Kafka (stock Avro serializer) and HTTP, some malformed → dead letters.
2. A dataset version is cut (Spark), features materialized, v1 trained (Ray), gated, promoted, served.
3. A manual retrain on the same data gives a challenger that is not better: the gate rejects it, v1 serves on.
4. Live traffic, then the stream drifts (feature distributions AND the label relationship): the monitor
   detects drift, the trigger waits for fresh data, retrains, the gate promotes v2, serving switches.
5. The timeline explains each step; the counts show nothing was lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from rich.console import Console

from driftloop.client import Client, IngestResult, Prediction
from driftloop.clients.credentials import client_token, schema_registry_client_config
from driftloop.clients.db import create_engine_for
from driftloop.clients.db.models import EventRecord
from driftloop.contracts.pipeline import PipelineConfig, load_pipelines
from driftloop.contracts.schemas import SCHEMAS_DIR
from driftloop.contracts.settings import Settings
from driftloop.errors import ConflictError, DriftloopError
from driftloop.ops.stack import Stack
from driftloop.runtime.timeline import lineage, model_timeline

DEMO_PIPELINES = SCHEMAS_DIR.parent / "pipelines"
MODEL = "fraud-detector"
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]


@dataclass(frozen=True)
class DemoScale:
    records_per_phase: int = 3000
    http_records: int = 40
    http_malformed: int = 5
    live_predictions: int = 400
    batch: int = 20
    step_timeout: float = 420.0


@dataclass
class DemoResult:
    v1: int | None = None
    rejected_version: int | None = None
    served_after_rejection: int | None = None
    drift_event_id: str | None = None
    v2: int | None = None
    served_at_end: int | None = None
    v2_lineage: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    produced: int = 0
    seconds_to_v2_serving: float | None = None
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.v1 is not None
            and self.v2 is not None
            and self.served_at_end == self.v2
            and self.drift_event_id is not None
            and "DriftDetected" in self.v2_lineage
        )


def make_records(n: int, drifted: bool, rng: np.random.Generator, start: datetime) -> list[dict[str, Any]]:
    """Synthetic transactions. After the drift the amounts and categories shift AND fraud follows other
    signals (young customers gaming), so the old model's ranking stops working."""
    p_cat = [0.15, 0.1, 0.2, 0.15, 0.4] if drifted else [0.35, 0.15, 0.2, 0.2, 0.1]
    records = []
    for i in range(n):
        amount = float(rng.lognormal(5.0 if drifted else 4.0, 0.8))
        age = int(rng.integers(18, 80))
        hour = int(rng.integers(0, 24))
        category = str(rng.choice(CATEGORIES, p=p_cat))
        if drifted:
            logit = -2.0 + 2.2 * (age < 30) + 1.5 * (category == "gaming") - 1.0 * (amount > 200)
        else:
            logit = (
                -2.0 + 1.8 * (amount > 120) + 1.2 * (category == "electronics") + 1.0 * (hour < 6) - 0.5 * (age > 50)
            )
        label = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        records.append(
            {
                "customer_id": f"c{int(rng.integers(0, 300)):04d}",
                "event_time": start + timedelta(milliseconds=50 * i),
                "amount": round(amount, 2),
                "age": age,
                "merchant_category": category,
                "hour": hour,
                "is_fraud": label,
            }
        )
    return records


class Demo:
    def __init__(self, settings: Settings, console: Console, scale: DemoScale) -> None:
        self.settings = settings
        self.console = console
        self.scale = scale
        self.rng = np.random.default_rng(7)
        self.pipeline: PipelineConfig = load_pipelines(settings.pipelines_dir)[MODEL]
        self.stream = self.pipeline.stream
        # The token is read per request: `driftloop up` may write <home>/admin.token after these clients exist.
        token = partial(client_token, settings)
        self.platform = Client(settings, token=token, timeout=60.0)
        self.engine = create_engine_for(settings.database_url)
        self.clock = datetime.now(tz=UTC) - timedelta(hours=6)
        self.result = DemoResult()

    # --- helpers -------------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        self.console.print(f"[bold cyan]▶[/bold cyan] {message}")

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.scale.step_timeout
        started = time.monotonic()
        with self.console.status(f"waiting for {what}") as status:
            while time.monotonic() < deadline:
                value = check()
                if value:
                    self.console.print(f"  [green]✓[/green] {what} ({time.monotonic() - started:.1f}s)")
                    return value
                status.update(f"waiting for {what} ({time.monotonic() - started:.0f}s)")
                time.sleep(0.5)
        raise DriftloopError(f"demo: timed out waiting for {what}; see the logs in {self.settings.log_dir}")

    def events(self, event_type: str, after: datetime | None = None) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            q = sa.select(EventRecord).where(EventRecord.event_type == event_type, EventRecord.model == MODEL)
            if after is not None:
                q = q.where(EventRecord.occurred_at >= after)
            return list(conn.execute(q.order_by(EventRecord.occurred_at)).all())

    def served_version(self) -> int | None:
        try:
            return self.platform.served(MODEL).version
        except DriftloopError:  # not up yet, or no champion served yet
            return None

    # --- traffic -------------------------------------------------------------------------------------------

    def produce(self, records: list[dict[str, Any]]) -> None:
        """Send records to the stream's topic with the stock confluent_kafka Avro serializer."""
        from confluent_kafka import Producer
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = AvroSerializer(
            SchemaRegistryClient(schema_registry_client_config(self.settings)), json.dumps(self.stream.avro_schema())
        )
        producer = Producer(self.settings.kafka_config(**{"enable.idempotence": True, "linger.ms": 20}))
        ctx = SerializationContext(self.stream.topic, MessageField.VALUE)
        for record in records:
            producer.produce(self.stream.topic, key=record["customer_id"].encode(), value=serializer(record, ctx))
            producer.poll(0)
        producer.flush(60)
        self.result.produced += len(records)

    def produce_malformed(self) -> int:
        """Bytes that are not valid records: each must reach the dead-letter topic with its reason."""
        from confluent_kafka import Producer
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = AvroSerializer(
            SchemaRegistryClient(schema_registry_client_config(self.settings)), json.dumps(self.stream.avro_schema())
        )
        good = make_records(1, False, self.rng, self.clock)[0]
        valid = serializer(good, SerializationContext(self.stream.topic, MessageField.VALUE))
        out_of_range = serializer({**good, "amount": -5.0}, SerializationContext(self.stream.topic, MessageField.VALUE))
        bad = [
            b"this is not avro",  # wrong magic byte
            b"\x00\x00\x0f\x42\x3f" + valid[5:],  # unknown schema id
            valid[: len(valid) // 2],  # truncated body
            out_of_range,  # valid Avro, breaks a quality rule
        ]
        producer = Producer(self.settings.kafka_config())
        for value in bad:
            producer.produce(self.stream.topic, key=b"malformed", value=value)
        producer.flush(30)
        self.result.produced += len(bad)
        return len(bad)

    def post_http(self, records: list[dict[str, Any]]) -> IngestResult:
        body = [{**r, "event_time": r["event_time"].isoformat()} for r in records]
        answer = self.platform.ingest(self.stream.name, body)
        self.result.produced += len(records)
        return answer

    def predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        answers = []
        for i in range(0, len(records), self.scale.batch):
            instances = [
                {k: v for k, v in r.items() if k not in {self.stream.label, self.stream.event_time}}
                for r in records[i : i + self.scale.batch]
            ]
            answers.append(self.platform.predict(MODEL, instances))
        return answers

    def ask_retrain(self) -> bool:
        """Ask for a retrain; False while the triggers still count v1's run as active or awaiting the gate (they
        learn its end from the bus, which may come after serving has switched): a 409 ``run_in_progress`` then,
        asked again."""
        try:
            self.platform.retrain(MODEL, reason="demo: same data")
        except ConflictError as exc:
            if exc.code != "run_in_progress":
                raise
            return False
        return True

    def next_records(self, n: int, drifted: bool) -> list[dict[str, Any]]:
        records = make_records(n, drifted, self.rng, self.clock)
        self.clock = records[-1]["event_time"] + timedelta(seconds=1)
        return records

    # --- the story -----------------------------------------------------------------------------------------

    def run(self) -> DemoResult:
        s = self.scale
        self.say(f"Phase 1 — {s.records_per_phase} transactions through Kafka and {s.http_records} over HTTP")
        http_records = self.next_records(s.http_records, drifted=False)
        for r in http_records[: s.http_malformed]:
            r["amount"] = "lots"  # wrong type → dead letter
        answer = self.post_http(http_records)
        self.console.print(
            f"  HTTP: {answer.accepted} accepted, {len(answer.rejected)} rejected "
            f"({', '.join(sorted({r.reason for r in answer.rejected}))})"
        )
        self.produce(self.next_records(s.records_per_phase, drifted=False))
        malformed = self.produce_malformed()
        self.console.print(f"  Kafka: {s.records_per_phase} records + {malformed} malformed messages produced")

        self.wait_for("dataset version 1 (Spark)", lambda: self.stream_events("DatasetVersionCreated"))
        promoted = self.wait_for("v1 trained on Ray, gated and promoted", lambda: self.events("ModelPromoted"))
        self.result.v1 = promoted[0].payload["version"]
        self.wait_for(f"serving to answer with v{self.result.v1}", lambda: self.served_version() == self.result.v1)

        self.say("Phase 2 — manual retrain on the same data: the gate must keep the champion")
        mark = datetime.now(tz=UTC)
        self.wait_for("the triggers to take a manual retrain", self.ask_retrain)
        rejected = self.wait_for("the gate's decision", lambda: self.events("ModelRejected", after=mark) or None)
        self.result.rejected_version = rejected[0].payload["version"]
        gate = json.loads(rejected[0].payload.get("gate_json") or "{}")
        self.console.print(f"  v{self.result.rejected_version} rejected: {rejected[0].payload['reason']} {gate}")
        self.result.served_after_rejection = self.served_version()
        self.console.print(f"  serving still answers with v{self.result.served_after_rejection}")

        self.say(f"Phase 3 — live traffic from the same distribution ({s.live_predictions} predictions)")
        self.predict(self.next_records(s.live_predictions, drifted=False))

        self.say("Phase 4 — the stream drifts: amounts, categories and what fraud looks like all change")
        drift_mark = datetime.now(tz=UTC)
        t0 = time.monotonic()

        def drift_seen() -> Any:
            found = self.events("DriftDetected", after=drift_mark)
            if not found:
                self.predict(self.next_records(s.batch * 5, drifted=True))
            return found

        drift = self.wait_for("the monitor to detect drift", drift_seen)
        self.result.drift_event_id = drift[0].event_id
        self.console.print(f"  drifted features: {drift[0].payload['drifted_features']}")
        self.produce(self.next_records(s.records_per_phase, drifted=True))
        self.console.print(f"  {s.records_per_phase} post-drift records produced (fresh data for the retrain)")

        def v2_promoted() -> Any:
            return [e for e in self.events("ModelPromoted", after=drift_mark) if e.payload["version"] != self.result.v1]

        promoted = self.wait_for("retrain on fresh data → gate → promotion", v2_promoted)
        self.result.v2 = promoted[0].payload["version"]
        self.wait_for(f"serving to switch to v{self.result.v2}", lambda: self.served_version() == self.result.v2)
        self.result.seconds_to_v2_serving = time.monotonic() - t0
        answers = self.predict(self.next_records(s.batch, drifted=True))
        self.result.served_at_end = answers[-1].version
        self.console.print(
            f"  a prediction now answers with v{self.result.served_at_end}: {answers[-1].predictions[:3]}"
        )
        self.result.v2_lineage = [step.event_type for step in lineage(self.engine, promoted[0].event_id)]
        return self.result

    def stream_events(self, event_type: str) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            q = sa.select(EventRecord).where(
                EventRecord.event_type == event_type, EventRecord.stream == self.stream.name
            )
            return list(conn.execute(q).all())

    def close(self) -> None:
        self.platform.close()
        self.engine.dispose()

    def report(self) -> None:
        from driftloop.ops.render import print_timeline

        self.say("Timeline — why each step happened")
        print_timeline(MODEL, model_timeline(self.engine, MODEL), out=self.console)
        try:
            stats = self.platform.stream_stats(self.stream.name)
        except (DriftloopError, ValueError):
            stats = {}
        self.result.stats = stats
        self.say("Counts")
        self.console.print(f"  records sent (Kafka + HTTP, malformed included): {self.result.produced}")
        self.console.print(json.dumps(stats, indent=2))


def run_demo(
    settings: Settings,
    console: Console | None = None,
    keep_running: bool = False,
    scale: DemoScale | None = None,
    fresh_home: bool = True,
) -> DemoResult:
    console = console or Console()
    started = time.monotonic()
    if fresh_home:
        # The demo keeps its own state apart from a user's stack, and starts from nothing each time.
        home = settings.home.resolve() / "demo"
        if (home / "stack.json").exists():
            Stack(settings.model_copy(update={"home": home})).down()
        import shutil

        shutil.rmtree(home, ignore_errors=True)
        settings = settings.model_copy(update={"home": home})
    if not Path(settings.pipelines_dir).is_dir() or MODEL not in load_pipelines(settings.pipelines_dir):
        settings = settings.model_copy(update={"pipelines_dir": DEMO_PIPELINES})
    stack = Stack(settings, on_progress=lambda m: console.print(f"  {m}"))
    console.rule("driftloop demo")
    console.print(f"state: {settings.home}   logs: {settings.log_dir}")
    stack.up()
    demo = Demo(settings, console, scale or DemoScale())
    try:
        demo.run()
        demo.report()
    except DriftloopError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
    finally:
        demo.close()
        demo.result.wall_seconds = time.monotonic() - started
        if keep_running:
            console.print(
                "the stack keeps running: `driftloop down` stops it (DRIFTLOOP_HOME=" + str(settings.home) + ")"
            )
        else:
            console.rule("stopping")
            stack.down()
    r = demo.result
    verdict = "[green]closed loop complete[/green]" if r.ok else "[red]closed loop NOT complete[/red]"
    console.print(
        f"{verdict}: v{r.v1} served → v{r.rejected_version} rejected → drift {str(r.drift_event_id)[:8]} → "
        f"v{r.v2} served; drift to new champion serving {r.seconds_to_v2_serving or float('nan'):.1f}s; "
        f"demo wall time {r.wall_seconds:.1f}s"
    )
    return r
