"""Benchmarks that print figures (speed, memory, accuracy against a baseline in the same run). Not part of
the installed `sonosam` package: run them from the repository root, e.g. `python -m bench.models predictor`.
Figures go to docs/*.md."""
