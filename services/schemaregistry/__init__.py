"""schemaregistry service."""
