"""action_reliance: exactly no gap for a model whose action module is untrained, a gap
once the actions change the output, and paired variants (the same noise for all three)."""

import pytest

from tests.models.test_action_module import _batch, _config, _model, _perturb_outputs
from wm_jax.evaluation.action_reliance import action_reliance


def test_an_untrained_action_module_reads_exactly_zero():
  cfg = _config()
  r = action_reliance(_model(cfg), cfg, _batch(cfg), seeds=range(3), n_ref=1)
  assert r["pairs"] == 3
  assert r["shuffled_minus_true"]["mean"] == 0.0 and r["none_minus_true"]["mean"] == 0.0
  assert r["true"] == r["shuffled"] == r["none"]


def test_actions_that_change_the_output_change_the_loss():
  cfg = _config()
  model = _model(cfg)
  _perturb_outputs(model)
  r = action_reliance(model, cfg, _batch(cfg), seeds=range(3), n_ref=1)
  assert abs(r["shuffled_minus_true"]["mean"]) > 1e-4
  assert abs(r["none_minus_true"]["mean"]) > 1e-4


def test_bad_inputs_are_named():
  cfg = _config()
  batch = _batch(cfg)
  with pytest.raises(ValueError, match="goal_point"):
    action_reliance(_model(cfg), cfg, {k: v for k, v in batch.items() if k != "goal_point"},
                    seeds=[0], n_ref=1)
  with pytest.raises(ValueError, match="n_ref=3"):
    action_reliance(_model(cfg), cfg, batch, seeds=[0], n_ref=3)
