"""driftloop services: one folder each, the same shape (see services/README.md)."""
