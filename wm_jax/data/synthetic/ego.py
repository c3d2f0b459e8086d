"""The kinematic bicycle model of the synthetic ego vehicle.

The model itself (state, actions, the exact arc integration) lives in data/actions.py, which the
real-data readers share; this module names it for the synthetic world and adds the world's
steering limit.
"""

from __future__ import annotations

from wm_jax.data import actions as actions_lib

WHEELBASE = actions_lib.WHEELBASE
MAX_STEERING = 0.6  # rad: the most the synthetic ego's driving policy steers

advance = actions_lib.advance
integrate = actions_lib.integrate
make_actions = actions_lib.make_actions
pose_matrix = actions_lib.pose_matrix
