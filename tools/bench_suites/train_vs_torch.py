"""wm_jax's train step (or sampler step) beside a PyTorch model of the same structure, in one run,
and their ratio.

  python tools/bench.py train_vs_torch                          # configs/bench.py, unmasked
  python tools/bench.py train_vs_torch --rounds=3 --steps=7
  python tools/bench.py train_vs_torch --what=sample            # one Euler step: the model call

The PyTorch side (the torch extra) is the project's own reference of the CTSD structure: diffusers'
SD3Transformer2DModel for the patch embedding, time/text embedding, context embedder, joint
blocks (dual attention where the config has it), output norm and projection, with the temporal
and row-wise cross-view steps and AlphaBlenders of the parity tests' reference
(tests/convert/torch_reference.py) after the config's layers; AdamW, eager, float32,
torch.set_num_threads(--threads). Not in it: the paper-only Eq. 5 time modulation (a linear per
temporal block), MaskGWM's action module, the layout adapter and mask reconstruction, so the
unmasked step of the model without them is compared on both sides (the same parameter names and
shapes: tests/train/test_bench_vs_torch.py). One step is forward + backward + update of an MSE
loss on random latents. --what=sample times one Euler step of the sampler instead: wm_jax's
compiled step (tools/bench_suites/train.py compiled_sample_step) beside the PyTorch model's
forward under torch.inference_mode() and the same update, on the 2B batch of guidance when --cfg
is not 1.

Each round times both, one after the other, in alternating order (round 0: wm_jax first), each
step timed to its end. One line per round and framework ({"framework", "round", "step_ms_median",
"step_ms_min", "step_ms"}), then {"ratio_median": wm_jax / torch over all rounds' medians}.
Timings are for comparing within one run on one machine, never for tests.
"""

from __future__ import annotations

import os
import time


def add_arguments(parser):
  parser.add_argument("--config", default="configs/bench.py", help="config file (get_config)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round (>= 1)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps before (>= 1)")
  parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores)")
  parser.add_argument("--what", choices=["train", "sample"], default="train",
                      help="train: forward + backward + update; sample: one Euler step")
  parser.add_argument("--cfg", type=float, default=1.0,
                      help="--what=sample: guidance scale (not 1: the model on a 2B batch)")


def load_config(path: str):
  from wm_jax import defaults
  config = defaults.load_file(path)
  config.mask.enabled = False
  config.model.time_modulation = False
  config.model.layout_adapter = None
  config.model.action_module = None
  return config


# -- wm_jax ---------------------------------------------------------------------------------------

def jax_stepper(config):
  """step() -> seconds of one compiled wm_jax train step, timed to its end."""
  import jax
  from tools.bench_suites import train as train_suite
  run_step, _ = train_suite.compiled_step(config)

  def step():
    t0 = time.perf_counter()
    jax.block_until_ready(run_step())
    return time.perf_counter() - t0

  return step


def jax_sampler(config, cfg: float):
  """step() -> seconds of one compiled wm_jax Euler step, timed to its end."""
  import jax
  from tools.bench_suites import train as train_suite
  call, _ = train_suite.compiled_sample_step(config, cfg)
  count = iter(range(1 << 30))

  def step():
    t0 = time.perf_counter()
    jax.block_until_ready(call(next(count)))
    return time.perf_counter() - t0

  return step


# -- PyTorch --------------------------------------------------------------------------------------

