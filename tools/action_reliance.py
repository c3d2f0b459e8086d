"""Does a trained demo model read its actions? Its loss on training clips with the true actions,
with the actions shuffled across clips and with none (wm_jax.evaluation.action_reliance), as one
JSON line.

  python tools/action_reliance.py WORKDIR [--clips=32] [--seeds=6] [--batch=8] [--ref_frames=2]

WORKDIR is a demo's (bash tools/demo.sh WORKDIR): its dit/ checkpoint, vae/ and data config. The
clips are the first `clips` training clips of that run, steering takeovers included, as rendered
for training.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from wm_jax.evaluation import action_reliance, protocols  # noqa: E402
from wm_jax.train import demo, run as run_lib, vae_training  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir")
  p.add_argument("--clips", type=int, default=32)
  p.add_argument("--seeds", type=int, default=6, help="noise draws per batch of clips")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--ref_frames", type=int, default=2)
  args = p.parse_args(argv)
  run, model, info = run_lib.restore(os.path.join(args.workdir, "dit"))
  config = run.config
  vae = vae_training.load(config, os.path.join(args.workdir, "vae"))
  frames = int(config.model.num_frames)
  clips = demo.render(config, "train", args.clips, frames)
  records = demo.encode_clips(vae, clips, protocols.get("controllability"))
  batch = demo.stack(records, frames)
  per_batch = []
  for lo in range(0, args.clips, args.batch):
    part = {k: v[lo:lo + args.batch] for k, v in batch.items()}
    per_batch.append(action_reliance.action_reliance(
        model, config, part, seeds=range(args.seeds), n_ref=args.ref_frames))
  diffs = {name: [r[f"{name}_minus_true"]["mean"] for r in per_batch]
           for name in ("shuffled", "none")}
  out = {"workdir": os.path.abspath(args.workdir), "step": int(info["step"]),
         "clips": args.clips, "seeds": args.seeds, "ref_frames": args.ref_frames,
         **{name: float(np.mean([r[name] for r in per_batch]))
            for name in ("true", "shuffled", "none")},
         **{f"{name}_minus_true": {"mean": float(np.mean(d)),
                                   "se_over_batches": float(np.std(d, ddof=1) / np.sqrt(len(d)))
                                   if len(d) > 1 else None}
            for name, d in diffs.items()}}
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
