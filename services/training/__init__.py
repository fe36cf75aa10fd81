"""training service."""
