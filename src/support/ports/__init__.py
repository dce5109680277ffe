"""Ports: one Protocol per role the application needs from the outside world."""
