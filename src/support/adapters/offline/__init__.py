"""The offline responder: answers by quoting retrieved passages, for deployments without an LLM provider."""
