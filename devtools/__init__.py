"""Developer tooling: the embedded PostgreSQL used by make run, the tests and the benchmarks."""
