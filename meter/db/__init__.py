"""Postgres: schema, engine, and the few hand-written statements of the hot path."""
