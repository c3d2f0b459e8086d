"""wm_jax.train."""
