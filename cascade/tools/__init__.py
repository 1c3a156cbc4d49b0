"""Operator tools run from the command line (entry points in pyproject.toml); never imported by the miner."""
