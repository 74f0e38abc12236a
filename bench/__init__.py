"""Benchmarks that print figures (speed targets live here, never in timed tests).

``python -m bench`` runs the write-path benchmark (``bench.write_path``): simulated streams
against write-through, per-message and group-commit strategies, with each cell's CPU per delta
(``bench.cpu``); ``python -m bench.profile_cell`` profiles one cell's window with py-spy.
``python -m bench.bench_pubsub`` times the broker's ``publish``.
"""
