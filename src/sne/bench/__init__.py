"""Benchmarks: the paper's experiments as runnable definitions that write results/*.json."""
