"""Benchmarks behind `streamrank bench`; each measures a ratio against a bound in one run."""
