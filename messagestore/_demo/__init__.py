"""Simulated agents (and users) shared by the demo, the benchmarks and the tests."""
