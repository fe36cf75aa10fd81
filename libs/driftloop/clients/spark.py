"""One SparkSession per process, created on first use and kept alive (starting one costs seconds).

Configured from ``settings.spark``: the master URL (``local[*]`` here, a cluster's URL to scale out), UI off,
UTC session time zone, Arrow transfers, loopback for a local master.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from driftloop.contracts.fieldtypes import FIELD_TYPES, FieldType
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import DOORBELL_RECORDS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType

log = logging.getLogger(__name__)

_lock = threading.Lock()
_session: SparkSession | None = None


def spark_session(
    settings: Settings,
    app_name: str,
    parquet_timestamp: Literal["TIMESTAMP_MILLIS", "TIMESTAMP_MICROS"] = "TIMESTAMP_MICROS",
) -> SparkSession:
    """The process's SparkSession. The first caller's ``app_name`` and ``parquet_timestamp`` win."""
    global _session
    with _lock:
        if _session is not None:
            return _session
        # Spark workers must run this interpreter, and a local master's traffic stays on loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        _session = (
            SparkSession.builder.appName(app_name)
            .master(settings.spark.master)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
            # A cut reads every file landed since the last one, often hundreds of small ones by name. Above 32 paths
            # Spark lists them in a Spark job of its own (meant for thousands of directories on HDFS): 1 s of a 4,000
            # row cut from 150 files, against 0.02 s listing them here.
            .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
            # Timestamps cross the Python/JVM boundary as UTC, whatever the machine's zone.
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # Parquet timestamps marked UTC-adjusted (not INT96), so pyarrow/pandas readers get tz-aware UTC.
            .config("spark.sql.parquet.outputTimestampType", parquet_timestamp)
            .getOrCreate()
        )
        _session.sparkContext.setLogLevel("WARN")
        return _session


def warm_spark_loop(
    settings: Settings,
    app_name: str,
    parquet_timestamp: Literal["TIMESTAMP_MILLIS", "TIMESTAMP_MICROS"] = "TIMESTAMP_MICROS",
    exercise: Callable[[SparkSession, Path], None] | None = None,
) -> Callable[[threading.Event], None]:
    """A service loop that runs once at start: the process's SparkSession and its Python worker started, and a few
    rows put through what a cut or a materialization does (pandas in through Arrow, ``mapInPandas``, Parquet out
    and back), so that the first real job does not wait for a JVM to start and warm up. Then ``exercise(spark,
    folder)`` (a scratch folder, deleted after) puts a few made-up rows through the service's own jobs: a job's
    first run compiles its plans and JIT-compiles the JVM code they take, seconds that the first real cut or
    materialization would otherwise pay. A failure is logged: the first job then starts Spark itself."""

    def warm_spark(stop_event: threading.Event) -> None:
        started = time.monotonic()
        try:
            spark = spark_session(settings, app_name, parquet_timestamp=parquet_timestamp)
            if stop_event.is_set():
                return
            import pandas as pd

            with tempfile.TemporaryDirectory(prefix="driftloop-warm-") as folder:
                frame = spark.createDataFrame(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
                frame.mapInPandas(lambda batches: batches, schema="x double").write.parquet(folder + "/w")
                spark.read.parquet(folder + "/w").toPandas()
                session_seconds = time.monotonic() - started
                if exercise is not None and not stop_event.is_set():
                    exercise(spark, Path(folder))
        except Exception:
            log.exception("%s: warming Spark up failed", app_name)
            return
        log.info(
            "%s: Spark warm in %.1fs (session and worker %.1fs, the service's own jobs %.1fs)",
            app_name,
            time.monotonic() - started,
            session_seconds,
            time.monotonic() - started - session_seconds,
        )

    return warm_spark


def start_python_workers() -> None:
    """Start the Python workers of the process's Spark session again, in a thread of their own, when work comes after
    a quiet spell (records arrived): Spark stops its Python workers after a minute without work (a constant in
    Spark, not a setting), and the next job's fresh workers cost it 0.5-2.5 s on two busy cores. A job of two rows
    per core forks them while the records land, before the cut and its materialization need them. No session yet:
    nothing to do (the first job starts Spark)."""
    session = _session
    if session is None:
        return

    def fork_workers() -> None:
        try:
            cores = max(1, session.sparkContext.defaultParallelism)
            rows = session.range(0, 2 * cores, numPartitions=cores)
            rows.mapInPandas(lambda batches: batches, schema="id long").collect()
        except Exception:  # only time is lost: the next job starts them
            log.warning("starting Spark's Python workers again failed", exc_info=True)

    threading.Thread(target=fork_workers, name="spark-python-workers", daemon=True).start()


def start_python_workers_on_records(why: str) -> None:
    """An ``EventBus.on_doorbell`` listener: records arrived after a quiet spell (``DOORBELL_RECORDS``), so a cut or
    a materialization follows; ``start_python_workers`` now."""
    if why == DOORBELL_RECORDS:
        start_python_workers()


def stop_spark() -> None:
    global _session
    with _lock:
        if _session is not None:
            try:
                _session.stop()
            except Exception:
                # On SIGTERM to our process group the JVM may be gone already: nothing left to stop.
                log.info("Spark was already stopped")
            _session = None


@cache
def spark_type(field_type: FieldType) -> DataType:
    """The Spark type of a stream field type: Spark parses the Spark SQL name of ``FIELD_TYPES`` (so it needs the
    process's SparkSession, as every Spark job does)."""
    from pyspark.sql.types import DataType

    return DataType.fromDDL(FIELD_TYPES[field_type].spark)
