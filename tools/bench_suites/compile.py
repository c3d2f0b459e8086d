"""Compile cost of the train step with layers scanned and unscanned: trace + lower seconds, XLA
compile seconds, and XLA's temporary memory per device, from abstract shapes (nothing is allocated
or run, so the SD3.5-depth configs fit on a laptop).

  python tools/bench.py compile --config=configs/maskgwm_long.py --shrink   # long's 24 layers, small width
  python tools/bench.py compile --config=configs/maskgwm_mview.py --shrink --mask=off

--shrink keeps the layer structure (depth, dual-attention, temporal/cross-view layers, mask
decoder) and makes every width and size small (2 heads x 32, 4 frames, 8x16 latents, 8 text
tokens), so the time measured is the cost of the structure, not of big matrices. One JSON line
per (mask, scan) setting, with the analytic train FLOPs per step (3x forward matmuls) of that
shape: at full size (no --shrink, --lower_only: skips the XLA compile, minutes at full size) the
masked / unmasked ratio bounds what mask reconstruction can save. Also backend-independent memory
(wm_jax/train/memory.py): state_bytes (params, optimizer state, EMA), param_bytes, and
residual_bytes, the activations the remat policy keeps for the backward pass (params excluded).
On one device the step needs about state + param_bytes (the gradients) + residual_bytes, plus
XLA's working space; temp_bytes_per_device is XLA's own plan on this backend.
executed_flops_per_step counts the matmuls of the gradient program, remat recomputation included:
over flops_per_step (what MFU counts) it is the policy's compute cost.

  python tools/bench.py compile --config=configs/maskgwm_long.py --mask=both --scan=on --lower_only
"""

from __future__ import annotations

import copy
import time

SHRINK = dict(num_heads=2, head_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
              num_frames=4, latent_height=8, latent_width=16, text_tokens=8, dtype="float32")


def add_arguments(parser):
  parser.add_argument("--config", default="configs/maskgwm_long.py", help="config file")
  parser.add_argument("--shrink", action="store_true", help="small widths, same layer structure")
  parser.add_argument("--mask", choices=["both", "on", "off"], default="on")
  parser.add_argument("--scan", choices=["both", "on", "off"], default="both")
  parser.add_argument("--remat", default="", help="override config.model.remat_policy")
  parser.add_argument("--lower_only", action="store_true", help="trace and lower, no XLA compile")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set train.nan_guard=False (repeatable)")


def run(args):
  import jax
  import wm_jax  # noqa: F401
  from flax import nnx
  from tools.bench_suites.train import apply_overrides, load_config
  from wm_jax.models.ctsd_dit import CTSDDiT
  from wm_jax.parallel import mesh as mesh_lib
  from wm_jax.train import flops, memory
  from wm_jax.train import run as run_lib

  base = load_config(args.config)
  base.train.batch_size = 1
  base.mesh.update(data=1, fsdp=1, tensor=1)
  if args.shrink:
    base.model.update(SHRINK)
    if base.model.layout_adapter is not None:
      base.model.layout_adapter.channels = [SHRINK["num_heads"] * SHRINK["head_dim"]] * len(
          base.model.layout_adapter.channels)
    base.data.update(num_frames=SHRINK["num_frames"], image_height=8 * SHRINK["latent_height"],
                     image_width=8 * SHRINK["latent_width"])
  if args.remat:
    base.model.remat_policy = args.remat
  apply_overrides(base, args.set)
  pick = {"both": [True, False], "on": [True], "off": [False]}
  for masked in pick[args.mask]:
    for scanned in pick[args.scan]:
      config = copy.deepcopy(base)
      config.mask.enabled = masked
      config.model.scan_layers = scanned
      mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
      t0 = time.perf_counter()
      s = run_lib.build(config, mesh=mesh)
      state, batch = s.abstract_inputs()
      setup_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      lowered = s.step_fn.lower(state, batch)
      lower_s = time.perf_counter() - t0
      compile_s = temp = None
      if not args.lower_only:
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = round(time.perf_counter() - t0, 2)
        temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
      step_flops = flops.train_flops(flops.loss_forward_flops(
          s.graphdef, s.abstract.params, s.abstract.rest, s.loss_fn, batch, config))
      executed = flops.loss_grad_flops(s.graphdef, s.abstract.params, s.abstract.rest, s.loss_fn,
                                       batch, config)
      saved, saved_inputs = memory.loss_residual_bytes(s.graphdef, s.abstract.params,
                                                       s.abstract.rest, s.loss_fn, batch, config)
      model = nnx.eval_shape(lambda: CTSDDiT(config.model, config.mask, rngs=nnx.Rngs(0)))
      traced = (sum(run.period for run in model.runs) if model.runs is not None
                else config.model.num_layers)
      yield {"config": args.config, "shrink": bool(args.shrink), "mask": masked,
             "scan_layers": scanned, "layers": int(config.model.num_layers),
             "traced_layers": int(traced), "remat": str(config.model.remat_policy),
             "setup_s": round(setup_s, 2), "trace_lower_s": round(lower_s, 2),
             "compile_s": compile_s, "temp_bytes_per_device": temp,
             "flops_per_step": step_flops, "executed_flops_per_step": executed,
             "state_bytes": memory.tree_bytes(s.abstract),
             "param_bytes": memory.tree_bytes(s.abstract.params),
             "residual_bytes": saved - saved_inputs}
