"""Sample knowledge loaded by `make run`: a fictional company's help center."""
