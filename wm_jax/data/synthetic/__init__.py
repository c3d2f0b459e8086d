"""wm_jax.data.synthetic: the built-in procedural driving world.

  domains.py  style domains ("cities"): boston (right-hand traffic, dense brick, overcast) and
              singapore (left-hand traffic, sparse towers, trees, sunny)
  world.py    make_scene(seed, domain): roads with curves and junctions, buildings, poles, trees,
              moving and parked vehicles, pedestrians; the ego's driving plan (make_plan: lane
              keeping, lane changes, swerves, speed changes, stops, junction turns) and the
              autopilot that drives it (pure pursuit + speed profile + car following)
  ego.py      the bicycle model of data/actions.py, named for the world, and its steering limit
  rig.py      camera rigs 'front', 'front2', 'front3', 'nuscenes6' at any image size
  raycast.py  jitted per-pixel ray casting (boxes, textured ground, sky) -> RGB, depth, hit ids
  render.py   render_clip(scene, rig, ...) -> a record of the batch contract (data/schema.py);
              record_for_index(i, ...) for data pipelines
  source.py   SyntheticSource(config.data, split): clip i of a split rendered from scene i
  export.py   write_nuscenes(out_dir, scenes, ...): the scenes as a nuScenes v1.0 data set

Conventions (nuScenes): world and ego frames x forward / y left / z up (ego origin at the rear axle
on the ground); camera frames OpenCV (x right, y down, z forward); extrinsics are ego-from-camera,
ego_pose is world-from-ego, intrinsics are in pixels; boxes are in the ego frame of their frame.
"""
