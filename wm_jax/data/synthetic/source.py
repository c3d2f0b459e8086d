"""The synthetic world as a random-access data source: clip i of a split is scene i, rendered.

    source = SyntheticSource(config.data, 'train')
    record = source[i]     # render.render_clip of world.make_scene(scene_seed + i, domain)

Every record carries the ego's actions, trajectory, goal_point and command (K =
config.trajectory_points), the ego driving the scene's plan (world.make_plan: lane keeping, lane
changes, swerves, speed changes, stops, turns at junctions). With config.steer_takeover = p > 0,
a share p of the clips (drawn per clip from its seed) leaves the plan's steering at a random
frame for a random value held to the end (world.takeover, |value| <= config.takeover_steering):
steering that the first frames do not foretell, for a model to learn to follow.

Validation scenes are seeded from scene_seed + 10**6 + i and drawn from config.val_domain when
it is set (a domain split). Rendering runs on the JAX platform config.render_device ('cpu' by
default, so data threads stay off the accelerator that trains; '' = JAX's default device).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from wm_jax.data.synthetic import render, rig, world

VAL_SEED_OFFSET = 10**6  # added to scene_seed for validation scenes


def _draw(seed: int) -> float:
  """A uniform [0, 1) number per scene seed: whether its clip takes the steering over."""
  return float(np.random.default_rng(np.random.SeedSequence([int(seed), 0x7a4f])).uniform())


class SyntheticSource:
  """Renders clip i of a split from scene seed `scene_seed + i` (validation: + 10**6)."""

  def __init__(self, config, split: str):
    val = split != "train"
    self.domain = (config.val_domain or config.domain) if val else config.domain
    self.size = config.num_val if val else config.num_train
    self.seed0 = config.scene_seed + (VAL_SEED_OFFSET if val else 0)
    self.rig = rig.make_rig(config.rig, (config.image_height, config.image_width))
    self.config = config
    self.name = f"synthetic:{config.rig}:{self.domain}:{split}"

  def __len__(self):
    return self.size

  def _device(self):
    if not self.config.render_device:
      return contextlib.nullcontext()
    return jax.default_device(jax.devices(self.config.render_device)[0])

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"{self.name}: index {index} out of range [0, {self.size})")
    c = self.config
    seed = self.seed0 + index
    scene = world.make_scene(seed, domain=self.domain)
    actions = None
    if c.steer_takeover > 0 and _draw(seed) < c.steer_takeover:
      k = c.num_frames + c.trajectory_points
      actions = np.stack(world.takeover(*world.autopilot(scene, k, c.fps), seed,
                                        num_frames=c.num_frames,
                                        max_steering=c.takeover_steering), -1)
    with self._device():
      record = render.render_clip(scene, self.rig, num_frames=c.num_frames, fps=c.fps,
                                  actions=actions,
                                  image_size=(c.image_height, c.image_width),
                                  max_boxes=c.max_boxes, layout=c.layout,
                                  trajectory_points=c.trajectory_points,
                                  supersample=c.supersample)
    if not c.layout:
      record.pop("layout", None)
    if not c.depth:
      record.pop("depth", None)
    return {k: np.asarray(v) for k, v in record.items()}
