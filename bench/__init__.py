"""Load benchmarks of the Rentals API against the pools a Flask team would pick instead (make bench)."""
