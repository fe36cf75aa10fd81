"""driftloop: continuous training driven by the data stream.

The public surface is small: settings, the pipeline config, events and the exception tree.
Everything else lives in private-by-convention modules that services import explicitly.
"""

import warnings

# confluent_kafka's registry client imports authlib's httpx integration, which warns on import; authlib forces
# its warnings to "always" when imported, so our filter has to be added after that import to take precedence.
try:
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
except ImportError:  # pragma: no cover - authlib comes with the registry client
    pass

from driftloop.errors import (
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
