"""A run built from its config: the one place that turns a config into a mesh, a model, the VAE,
data iterators, shardings, the train step and restored weights.

    run = build(config)                       # mesh, abstract TrainState + shardings, train step
    state = run.init_state()                  # a fresh TrainState, placed by run.shardings
    it = run.iterator("val", batch_size=2)    # this process's share of the split's batches
    model = run.model(state)                  # the nnx module (its arrays keep their shardings)
    run, model, info = restore(workdir)       # the newest checkpoint's config and weights,
                                              # sharded over the mesh as the rules say
    vae = load_vae(config)                    # config.vae.checkpoint (Orbax or diffusers)

Nothing is allocated by `build`: the benchmarks and ahead-of-time compilation lower `run.step_fn`
on `run.abstract_inputs()`. Train (train/loop.py), the sample videos (train/preview.py), the
demo, evaluate and the tools all start here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from wm_jax import defaults
from wm_jax.convert import vae_weights
from wm_jax.data import pipeline
from wm_jax.diffusion import losses
from wm_jax.models import ctsd_dit
from wm_jax.models import vae as vae_lib
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.parallel import shard
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import example_batch
from wm_jax.train import optim
from wm_jax.train import state as state_lib
from wm_jax.train import step as step_lib

PARAMS_CHOICES = ("auto", "ema", "params")


def model_factory(config) -> Callable[[], nnx.Module]:
  """The model of `config`: CTSDDiT(config.model, config.mask), seeded by config.train.seed."""
  seed = int(config.train.seed)
  return lambda: ctsd_dit.CTSDDiT(config.model, config.mask, rngs=nnx.Rngs(seed))


def make_iterator(config, split: str = "train", *, batch_size: int | None = None):
  """A checkpointable Grain iterator over this process's share of `split` of config.data.

  batch_size: the global batch (default config.train.batch_size), split over the processes."""
  batch_size = int(config.train.batch_size if batch_size is None else batch_size)
  if batch_size % jax.process_count():
    raise ValueError(f"batch size {batch_size} is not divisible by {jax.process_count()} processes")
  return pipeline.make_iterator(config.data, batch_size=batch_size // jax.process_count(),
                                seed=int(config.train.seed), process_index=jax.process_index(),
                                process_count=jax.process_count(), split=split)


def load_vae(config) -> vae_lib.AutoencoderKL:
  """The AutoencoderKL of config.vae with its weights from config.vae.checkpoint: an Orbax
  directory (checkpoint.save_module, as main.py and the demo write) or diffusers safetensors."""
  path = config.vae.checkpoint
  if not path:
    raise ValueError("config.vae.checkpoint is empty: set it to the VAE the model was trained "
                     "with (diffusers safetensors, or an Orbax directory such as the demo's "
                     "WORKDIR/vae), or let `python -m wm_jax.main` train a tiny one")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.vae.checkpoint={path!r} does not exist")
  if ckpt_lib.is_module_dir(path):
    return ckpt_lib.restore_module(lambda: vae_lib.AutoencoderKL(config.vae, rngs=nnx.Rngs(0)),
                                   path)
  return vae_weights.from_pretrained(path, config.vae)


def latent_encoder(config) -> Callable[[np.ndarray], np.ndarray]:
  """frames uint8 [B,T,V,H,W,3] -> scaled latents [B,T,V,h,w,C] (numpy), one jitted VAE encode."""
  graphdef, state = nnx.split(load_vae(config))

  @jax.jit
  def encode(state, frames):
    return vae_lib.encode_frames(nnx.merge(graphdef, state), frames)

  return lambda frames: np.asarray(encode(state, frames))


def latents_preparer(config) -> Callable[[dict], dict]:
  """batch -> batch with 'latents': batches that carry only frames are VAE-encoded (the VAE is
  loaded on the first such batch)."""
  encoder = []

  def prepare(batch: dict) -> dict:
    if "latents" in batch or "frames" not in batch:
      return batch
    if not encoder:
      encoder.append(latent_encoder(config))
    return {**batch, "latents": encoder[0](batch["frames"])}

  return prepare


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything about a run that follows from its config, before any array exists."""
  config: Any
  mesh: Mesh
  tx: optax.GradientTransformation
  graphdef: Any
  abstract: state_lib.TrainState     # of ShapeDtypeStructs
  shardings: state_lib.TrainState    # of NamedShardings
  step_fn: Any                       # step.make_train_step: jitted (state, batch) -> (state, metrics)
  model_factory: Callable[[], nnx.Module]
  loss_fn: Callable

  @property
  def ema(self) -> bool:
    return self.abstract.ema is not None

  def abstract_state(self):
    """The TrainState of ShapeDtypeStructs with their shardings (what Orbax restores into)."""
    return ckpt_lib.abstract_with_shardings(self.abstract, self.shardings)

  def abstract_inputs(self):
    """(state, batch) of sharded ShapeDtypeStructs: what `step_fn.lower` takes."""
    return self.abstract_state(), example_batch.abstract(
        self.config, sharding=shard.batch_sharding(self.mesh))

  def init_state(self) -> state_lib.TrainState:
    return state_lib.create(self.model_factory, self.tx, self.ema, self.shardings)[1]

  def model(self, state: state_lib.TrainState, *, use_ema: bool = False) -> nnx.Module:
    return state_lib.merge(self.graphdef, state, use_ema=use_ema)

  def iterator(self, split: str = "train", *, batch_size: int | None = None):
    return make_iterator(self.config, split, batch_size=batch_size)

  def device_batch(self, batch: dict) -> dict:
    return shard.device_batch(batch, self.mesh)

  def restore_weights(self, workdir: str, *, params: str = "auto"):
    """(step, model, which) from the newest step of `workdir` that restores: the EMA copy when
    params='ema' (or 'auto' and the run in `workdir` kept one), else the params; sharded as
    self.shardings.params."""
    if params not in PARAMS_CHOICES:
      raise ValueError(f"params={params!r}; choose one of {PARAMS_CHOICES}")
    use_ema = params == "ema" or (params == "auto" and ckpt_lib.kept_ema(workdir))
    step, weights, rest = ckpt_lib.restore_weights(workdir, self.abstract_state(), use_ema=use_ema)
    return step, nnx.merge(self.graphdef, weights, rest), "ema" if use_ema else "params"


