"""Entities and rules of customer support; standard library only."""
