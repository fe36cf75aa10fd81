"""triggers service."""
