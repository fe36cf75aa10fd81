"""Fixtures that several test files of this folder use, defined with their support code."""

from ingestion_support import ingestion
from monitor_triggers_support import monitor
from serving_support import canary_stack, stack

__all__ = ["canary_stack", "ingestion", "monitor", "stack"]
