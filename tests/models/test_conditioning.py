"""model_inputs: schema batch -> the Conditioning of CTSDDiT."""

import jax
import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.models import conditioning


def _batch(b=2, t=4, v=2, with_frames=False):
  rng = np.random.default_rng(0)
  intr = np.tile(np.array([[100.0, 0, 60], [0, 90, 30], [0, 0, 1]], np.float32), (b, t, v, 1, 1))
  extr = np.tile(np.eye(4, dtype=np.float32), (b, t, v, 1, 1))
  extr[..., :3, 2] = [0.0, 0.6, 0.8]
  extr[..., :3, 3] = [1.5, -0.2, 1.6]
  batch = {
      "latents": rng.normal(size=(b, t, v, 8, 16, 4)).astype(np.float32),
      "intrinsics": intr, "extrinsics": extr, "fps": np.full((b,), 12.0, np.float32),
      "layout": np.full((b, t, v, 64, 128, 6), 255, np.uint8),
      "view_adjacency": np.ones((b, v, v), bool),
      "actions": np.tile(np.array([5.0, 0.1, 0.0, 0.0], np.float32), (b, t, 1)),
  }
  if with_frames:
    batch["frames"] = np.zeros((b, t, v, 40, 120, 3), np.uint8)
  return batch


def _tiny():
  return defaults.config()


def test_camera_scalars_in_opendwm_order():
  cfg = _tiny()
  out = conditioning.model_inputs(_batch(), cfg)
  cam = np.asarray(out.camera)
  assert cam.shape == (2, 4, 2, 11)
  # image 64x128 from the layout: fx/H, fy/H, cx/W, cy/H
  np.testing.assert_allclose(cam[0, 0, 0], [12.0, 100 / 64, 90 / 64, 60 / 128, 30 / 64,
                                            0.0, 0.6, 0.8, 1.5, -0.2, 1.6], rtol=1e-6)
  frames = conditioning.model_inputs(_batch(with_frames=True), cfg).camera
  np.testing.assert_allclose(np.asarray(frames)[0, 0, 0, 1:5], [100 / 40, 90 / 40, 60 / 120,
                                                                30 / 40], rtol=1e-6)


def test_context_zeros_layout_scaling_adjacency():
  cfg = _tiny()
  out = conditioning.model_inputs(_batch(), cfg)
  assert isinstance(out, conditioning.Conditioning)
  assert out.context.shape == (2, 4, 2, 8, 32) and not np.asarray(out.context).any()
  assert out.pooled.shape == (2, 4, 2, 32)
  assert out.layout.dtype == np.float32 and float(out.layout.max()) == 1.0
  assert out.view_adjacency.dtype == bool
  assert out.disable_temporal is None and out.disable_crossview is None
  batch = _batch()
  for key in ("intrinsics", "layout", "view_adjacency"):
    del batch[key]
  out = conditioning.model_inputs(batch, cfg)
  assert out.camera is None and out.layout is None and out.view_adjacency is None


def test_conditioning_is_a_pytree_of_its_present_fields():
  out = conditioning.model_inputs(_batch(), _tiny())
  assert len(jax.tree.leaves(out)) == 5  # context, pooled, camera, layout, view_adjacency
  first = jax.tree.map(lambda x: x[:1], out)
  assert isinstance(first, conditioning.Conditioning) and first.camera.shape[0] == 1
  assert first.disable_temporal is None and first.disable_crossview is None


def test_action_scalars_for_13():
  cfg = _tiny()
  cfg.model.camera_scalars = conditioning.CAMERA_WITH_ACTIONS
  cam = np.asarray(conditioning.model_inputs(_batch(v=1), cfg).camera)
  assert cam.shape == (2, 4, 1, 13)
  np.testing.assert_allclose(cam[1, 3, 0, 11:], [5.0, 0.1], rtol=1e-6)
  batch = _batch(v=1)
  del batch["actions"]
  with pytest.raises(ValueError, match="'actions'"):
    conditioning.model_inputs(batch, cfg)


def test_bad_batches():
  cfg = _tiny()
  with pytest.raises(ValueError, match="latents"):
    conditioning.model_inputs({"frames": np.zeros((1, 1, 1, 8, 8, 3), np.uint8)}, cfg)
  with pytest.raises(ValueError, match="unknown batch keys"):
    conditioning.model_inputs(dict(_batch(), bogus=np.zeros(1)), cfg)
  batch = _batch()
  del batch["fps"]
  with pytest.raises(ValueError, match="'fps'"):
    conditioning.model_inputs(batch, cfg)
