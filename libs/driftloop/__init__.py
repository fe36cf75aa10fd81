"""driftloop: continuous training driven by the data stream.

The public surface is small: settings, the pipeline config, events and the exception tree.
Everything else lives in private-by-convention modules that services import explicitly.
"""

import warnings

# confluent_kafka's registry client imports authlib's httpx integration, which warns on import.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")

from driftloop.errors import (  # noqa: E402
    ConfigError,
    DriftloopError,
    NotFoundError,
    SchemaError,
    StackError,
    ValidationFailed,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DriftloopError",
    "NotFoundError",
    "SchemaError",
    "StackError",
    "ValidationFailed",
    "__version__",
]
