"""wm_jax.diffusion."""
