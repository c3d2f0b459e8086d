"""A tiny nnx model with logical axis names and a loss of the loss_fn contract, for tests only."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax import defaults
from wm_jax.models.buffers import Buffer


def _init(names):
  return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)


class Toy(nnx.Module):
  """latents [B,T,V,h,w,C] -> per-token MLP with a mixing attention-free block."""

  def __init__(self, c=4, d=32, hidden=64, *, rngs):
    self.inp = nnx.Linear(c, d, kernel_init=_init((None, "embed")), rngs=rngs)
    self.up = nnx.Linear(d, hidden, kernel_init=_init(("embed", "mlp")), rngs=rngs)
    self.down = nnx.Linear(hidden, d, kernel_init=_init(("mlp", "embed")), rngs=rngs)
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.out = nnx.Linear(d, c, kernel_init=_init(("embed", None)), rngs=rngs)

  def __call__(self, x):
    h = self.inp(x)
    h = h + self.down(jax.nn.gelu(self.up(self.norm(h))))
    return self.out(h)


class _Layer(nnx.Module):
  def __init__(self, d, hidden, *, rngs):
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.up = nnx.Linear(d, hidden, kernel_init=_init(("embed", "mlp")), rngs=rngs)
    self.down = nnx.Linear(hidden, d, kernel_init=_init(("mlp", "embed")), rngs=rngs)
    self.gain = Buffer(jnp.full((d,), 0.5))  # non-trainable state inside the scanned layers

  def __call__(self, h):
    return h + self.gain.get_value() * self.down(jax.nn.gelu(self.up(self.norm(h))))


class ScannedToy(nnx.Module):
  """Toy with 3 stacked layers (each with a Buffer) applied by nnx.scan with nnx.remat inside:
  the CTSDDiT scan_layers / remat_policy pattern, for the train step."""

  def __init__(self, c=4, d=32, hidden=64, layers=3, *, rngs,
               policy=jax.checkpoint_policies.nothing_saveable):
    self.policy = policy
    self.inp = nnx.Linear(c, d, kernel_init=_init((None, "embed")), rngs=rngs)
    make = nnx.vmap(lambda key: _Layer(d, hidden, rngs=nnx.Rngs(key)), in_axes=0, out_axes=0,
                    transform_metadata={nnx.PARTITION_NAME: None})
    self.layers = make(jax.random.split(rngs.params(), layers))
    self.out = nnx.Linear(d, c, kernel_init=_init(("embed", None)), rngs=rngs)

  def __call__(self, x):
    step = nnx.remat(lambda layer, h: layer(h), policy=self.policy)
    h = nnx.scan(lambda h, layer: step(layer, h), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                 transform_metadata={nnx.PARTITION_NAME: None})(self.inp(x), self.layers)
    return self.out(h)


def loss_fn(model, batch, rng, config, train=True):
  x = batch["latents"]
  noise = jax.random.normal(rng, x.shape, x.dtype)
  pred = model(x + 0.1 * noise)
  loss = jnp.mean((pred - x) ** 2)
  return loss, {"mse": loss}


def config(batch_size=8, **train):
  """A whole config (wm_jax.defaults) at the toy's shapes: 1 view x 2 frames of 4x4x4 latents."""
  c = defaults.config()
  c.model.update(num_heads=4, patch_size=1, latent_height=4, latent_width=4, num_frames=2,
                 num_views=1)
  c.mask.enabled = False
  c.train.batch_size = batch_size
  c.train.update(train)
  return c


def batch(seed, batch_size=8, c=4):
  r = np.random.default_rng(seed)
  return {"latents": r.normal(size=(batch_size, 2, 1, 4, 4, c)).astype("float32"),
          "fps": np.full((batch_size,), 10.0, np.float32)}


# --- components for tests/train/toy_main.py, used by the subprocess tests ---------------------

def make_model(config):
  return lambda: Toy(rngs=nnx.Rngs(int(config.train.seed)))


def make_loss(config):
  def loss(model, batch, rng, config, train=True):
    value, metrics = loss_fn(model, batch, rng, config, train)
    metrics["first_index"] = batch["index"][0].astype(jnp.float32)  # shows the data order
    return value, metrics
  return loss


def make_iterator(config):
  """A real Grain iterator (checkpointable) of toy batches with an 'index' per example."""

  def example(i):
    r = np.random.default_rng(i)
    return {"latents": r.normal(size=(2, 1, 4, 4, 4)).astype("float32"), "index": np.int32(i)}

  ds = grain.MapDataset.range(1000).shuffle(seed=int(config.train.seed)).map(example)
  return iter(ds.batch(int(config.train.batch_size)))
