"""One SparkSession per process, created on first use and kept alive (starting one costs seconds)."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from driftloop.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_lock = threading.Lock()
_session: SparkSession | None = None


def get_spark(settings: Settings) -> SparkSession:
    """The process's SparkSession, configured from ``settings.spark`` (UI off, UTC, loopback)."""
    global _session
    with _lock:
        if _session is not None:
            return _session
        # Spark workers must run the venv's python, and traffic stays on loopback on a shared machine.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        _session = (
            SparkSession.builder.appName("driftloop-features")
            .master(settings.spark.master)
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
            .config("spark.driver.memory", settings.spark.driver_memory)
            # Timestamps cross the Python/JVM boundary as UTC, whatever the machine's zone.
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # Parquet timestamps marked UTC-adjusted, so pyarrow/pandas readers get tz-aware UTC times.
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .getOrCreate()
        )
        _session.sparkContext.setLogLevel("WARN")
        return _session


def stop_spark() -> None:
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
