"""wm_jax.kernels."""
