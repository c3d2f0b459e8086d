"""The PyTorch side of the train_vs_torch bench is the same structure as the wm_jax model it is
timed against: the same parameter names and shapes (OpenDWM's), and a train step that runs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from wm_jax.convert import param_map  # noqa: E402
from wm_jax.models.ctsd_dit import CTSDDiT  # noqa: E402
from tools.bench_suites import train_vs_torch  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("path", ["configs/bench.py", "configs/maskgwm_tiny.py"])
def test_torch_model_has_the_wm_jax_key_set_and_shapes(path):
  config = train_vs_torch.load_config(path)
  model = nnx.eval_shape(lambda: CTSDDiT(config.model, config.mask, rngs=nnx.Rngs(0)))
  want = {k: tuple(v) for k, v in param_map.torch_shapes(model).items()}
  have = {k.removeprefix("backbone.").removeprefix("video."): tuple(v.shape)
          for k, v in train_vs_torch.torch_model(config).state_dict().items()}
  assert param_map.compare_shapes(have, want) == ""


def test_torch_step_runs_at_the_config_shapes():
  config = train_vs_torch.load_config("configs/maskgwm_tiny.py")
  config.train.batch_size = 1
  step = train_vs_torch.torch_stepper(config, threads=1)
  assert step() > 0 and step() > 0


def test_sampler_steps_run_on_both_sides_with_guidance():
  config = train_vs_torch.load_config("configs/maskgwm_tiny.py")
  config.train.batch_size = 1
  inputs = train_vs_torch.torch_inputs(config, 2)  # the 2B batch of guidance
  assert inputs[0].shape[:3] == (2, config.model.num_frames, config.model.num_views)
  for step in (train_vs_torch.torch_sampler(config, threads=1, cfg=2.0),
               train_vs_torch.jax_sampler(config, cfg=2.0)):
    assert step() > 0 and step() > 0
