"""wm_jax: JAX/Flax NNX framework for driving world models (MaskGWM and family)."""

__version__ = "0.1.0"
