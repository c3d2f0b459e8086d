"""wm_jax.parallel."""
