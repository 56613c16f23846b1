"""Benchmarks for lightning_film (commands, not tests): ``python -m benchmarks.overhead``."""
