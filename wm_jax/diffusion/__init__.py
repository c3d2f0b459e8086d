"""wm_jax.diffusion: rectified flow for the CTSD backbone.

  schedules.py  z_tau = (1 - tau) z0 + tau eps; velocity target eps - z0; logit-normal tau with
                SD3's shift; the sampler's sigma schedule
  guidance.py   unconditional inputs (OpenDWM's), condition dropout, the CFG combination
  losses.py     loss_fn(model, batch, rng, config, train=True) -> (loss, metrics)
  samplers.py   euler_sample(model, noise, cond, config, ...) -> latents
  rollout.py    rollout(model, inputs, context_latents, config, ...) for long horizons
  generate.py   generate(model, batch, config, ...): conditions -> sampler or rollout -> decode,
                the one path to videos

config.diffusion's keys and defaults are wm_jax.defaults.diffusion().
"""
