"""Benchmarks: the QF paper protocol, speed, and (later) the editing benchmarks."""
