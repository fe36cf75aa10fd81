"""serving service."""
