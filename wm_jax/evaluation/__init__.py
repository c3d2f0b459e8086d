"""wm_jax.evaluation."""
