"""kt_jax: knowledge transfer from vision foundation models, in JAX/Flax."""

__version__ = "0.1.0"
