"""Embedders: the local ONNX MiniLM, an OpenAI-compatible HTTP provider, and a hashing fake for tests."""
