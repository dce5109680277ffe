"""Claude, through the official ``anthropic`` SDK, as the assistant's language model."""

from support.adapters.anthropic.claude import AnthropicLLM

__all__ = ["AnthropicLLM"]
