"""In-memory fakes of the ports, for fast unit tests; each passes its port's contract suite."""
