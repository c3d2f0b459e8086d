"""wm_jax.data.synthetic."""
