"""Clients of the infrastructure: the database (models per owning service, Alembic migrations), the object store,
the process's Spark session, the credentials a client sends, the one HTTP client for driftloop's services and the
one retry helper (backoff with jitter).

Import what you need from the submodule (``from driftloop.clients.objectstore import open_object_store``).
"""

__all__ = ["credentials", "db", "http", "objectstore", "retry", "spark"]
