"""Camera conventions checked against the synthetic renderer: a reader's calibration must project
each actor's 3-D box around the pixels the ray caster gave that actor."""

import numpy as np

from wm_jax.data import layout_render
from wm_jax.data.synthetic import render


def first_frame_hits(scene, rig, speed, steering, fps):
  """[V, H, W] actor id the renderer drew at each pixel of frame 0 (0: no actor)."""
  return render.render_clip(scene, rig, num_frames=1, fps=fps, image_size=rig.image_size,
                            actions=np.stack([speed, steering], -1)[:1], layout=False,
                            return_hit_id=True)["hit_id"][0]


def check_boxes_project_onto_hits(scene, record, hit, min_pixels: int = 6) -> int:
  """Asserts, for every actor of frame 0 seen by a view (>= min_pixels, all box corners in front
  of the camera), that its pixels lie inside the image rectangle of its box corners projected
  with the record's ego_pose, extrinsics and intrinsics (1 px slack). Returns how many."""
  world_boxes = render.actor_boxes(scene, 0.0)
  checked = 0
  for v in range(hit.shape[0]):
    cam_from_world = np.linalg.inv(record["ego_pose"][0].astype(np.float64)
                                   @ record["extrinsics"][0, v].astype(np.float64))
    ids, counts = np.unique(hit[v], return_counts=True)
    for track, count in zip(ids, counts):
      if track == 0 or count < min_pixels:
        continue
      box = world_boxes[world_boxes[:, 8] == track][0]
      corners = layout_render.box_corners(box[None, :7])[0]
      cam = corners @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
      if (cam[:, 2] <= 0.1).any():
        continue
      uvw = cam @ record["intrinsics"][0, v].astype(np.float64).T
      u, w = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
      ys, xs = np.nonzero(hit[v] == track)
      assert u.min() - 1 <= xs.min() + 0.5 and xs.max() + 0.5 <= u.max() + 1, (v, track)
      assert w.min() - 1 <= ys.min() + 0.5 and ys.max() + 0.5 <= w.max() + 1, (v, track)
      checked += 1
  return checked
