"""Fixtures that several test files of this folder use, defined with their support code."""

from triggers_support import clock, decisions, make, published, registry, session_maker

__all__ = ["clock", "decisions", "make", "published", "registry", "session_maker"]
