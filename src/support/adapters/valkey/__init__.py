"""Valkey adapters (cache, hot session state, event fan-out, queue)."""
