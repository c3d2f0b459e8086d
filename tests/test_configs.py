"""The world-model configs take only the inputs their flags name: no layout adapter (which would
see the layout of the predicted frames) unless 'layout', the action module unless 'noactions';
an unknown flag is an error naming it."""
import pytest

from configs import maskgwm_mview, maskgwm_tiny
from wm_jax import defaults


@pytest.mark.parametrize("module", [maskgwm_tiny, maskgwm_mview])
def test_flags_choose_the_model_inputs(module):
  for arg, layout, actions in (("", False, True), ("layout", True, True),
                               ("noactions", False, False), ("layout,noactions", True, False)):
    c = module.get_config(arg)
    defaults.check(c)
    assert (c.model.layout_adapter is not None, c.data.layout) == (layout, layout), arg
    assert (c.model.action_module is not None) == actions, arg
    if actions:
      assert c.model.action_module.trajectory_points == c.data.trajectory_points
  with pytest.raises(ValueError, match=r"unknown variant flag\(s\) \['lidar'\]"):
    module.get_config("layout,lidar")