def torch_model(config):
  """The PyTorch CTSD of config.model (see the module docstring)."""
  import diffusers
  import torch
  from tests.convert import torch_reference

  m = config.model

  class TorchCTSD(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.backbone = diffusers.SD3Transformer2DModel(
          sample_size=m.sample_size, patch_size=m.patch_size, in_channels=m.in_channels,
          num_layers=m.num_layers, attention_head_dim=m.head_dim,
          num_attention_heads=m.num_heads, joint_attention_dim=m.joint_attention_dim,
          caption_projection_dim=m.num_heads * m.head_dim,
          pooled_projection_dim=m.pooled_projection_dim, out_channels=m.out_channels,
          pos_embed_max_size=m.pos_embed_max_size,
          dual_attention_layers=tuple(m.dual_attention_layers), qk_norm=m.qk_norm)
      self.video = torch_reference.VideoModel(
          m.num_heads * m.head_dim, m.num_heads, m.head_dim, len(m.temporal_block_layers),
          len(m.crossview_block_layers), max(int(m.camera_scalars), 1), merge=m.merge_factor)
      self.temporal = {int(i): j for j, i in enumerate(m.temporal_block_layers)}
      self.crossview = {int(i): j for j, i in enumerate(m.crossview_block_layers)}

    def forward(self, latents, timesteps, context, pooled, camera):
      """latents [B,T,V,C,h,w], timesteps [B*T*V], context [B*T*V,L,Dj], pooled [B*T*V,P],
      camera [B,T,V,S] -> the projected tokens [B*T*V, h*w/p^2, p*p*C]."""
      b, t, v, c, h, w = latents.shape
      bb = self.backbone
      x = bb.pos_embed(latents.reshape(b * t * v, c, h, w))
      temb = bb.time_text_embed(timesteps, pooled)
      ctx = bb.context_embedder(context)
      cam = self.video.camera_embedding(camera)
      width = w // m.patch_size
      for i, block in enumerate(bb.transformer_blocks):
        ctx, x = block(hidden_states=x, encoder_hidden_states=ctx, temb=temb)
        if i in self.temporal:
          x = self.video.temporal(self.temporal[i], x, b, t, v, width,
                                  m.temporal_attention_type, cam=cam)
        if i in self.crossview:
          x = self.video.crossview(self.crossview[i], x, b, t, v, h // m.patch_size, width,
                                   cam=cam)
      return bb.proj_out(bb.norm_out(x, temb))

  return TorchCTSD()


def torch_inputs(config, batch: int):
  """Random (latents, timesteps, context, pooled, camera) of torch_model(config) for `batch`."""
  import torch
  m = config.model
  t, v = int(m.num_frames), int(m.num_views)
  n = batch * t * v
  return (torch.randn(batch, t, v, m.in_channels, m.latent_height, m.latent_width),
          torch.rand(n) * 1000, torch.randn(n, m.text_tokens, m.joint_attention_dim),
          torch.randn(n, m.pooled_projection_dim),
          torch.randn(batch, t, v, max(int(m.camera_scalars), 1)))


def torch_sampler(config, threads: int, cfg: float):
  """step() -> seconds of one PyTorch Euler step (the model's forward, inference mode)."""
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_model(config).eval()
  batch = int(config.train.batch_size) * (1 if cfg == 1.0 else 2)
  inputs = torch_inputs(config, batch)

  def step():
    t0 = time.perf_counter()
    with torch.inference_mode():
      velocity = model(*inputs)
      _ = torch.randn_like(velocity) - velocity  # x(sigma 0) = x(sigma 1) + (0 - 1) * velocity
    return time.perf_counter() - t0

  return step


def torch_stepper(config, threads: int):
  """step() -> seconds of one eager PyTorch train step (AdamW) of torch_model(config)."""
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  m = config.model
  model = torch_model(config).train()
  opt = torch.optim.AdamW(model.parameters(), lr=float(config.train.learning_rate))
  b = int(config.train.batch_size)
  tokens = (m.latent_height // m.patch_size) * (m.latent_width // m.patch_size)
  latents, timesteps, context, pooled, camera = torch_inputs(config, b)
  target = torch.randn(b * m.num_frames * m.num_views, tokens, m.patch_size ** 2 * m.out_channels)

  def step():
    t0 = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(latents, timesteps, context, pooled, camera), target)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0

  return step


def run(args):
  import numpy as np
  import wm_jax  # noqa: F401
  try:
    import diffusers  # noqa: F401
    import torch  # noqa: F401
  except ImportError as e:
    raise SystemExit(f"train_vs_torch needs the torch extra (pip install -e '.[torch]'): {e}")
  if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
    raise ValueError(f"--steps={args.steps}, --warmup={args.warmup} and --rounds={args.rounds} "
                     "must be >= 1")
  config = load_config(args.config)
  threads = args.threads or os.cpu_count()
  if args.what == "train":
    steppers = {"wm_jax": jax_stepper(config), "torch": torch_stepper(config, threads)}
  else:
    steppers = {"wm_jax": jax_sampler(config, args.cfg),
                "torch": torch_sampler(config, threads, args.cfg)}
  medians = {name: [] for name in steppers}
  for r in range(args.rounds):
    order = list(steppers) if r % 2 == 0 else list(steppers)[::-1]
    for name in order:
      for _ in range(args.warmup):
        steppers[name]()
      times = [steppers[name]() for _ in range(args.steps)]
      medians[name].append(float(np.median(times)))
      yield {"config": args.config, "what": args.what, "framework": name, "round": r,
             "order": order,
             "torch_threads": threads, "step_ms_median": round(medians[name][-1] * 1e3, 3),
             "step_ms_min": round(min(times) * 1e3, 3),
             "step_ms": round(float(np.mean(times)) * 1e3, 3)}
  ratio = float(np.median(medians["wm_jax"]) / np.median(medians["torch"]))
  yield {"config": args.config, "what": args.what, "ratio_median": round(ratio, 4),
         "rounds": args.rounds,
         "steps": args.steps, "wm_jax_ms": round(float(np.median(medians["wm_jax"])) * 1e3, 3),
         "torch_ms": round(float(np.median(medians["torch"])) * 1e3, 3)}
