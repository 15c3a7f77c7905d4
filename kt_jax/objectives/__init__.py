"""Objectives: what a training stage optimises. Each is a pure loss of arrays plus the
models it trains and the frozen models it reads; the trainer knows nothing method-specific."""
