"""Fixtures that several test files of this folder use, defined with their support code."""

from registry_support import env, models

__all__ = ["env", "models"]
