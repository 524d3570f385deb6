"""Measuring on other machines: what travels to and from a pool worker (protocol), and the worker's side of a
job (measurement)."""