def build(config, *, mesh: Mesh | None = None, model_factory_fn: Callable | None = None,
          loss_fn: Callable | None = None, donate: bool = True, training: bool = True) -> Run:
  """The Run of `config` (a whole config: see wm_jax.defaults) on `mesh` (default: config.mesh
  over all devices). model_factory_fn / loss_fn replace the config's model and loss (tests).
  training=False (sampling, evaluation, conversion): train.batch_size is not checked against the
  mesh, since those choose their own batch sizes."""
  defaults.check(config)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  checked = config
  if not training:
    checked = config.copy_and_resolve_references()
    checked.train.batch_size = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")
                                            if a in mesh.shape]))
  mesh_lib.validate(checked, mesh)
  tx = optim.make_optimizer(config.train)
  factory = model_factory_fn or model_factory(config)
  loss = loss_fn or losses.loss_fn
  graphdef, abstract = state_lib.abstract(factory, tx, float(config.train.ema_decay) > 0)
  param_sh = mesh_lib.state_shardings(abstract.params, mesh)
  shardings = mesh_lib.matching_shardings(abstract, abstract.params, param_sh, mesh)
  step_fn = step_lib.make_train_step(graphdef, loss, tx, config, mesh, shardings, donate=donate)
  return Run(config, mesh, tx, graphdef, abstract, shardings, step_fn, factory, loss)


def saved_config(workdir: str):
  """The config saved with the newest checkpoint of `workdir`, on top of the defaults."""
  step, values = ckpt_lib.saved_config(workdir)
  return defaults.from_dict(values, what=f"the config saved with step {step} in {workdir}")


def restore(workdir: str, *, config=None, params: str = "auto", mesh: Mesh | None = None):
  """(run, model, info): the run of the config saved in `workdir` (or `config`) and its newest
  restorable weights, sharded over the run's mesh. info: {'workdir', 'step', 'params'}."""
  if config is None:
    config = saved_config(workdir)
    print(f"[run] config from the checkpoint in {ckpt_lib.directory(workdir)}", flush=True)
  run = build(config, mesh=mesh, donate=False, training=False)
  step, model, which = run.restore_weights(workdir, params=params)
  print(f"[run] restored the {which} of step {step} from {ckpt_lib.directory(workdir)}",
        flush=True)
  return run, model, {"workdir": os.path.abspath(workdir), "step": step, "params": which}
