"""Embedded PostgreSQL and Valkey for development, tests and CI, started when no server URL is configured."""
