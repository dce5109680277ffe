"""Use cases: one class per verb and noun, each with an ``execute`` method."""
