"""example_batch: the random / abstract batches of benchmarks, AOT compiles and FLOP counts carry
every input the config's model needs, valid for the schema."""
from wm_jax import defaults
from wm_jax.data import schema
from wm_jax.models import conditioning
from wm_jax.train import example_batch


def test_a_model_with_the_action_module_gets_the_action_keys():
  c = defaults.config()
  c.model.action_module = defaults.action_module()
  batch = example_batch.random(c, 2)
  assert {"trajectory", "goal_point", "command"} <= set(batch)
  assert set(example_batch.abstract(c, 2)) == set(batch)
  schema.validate({k: v[0] for k, v in batch.items()}, source="example_batch")
  cond = conditioning.model_inputs(batch, c)   # raises naming a missing key
  assert cond.actions.shape[:2] == (2, c.model.num_frames)
