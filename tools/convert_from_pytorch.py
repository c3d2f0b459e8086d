"""OpenDWM (or diffusers SD3/SD3.5 transformer) PyTorch checkpoint -> a wm_jax train workdir.

  python tools/convert_from_pytorch.py --checkpoint=model.safetensors --out=DIR
      [--opendwm_config=model.json] [--config=configs/maskgwm_long.py] [--source=opendwm|sd3]
      [--ignore=key1,key2] [--prefix=transformer.] [--time_modulation]

--checkpoint: .safetensors, a sharded checkpoint's NAME.safetensors.index.json or the folder
holding it (a diffusers folder; a folder without an index: every .safetensors in it), read tensor by
tensor without torch; or .pth/.pt/.bin/.ckpt, read with torch.load(weights_only=True) (the torch
extra).
The model config: --config (a wm_jax config file) gives the run-time fields and, without
--opendwm_config, the architecture; --opendwm_config (OpenDWM's model config JSON, e.g. the one
tools/convert_to_pytorch.py writes) replaces the architecture fields. Default base config:
configs/maskgwm_long.py.
--source=opendwm is strict: a missing key, an unexpected key, a wrong shape, an integer array for
a float parameter or NaN / Inf values are refused with the list of them (name keys to skip with
--ignore); an OpenDWM option wm_jax does not implement (e.g. merge_strategy='fixed', mask tokens
with target ['noise', 'learnable']) is refused naming the key and value, and a truncated or
foreign checkpoint file naming the file. --source=sd3 reads a diffusers
SD3Transformer2DModel: the backbone loads, the video/camera/layout/mask parts keep their init
(only then; by default everything must be present).
--time_modulation adds the paper-only Eq. 5 layers at their zero init (OpenDWM has none).
Writes DIR as a training run at step 0 (DIR/checkpoints/0/{state,data,config}: the converted
weights, a fresh optimizer state, the config): `python -m wm_jax.main --workdir=DIR` trains on from
it, and evaluate --checkpoint=DIR, --mode=sample and tools/convert_to_pytorch.py read it.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.convert import from_torch, opendwm_config  # noqa: E402
from wm_jax.train import checkpoint as ckpt_lib  # noqa: E402
from wm_jax.train import run as run_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.safetensors, its index or folder, or .pth)")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_string("opendwm_config", None, "OpenDWM model config JSON (architecture)")
flags.DEFINE_string("config", "configs/maskgwm_long.py", "wm_jax config file (configs/NAME.py[:arg])")
flags.DEFINE_enum("source", "opendwm", ["opendwm", "sd3"], "checkpoint kind")
flags.DEFINE_list("ignore", [], "PyTorch keys to skip on either side (they keep their init)")
flags.DEFINE_string("prefix", "", "strip this key prefix first (e.g. 'transformer.')")
flags.DEFINE_bool("time_modulation", False, "add the paper-only Eq. 5 layers (zero init)")
flags.DEFINE_integer("seed", 0, "init seed for parts the checkpoint does not carry")


def main(argv):
  del argv
  if not FLAGS.checkpoint or not FLAGS.out:
    raise app.UsageError("--checkpoint and --out are required")
  config = defaults.load_file(FLAGS.config)
  try:
    if FLAGS.opendwm_config:
      with open(FLAGS.opendwm_config) as f:
        opendwm = json.load(f)
      config.model, config.mask = opendwm_config.from_opendwm(opendwm, config.model, config.mask)
    config.model.time_modulation = bool(FLAGS.time_modulation)
    config.train.seed = FLAGS.seed
    print(f"[convert] reading {FLAGS.checkpoint}", flush=True)
    sd = from_torch.strip_prefix(from_torch.read_torch_checkpoint(FLAGS.checkpoint), FLAGS.prefix)
    print(f"[convert] {len(sd)} tensors; checking them against the model of the config",
          flush=True)
    build = run_lib.model_factory(config)
    state = from_torch.convert_state_dict(sd, nnx.eval_shape(build), source=FLAGS.source,
                                          ignore=FLAGS.ignore, init=build)
  except (ValueError, FileNotFoundError, ImportError) as e:
    # ConversionError, CheckpointFileError, options wm_jax lacks, bad JSON, a missing file or
    # shard, a .pth without torch
    where = f"{FLAGS.opendwm_config}: " if isinstance(e, json.JSONDecodeError) else ""
    print(f"[convert] refused: {where}{e}", file=sys.stderr)
    sys.exit(2)
  run = run_lib.build(config, donate=False, training=False)
  fresh = run.init_state()
  params = nnx.filter_state(state, nnx.Param)
  rest = nnx.filter_state(state, nnx.Not(nnx.Param))
  train_state = fresh.replace(params=params, rest=rest, ema=params if run.ema else None)
  manager = ckpt_lib.make_manager(FLAGS.out, config.checkpoint)
  ckpt_lib.save(manager, 0, train_state, {}, config, force=True)
  manager.wait_until_finished()
  manager.close()
  print(f"[convert] wrote step 0 of a training run to {ckpt_lib.directory(FLAGS.out)}", flush=True)


if __name__ == "__main__":
  app.run(main)
