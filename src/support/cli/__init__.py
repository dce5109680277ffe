"""The ``support`` command."""

from support.cli.main import main

__all__ = ("main",)
