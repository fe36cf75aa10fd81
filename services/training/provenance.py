"""What a run records about where it ran: code version, environment, resources."""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
import sys
from pathlib import Path

import driftloop

KEY_PACKAGES = (
    "driftloop",
    "lightgbm",
    "xgboost-cpu",
    "scikit-learn",
    "ray",
    "optuna",
    "pandas",
    "numpy",
    "pyarrow",
    "scipy",
    "matplotlib",
)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_version() -> str:
    """``<git sha>`` (``-dirty`` if tracked files changed) in a git checkout, else ``driftloop <version>``."""
    checkout = Path(driftloop.__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"driftloop {_package_version('driftloop') or 'unknown'}"
    return f"{head}-dirty" if changes else head


def environment() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in KEY_PACKAGES},
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
