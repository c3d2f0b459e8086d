"""wm_jax.convert."""
