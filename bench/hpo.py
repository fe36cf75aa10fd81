"""Hyperparameter search: Optuna TPE + ASHA against random search (no early stopping) at the same trial budget.

Two data sets, both generated here: the demo's card transactions (``driftloop.ops.demo.make_records``) and a churn-style
table with interactions and two categoricals. For each data set and strategy: the search on a local Ray (2 CPUs,
trials of 1 CPU, 2 at a time) over num_leaves, learning_rate and min_child_samples of LightGBM, then the best
configuration refit on the training split and scored on the holdout the search never saw. Printed: best validation
score, holdout score, trials stopped early, wall time of the search. Ray is stopped at the end (it is this
process's local instance, nothing else is started).

    .venv/bin/python bench/hpo.py                  # about 6-8 minutes on 2 cores
    .venv/bin/python bench/hpo.py --trials 6 --rows 3000
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from _common import add_keep_option, bench_folder, tidy

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.contracts.settings import ObjectStoreSettings, Settings
from driftloop.ops.demo import make_records
from driftloop.services.training.fit import FitJob, fit_feature_set
from driftloop.services.training.hpo import search_on_ray
from driftloop.services.training.raycluster import shutdown_ray

REPO = Path(__file__).resolve().parents[1]

SEARCH = """  search:
    trials: {trials}
    concurrency: 2
    searcher: {searcher}
    early_stopping: {early_stopping}
    grace_rounds: 20
    report_every: 10
    space:
      num_leaves: {{type: int, low: 4, high: 128, log: true}}
      learning_rate: {{type: float, low: 0.005, high: 0.3, log: true}}
      min_child_samples: {{type: choice, values: [5, 10, 20, 40, 80]}}
"""

CHURN_PIPELINE = """
stream:
  name: churn
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp, nullable: false}
    - {name: tenure_months, type: int}
    - {name: monthly_charges, type: double}
    - {name: support_calls, type: int}
    - {name: plan, type: string}
    - {name: region, type: string}
    - {name: churned, type: int}
  entity_key: customer_id
  event_time: event_time
  label: churned
features:
  - {name: tenure_months}
  - {name: monthly_charges}
  - {name: support_calls}
  - {name: plan, kind: categorical}
  - {name: region, kind: categorical}
model:
  name: churn-model
  family: lightgbm
  task: classification
  params: {n_estimators: 200}
  seed: 7
gate: {metric: roc_auc, direction: maximize}
"""


def demo_pipeline(search: str) -> PipelineConfig:
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    start = text.index("  params:")
    text = text[:start] + "  params: {n_estimators: 200}" + text[text.index("\n", start) :]
    return parse_pipeline(text.replace("  seed: 42\n", "  seed: 42\n" + search))


def churn_pipeline(search: str) -> PipelineConfig:
    return parse_pipeline(CHURN_PIPELINE.replace("  seed: 7\n", "  seed: 7\n" + search))


def demo_rows(rows: int) -> pd.DataFrame:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pd.DataFrame(make_records(rows, drifted=False, rng=np.random.default_rng(1), start=start))


def churn_rows(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    tenure = rng.integers(0, 72, rows)
    charges = rng.normal(70, 25, rows).clip(15, 150)
    calls = rng.poisson(1.5, rows)
    plan = rng.choice(["monthly", "annual", "two_year"], rows, p=[0.55, 0.3, 0.15])
    region = rng.choice(["north", "south", "east", "west"], rows)
    logit = (
        -1.0
        + 1.6 * (plan == "monthly") * (tenure < 12)
        + 0.5 * np.maximum(calls - 2, 0)
        + 0.02 * (charges - 70) * (region == "south")
        - 0.03 * tenure
        + 0.8 * np.sin(charges / 10)
    )
    return pd.DataFrame(
        {
            "customer_id": [f"k{i % 900}" for i in range(rows)],
            "event_time": [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(rows)],
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls,
            "plan": plan,
            "region": region,
            "churned": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def warm_up(settings: Settings, store: LocalObjectStore, home: Path, make_pipeline: Any, prefix: str) -> None:
    """A 2-trial search first: Ray's workers start and import LightGBM once, outside the measured searches."""
    pipeline = make_pipeline(SEARCH.format(trials=2, searcher="random", early_stopping="none"))
    job = FitJob(
        "bench-warm-up",
        pipeline,
        ObjectStoreSettings(type="local", path=home / "objects"),
        prefix,
        store.uri(prefix),
        f"{pipeline.stream.name}@v1",
    )
    search_on_ray(settings, job, home / "no-abort", lambda _message: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rows", type=int, default=6000)
    add_keep_option(parser)
    args = parser.parse_args()
    home = bench_folder("driftloop-bench-hpo-", keep=args.keep)
    settings = Settings(home=home, ray={"num_cpus": 2})
    store = LocalObjectStore(home / "objects")
    strategies = [("optuna_tpe", "asha"), ("random", "none")]
    datasets = [("demo transactions", demo_pipeline, demo_rows), ("churn (generated)", churn_pipeline, churn_rows)]
    results = []
    try:
        for index, (dataset, make_pipeline, make_rows) in enumerate(datasets):
            base = make_pipeline("")
            raw = make_rows(args.rows)
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pandas(compute_features(raw, base), preserve_index=False), sink)
            prefix = layout.feature_set_prefix(base.stream.name, 1)
            store.put_bytes(f"{prefix}part-0.parquet", sink.getvalue().to_pybytes())
            if index == 0:
                warm_up(settings, store, home, make_pipeline, prefix)
            for searcher, early_stopping in strategies:
                search = SEARCH.format(trials=args.trials, searcher=searcher, early_stopping=early_stopping)
                pipeline = make_pipeline(search)
                job = FitJob(
                    run_id=f"bench-{searcher}",
                    pipeline=pipeline,
                    object_store=ObjectStoreSettings(type="local", path=home / "objects"),
                    feature_set_prefix=prefix,
                    feature_set_uri=store.uri(prefix),
                    dataset_version_id=f"{pipeline.stream.name}@v1",
                )
                started = time.perf_counter()
                found = search_on_ray(settings, job, home / "no-abort", lambda _message: None)
                seconds = time.perf_counter() - started
                refit = fit_feature_set(replace(job, params_override=found.best_params))
                results.append(
                    (
                        dataset,
                        f"{searcher}+{early_stopping}",
                        found.best_score,
                        refit.metrics["roc_auc"],
                        found.summary["early_stopped"],
                        len(found.trials),
                        sum(t["rounds"] for t in found.trials),
                        seconds,
                    )
                )
                print(f"  done: {dataset} {searcher}+{early_stopping} in {seconds:.1f}s", flush=True)
    finally:
        shutdown_ray()
    print(f"\nLightGBM, {args.rows} rows per data set, {args.trials} trials, 2 at a time, 1 CPU each (2 cores)")
    header = ("data set", "strategy", "best valid AUC", "holdout AUC", "early-stopped", "rounds", "wall s")
    print(
        f"{header[0]:<20} {header[1]:<16} {header[2]:>14} {header[3]:>12} {header[4]:>14} {header[5]:>7} {header[6]:>7}"
    )
    for dataset, strategy, valid, holdout, stopped, trials, rounds, seconds in results:
        counts = f"{stopped}/{trials}"
        print(f"{dataset:<20} {strategy:<16} {valid:>14.4f} {holdout:>12.4f} {counts:>14} {rounds:>7} {seconds:>7.1f}")
    print("rounds: boosting rounds trained over all trials (the compute ASHA saves); wall s includes actor starts")


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
