"""Fixtures that several test files of this folder use, defined with their support code."""

from rollout_support import models

__all__ = ["models"]
