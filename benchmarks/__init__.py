"""Runnable benchmarks that print tables and write results under benchmarks/results/."""
