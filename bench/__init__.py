"""Benchmarks that print figures (speed targets live here, never in timed tests).

``python -m bench`` runs the write-path benchmark (``bench.write_path``): simulated streams
against write-through, per-message and group-commit strategies. ``python -m bench.bench_pubsub``
times the broker's ``publish``.
"""
