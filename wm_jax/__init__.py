"""wm_jax: JAX/Flax NNX framework for driving world models (MaskGWM and family)."""

from flax import nnx as _nnx

# Parameters carry logical axis names as metadata (nnx.with_partitioning); wm_jax.parallel maps
# them to mesh axes when it places the state. Eager sharding at creation would need a mesh in
# scope for every model built, so it is off for the whole package.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
