"""wm_jax.parallel: the mesh, the logical axis rules, constraints and batch placement.

  mesh.py    make_mesh(config.mesh), validate(config, mesh), parameter shardings from their names
  rules.py   the one table from logical axis names (parameters, activations, data) to mesh axes
  shard.py   constrain(x, names), batch_sharding / device_batch, flat random draws
"""
