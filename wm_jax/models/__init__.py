"""wm_jax.models."""
