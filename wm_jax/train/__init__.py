"""wm_jax.train: from a config to a trained, checkpointed run.

  run.py           build(config) -> Run (mesh, model, shardings, step); restore(workdir)
  state.py         TrainState (params, rest, optimizer state, EMA, step)
  optim.py         AdamW with warmup + cosine / constant schedules
  step.py          the jitted train step (explicit shardings, donated state, NaN guard)
  loop.py          train(config, workdir): resume, log, checkpoint, sample; SIGTERM / Ctrl-C
                   save, errors wait for the pending save, a non-finite run stops
  checkpoint.py    Orbax checkpoints: the only native layout, value fingerprints, damaged
                   steps skipped and set aside, the disk checked before a save
  workdir_lock.py  one writer per workdir (WORKDIR/lock: host, pid; stale locks replaced)
  metrics.py       CLU writers, progress hooks, sample videos to disk and TensorBoard
  preview.py       sample videos of held-out clips (training and --mode=sample)
  vae_training.py  the tiny VAE of the CPU configs and the demo
  flops.py         analytic model FLOPs and MFU
  memory.py        state and backward-residual bytes from the jaxpr
  example_batch.py random / abstract batches of a config's shapes
  demo.py          the end-to-end demo (tools/demo.sh)
"""
