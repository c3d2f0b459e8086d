"""wm_jax Orbax checkpoint -> OpenDWM DiTCrossviewTemporalConditionModel safetensors + config JSON.

  python tools/convert_to_pytorch.py --checkpoint=WORKDIR --out=model.safetensors [--dtype=bf16]
      [--ema] [--config=configs/maskgwm_tiny.py] [--drop_zero_paper_params]
      [--drop_zero_action_params] [--allow_mask_module_mismatch]

--checkpoint: a train workdir (its newest step that restores; tools/convert_from_pytorch.py
writes one too), read by wm_jax.train.run.restore. The model config is the one saved with the
checkpoint unless --config is given. Writes OUT (safetensors, PyTorch layouts,
keys = OpenDWM state_dict keys incl. mask_module.*) and OUT with .json for the model config in
OpenDWM's names. Every key, shape and dtype is checked against the model the config builds and
NaN / Inf values are refused, by name; paper-only parameters (MaskGWM Eq. 5) are refused unless
--drop_zero_paper_params and they are all zero; the action module (MaskGWM's action conditioning,
OpenDWM has none) is refused unless --drop_zero_action_params and its output projections are all
zero (it then adds nothing, and all of its parameters are left out). A mask module OpenDWM's
MaskController cannot load or computes differently (e.g. its noise_proj takes 16 latent
channels, maskgwm_tiny has 4) is refused, naming the parameter and shapes, unless
--allow_mask_module_mismatch (each difference is then printed). Where the OpenDWM config is
spelled differently to compute the same thing (camera scalars without cross-view blocks:
enable_crossview=True with no cross-view layers), a note says so.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.convert import opendwm_config, param_map, to_torch  # noqa: E402
from wm_jax.train import run as run_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "wm_jax train workdir")
flags.DEFINE_string("out", None, "output .safetensors path (config JSON next to it)")
flags.DEFINE_string("dtype", "float32", "float32 | bf16 | fp16 for floating arrays")
flags.DEFINE_bool("ema", False, "export the EMA params of a train checkpoint")
flags.DEFINE_string("config", None, "config file (configs/NAME.py[:arg]) overriding the stored one")
flags.DEFINE_bool("drop_zero_paper_params", False,
                  "leave out paper-only parameters when they are all still zero")
flags.DEFINE_bool("drop_zero_action_params", False,
                  "leave out the action module when its output projections are all still zero")
flags.DEFINE_bool("allow_mask_module_mismatch", False,
                  "write the mask module even where OpenDWM's MaskController cannot load it or "
                  "computes it differently (each difference is printed)")


def main(argv):
  del argv
  if not FLAGS.checkpoint or not FLAGS.out:
    raise app.UsageError("--checkpoint and --out are required")
  if not FLAGS.out.endswith(".safetensors"):
    raise app.UsageError(f"--out={FLAGS.out} must end in .safetensors")
  print(f"[convert] reading {FLAGS.checkpoint}{' (EMA)' if FLAGS.ema else ''}", flush=True)
  config = defaults.load_file(FLAGS.config) if FLAGS.config else None
  run, model, _ = run_lib.restore(FLAGS.checkpoint, config=config,
                                  params="ema" if FLAGS.ema else "params")
  model_cfg, mask_cfg = run.config.model, run.config.mask
  flat = {k: np.asarray(v) for k, v in
          param_map.flat_state(param_map.checkpoint_state(model)).items()}
  print(f"[convert] {len(flat)} arrays; checking them against the model of the config", flush=True)
  try:
    sd = to_torch.export_state_dict(flat, model_cfg, mask_cfg,
                                    drop_zero_paper_params=FLAGS.drop_zero_paper_params,
                                    drop_zero_action_params=FLAGS.drop_zero_action_params,
                                    allow_mask_module_mismatch=FLAGS.allow_mask_module_mismatch)
    opendwm = to_torch.opendwm_model_config(
        model_cfg, mask_cfg, dropped_paper_params=FLAGS.drop_zero_paper_params,
        dropped_action_params=FLAGS.drop_zero_action_params)
    to_torch.write_safetensors(sd, FLAGS.out, dtype=FLAGS.dtype,
                               metadata={"format": "pt", "source": "wm_jax"})
  except (param_map.ConversionError, ValueError) as e:
    print(f"[convert] refused: {e}", file=sys.stderr)
    sys.exit(2)
  for difference in opendwm_config.mask_differences(model_cfg, mask_cfg):
    print(f"[convert] warning: written as allowed, OpenDWM differs: {difference}", file=sys.stderr)
  for note in opendwm_config.export_notes(model_cfg, mask_cfg):
    print(f"[convert] note: {note}", flush=True)
  config_path = os.path.splitext(FLAGS.out)[0] + ".json"
  with open(config_path, "w") as f:
    json.dump(opendwm, f, indent=1)
  n = sum(v.size for v in sd.values())
  print(f"[convert] wrote {len(sd)} tensors ({n / 1e6:.2f}M values, {FLAGS.dtype}) to {FLAGS.out} "
        f"and the OpenDWM config to {config_path}", flush=True)


if __name__ == "__main__":
  app.run(main)
