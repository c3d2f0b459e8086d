"""wm_jax.data."""
