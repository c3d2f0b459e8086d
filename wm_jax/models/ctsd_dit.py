"""CTSDDiT: the spatio-temporal cross-view MMDiT of MaskGWM / OpenDWM (CTSD-3.5), channels last.

    model = CTSDDiT(config.model, config.mask, rngs=nnx.Rngs(0))
    v = model(latents [B,T,V,h,w,C], tau [B,T,V], context=[B,T,V,L,Dj], pooled=[B,T,V,P], ...)

Per (frame, view) image: patch embedding + cropped 2-D sin-cos positions, SD3 conditioning
vector from tau*1000 and pooled text, MMDiT joint blocks with the (context-embedded) text. After
joint block i: a temporal block if i in temporal_block_layers, then a row-wise cross-view block if
i in crossview_block_layers (each with its frame/view index MLP, the camera embedding, and an
AlphaBlender). The layout adapter's residual j is added before joint block j. Output:
AdaLayerNormContinuous, proj_out, unpatchify -> velocity [B,T,V,h,w,C] (dtype of latents).

Mask reconstruction (training only, row_mask + noise given): tokens are gathered to the K kept
columns of every row after the patch embedding (layout residuals with the same indices); joint,
temporal and cross-view blocks before the last `decode_layers` joint blocks run at width K (the
temporal attention over kept tokens is the paper's shifted temporal attention, cross-view rows have
V*K tokens); the MaskModule rebuilds full width W; the decoder blocks run at width W. Without a
row_mask the mask module is skipped and the model equals one built without it.

return_features=True also returns a dict: 'encoder' (hidden state entering the first decoder block,
before reconstruction: width K on the masked path, W otherwise), 'reconstructed' (the same point
after the mask module, full width [B,T,V,h,W,D]; equal to 'encoder' without a row_mask) -- both
only when the model has a mask module -- and 'final' (before norm_out).

remat_policy (per joint / temporal / cross-view block and the mask module, nnx.remat): 'none',
'full' (save nothing), 'dots_saveable', 'dots_with_no_batch_dims_saveable' (jax.checkpoint_policies
of the same names), 'narrow_dots_saveable' (save_narrowing_dots: weight matmuls except the MLP
up-projections).

scan_layers=True stores runs of identical layers stacked under `layer_runs` and applies each run
with nnx.scan (wm_jax.models.scan: which runs, and how their paths map to the canonical names);
the function computed is the same. Conversion and OpenDWM keys always use the canonical names.

Parameter paths joined with '.' are OpenDWM's state_dict keys (wm_jax.convert.param_map);
PAPER_ONLY_PARAMS lists the patterns of the parameters MaskGWM's paper adds (Eq. 5).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.models import conditioning, layers, scan
from wm_jax.models.conditioning import VAE_FACTOR
from wm_jax.models.embeddings import (MLPEmbedding, PatchEmbed, TimestepTextEmbedding,
                                      TIMESTEP_CHANNELS, sinusoidal)
from wm_jax.models.layout_adapter import ImageAdapter
from wm_jax.models.mmdit import AdaLayerNormContinuous, JointTransformerBlock
from wm_jax.models.video_blocks import (AlphaBlender, CROSSVIEW_TYPES, TEMPORAL_TYPES,
                                        VTSelfAttentionBlock, crossview_step, temporal_step)
from wm_jax.parallel.shard import constrain

# Parameters the paper adds and OpenDWM lacks (regex over PyTorch-style keys).
PAPER_ONLY_PARAMS = (r"temporal_transformer_blocks\.\d+\.time_modulation\.linear\.(weight|bias)",)


def save_narrowing_dots(prim, *avals, **params) -> bool:
  """Remat policy: save the weight matmuls (dots without batch dims) whose output is no wider than
  their contraction -- the q/k/v/out projections, the MLP down-projections -- and recompute the
  widening ones (the MLP up-projections, D -> 4D or 8D: a block's largest activations) and the
  attention logits. Assumes activations on the left of the dot, as nnx.Linear puts them."""
  if prim is not jax.lax.dot_general_p or len(avals) < 2 or "dimension_numbers" not in params:
    return False  # anything else (or a call this policy does not understand) is recomputed
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
  if lhs_batch or rhs_batch:
    return False
  lhs, rhs = avals[:2]
  contracted = math.prod(lhs.shape[i] for i in lhs_contract)
  out_features = math.prod(d for i, d in enumerate(rhs.shape) if i not in rhs_contract)
  return out_features <= contracted


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "narrow_dots_saveable": save_narrowing_dots,
}

def _check_config(cfg):
  if cfg.temporal_attention_type not in TEMPORAL_TYPES:
    raise ValueError(f"temporal_attention_type must be one of {TEMPORAL_TYPES}, got "
                     f"{cfg.temporal_attention_type!r}")
  if cfg.crossview_attention_type not in CROSSVIEW_TYPES:
    raise ValueError(f"crossview_attention_type must be one of {CROSSVIEW_TYPES}, got "
                     f"{cfg.crossview_attention_type!r}")
  if cfg.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got "
                     f"{cfg.remat_policy!r}")
  if cfg.camera_scalars not in conditioning.CAMERA_SCALAR_COUNTS:
    raise ValueError(f"camera_scalars must be one of {conditioning.CAMERA_SCALAR_COUNTS}, got "
                     f"{cfg.camera_scalars}")
  for name in ("latent_height", "latent_width"):
    if cfg[name] % cfg.patch_size:
      raise ValueError(f"{name}={cfg[name]} is not divisible by patch_size={cfg.patch_size}")
  for name in ("temporal_block_layers", "crossview_block_layers", "dual_attention_layers"):
    bad = [i for i in cfg[name] if not 0 <= i < cfg.num_layers]
    if bad:
      raise ValueError(f"{name} has layers {bad} outside 0..{cfg.num_layers - 1}")


def _mask_enabled(mask_config) -> bool:
  return mask_config is not None and bool(mask_config.get("enabled", False))


class CTSDDiT(nnx.Module):

  def __init__(self, model_config, mask_config=None, *, rngs: nnx.Rngs):
    cfg = model_config
    _check_config(cfg)
    rngs = layers.KeyStream(rngs)
    self.cfg = _Static(cfg)
    prec = layers.Precision.from_config(cfg)
    self.prec = prec
    dim = cfg.num_heads * cfg.head_dim
    self.dim = dim
    impl = cfg.get("attention_impl", "auto")
    self.temporal_layers = tuple(int(i) for i in cfg.temporal_block_layers)
    self.crossview_layers = tuple(int(i) for i in cfg.crossview_block_layers)

    self.pos_embed = PatchEmbed(cfg.in_channels, dim, cfg.patch_size, cfg.pos_embed_max_size,
                                cfg.get("sample_size", 128) // cfg.patch_size, rngs=rngs,
                                prec=prec)
    self.time_text_embed = TimestepTextEmbedding(dim, cfg.pooled_projection_dim, rngs=rngs,
                                                 prec=prec)
    self.context_embedder = layers.linear(cfg.joint_attention_dim, dim, (None, "embed"),
                                          rngs=rngs, prec=prec)
    self.decode_layers, self.kept_width = 0, None
    if _mask_enabled(mask_config):
      from wm_jax.models import masking
      self.kept_width = masking.kept_width(cfg.latent_width // cfg.patch_size,
                                           float(mask_config.ratio))
      self.decode_layers = int(mask_config.decode_layers)
      if not 0 < self.decode_layers < cfg.num_layers:
        raise ValueError(f"mask decode_layers={self.decode_layers} must be in "
                         f"1..{cfg.num_layers - 1} for {cfg.num_layers} joint blocks")
    adapter = cfg.get("layout_adapter", None)
    self.runs = None
    if cfg.get("scan_layers", False):
      # layout residuals are not part of a signature: a run that has some gets zeros elsewhere
      signatures = [(i in tuple(cfg.dual_attention_layers), i == cfg.num_layers - 1,
                     i in self.temporal_layers, i in self.crossview_layers)
                    for i in range(cfg.num_layers)]
      first_decoder = cfg.num_layers - self.decode_layers
      self.runs = scan.layer_runs(signatures, boundaries=(first_decoder,) * bool(self.decode_layers))
    joint_block = lambda i, keys: JointTransformerBlock(
        dim, cfg.num_heads, cfg.head_dim, rngs=keys, prec=prec,
        context_pre_only=i == cfg.num_layers - 1, dual_attention=i in tuple(cfg.dual_attention_layers),
        qk_norm=cfg.qk_norm, impl=impl)
    if self.runs is None:
      self.transformer_blocks = nnx.List([joint_block(i, rngs) for i in range(cfg.num_layers)])
    self.norm_out = AdaLayerNormContinuous(dim, dim, rngs=rngs, prec=prec)
    self.proj_out = layers.linear(dim, cfg.patch_size ** 2 * cfg.out_channels, ("embed", None),
                                  rngs=rngs, prec=prec)

    image_adapter = None
    if adapter is not None:
      downs = sum(bool(d) for d in adapter.is_downblocks)
      if adapter.downscale_factor * 2 ** downs != VAE_FACTOR * cfg.patch_size:
        grid = adapter.downscale_factor * 2 ** downs
        raise ValueError(f"layout adapter: downscale_factor={adapter.downscale_factor} with "
                         f"{downs} downblocks gives a grid 1/{grid} of the image, but the token "
                         f"grid is 1/{VAE_FACTOR * cfg.patch_size}")
      if any(c != dim for c in adapter.channels):
        raise ValueError(f"layout adapter channels {list(adapter.channels)} must all equal the "
                         f"model width {dim}")
      if len(adapter.channels) > cfg.num_layers:
        raise ValueError(f"layout adapter has {len(adapter.channels)} residuals for "
                         f"{cfg.num_layers} joint blocks")
      image_adapter = ImageAdapter(
          adapter.in_channels, adapter.channels, adapter.is_downblocks, adapter.num_res_blocks,
          adapter.downscale_factor, adapter.get("use_zero_convs", True), rngs=rngs, prec=prec)
    self.condition_image_adapter = image_adapter

    self.view_embedding = (MLPEmbedding(cfg.camera_scalars * TIMESTEP_CHANNELS, dim, dim,
                                        rngs=rngs, prec=prec) if cfg.camera_scalars else None)

    video_block = lambda keys, **kw: VTSelfAttentionBlock(
        dim, cfg.num_heads, cfg.head_dim, rngs=keys, prec=prec, qk_norm=cfg.qk_norm, impl=impl, **kw)
    index_mlp = lambda keys: MLPEmbedding(dim, 4 * dim, dim, rngs=keys, prec=prec,
                                          axes=("embed", "mlp", "embed"))
    mixer = lambda: AlphaBlender(cfg.merge_factor, prec=prec)
    time_modulation = cfg.get("time_modulation", True)
    if self.runs is not None:
      def layer(i, keys):
        temporal = crossview = None
        if i in self.crossview_layers:
          crossview = (index_mlp(keys), video_block(keys), mixer())
        if i in self.temporal_layers:
          temporal = (index_mlp(keys), video_block(keys, time_modulation=time_modulation), mixer())
        return ScannedLayer(joint_block(i, keys), temporal, crossview)

      def stacked(i, repeats):
        make = nnx.vmap(lambda key: layer(i, layers.KeyStream.from_key(key)), in_axes=0,
                        out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        return make(jax.random.split(rngs.params(), repeats))

      self.layer_runs = nnx.List([
          nnx.List([stacked(run.start + k, run.repeats) for k in range(run.period)])
          for run in self.runs])
    else:
      if self.crossview_layers:
        self.view_pos_embeds = nnx.List([index_mlp(rngs) for _ in self.crossview_layers])
        self.crossview_transformer_blocks = nnx.List([video_block(rngs)
                                                      for _ in self.crossview_layers])
        self.view_mixers = nnx.List([mixer() for _ in self.crossview_layers])
      if self.temporal_layers:
        self.time_pos_embeds = nnx.List([index_mlp(rngs) for _ in self.temporal_layers])
        self.temporal_transformer_blocks = nnx.List([
            video_block(rngs, time_modulation=time_modulation) for _ in self.temporal_layers])
        self.time_mixers = nnx.List([mixer() for _ in self.temporal_layers])

    mask_module = None
    if _mask_enabled(mask_config):
      from wm_jax.models import mask_reconstruction  # the mask helper's module
      mask_module = mask_reconstruction.MaskModule(
          dim, cfg.num_heads, cfg.head_dim, cfg.in_channels, cfg.patch_size, mask_config,
          rngs=rngs, attention_impl=impl, dtype=prec.dtype, param_dtype=prec.param_dtype)
    self.mask_module = mask_module

  # ---------------------------------------------------------------------------------------------
  def _remat(self, fn):
    policy_name = self.cfg.remat_policy
    if policy_name == "none":
      return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[policy_name])

  def __call__(self, latents, timesteps, context=None, pooled=None, camera=None, layout=None,
               view_adjacency=None, disable_temporal=None, disable_crossview=None, row_mask=None,
               noise=None, return_features: bool = False):
    cfg = self.cfg
    self._check_inputs(latents, timesteps, context, pooled, camera, layout, view_adjacency,
                       disable_temporal, disable_crossview, row_mask, noise)
    out_dtype = latents.dtype
    dtype = self.prec.dtype or jnp.result_type(latents.dtype, jnp.float32)
    b, t, v, hl, wl, c = latents.shape
    p, dim = cfg.patch_size, self.dim
    h, w = hl // p, wl // p
    n = b * t * v
    if context is None:
      context = jnp.zeros((b, t, v, cfg.text_tokens, cfg.joint_attention_dim), dtype)
    if pooled is None:
      pooled = jnp.zeros((b, t, v, cfg.pooled_projection_dim), dtype)

    x = self.pos_embed(latents.reshape(n, hl, wl, c).astype(dtype)).reshape(b, t, v, h, w, dim)
    ctx0 = self.context_embedder(context.reshape(n, *context.shape[3:]).astype(dtype))
    temb, t_only = self.time_text_embed(timesteps.reshape(n).astype(jnp.float32),
                                        pooled.reshape(n, -1).astype(dtype), dtype=dtype)
    temb_btv = temb.reshape(b, t, v, dim)
    t_only = t_only.reshape(b, t, v, dim)
    cam_emb = None
    if camera is not None and self.view_embedding is not None:
      cam_in = sinusoidal(camera.astype(jnp.float32), TIMESTEP_CHANNELS).reshape(b, t, v, -1)
      cam_emb = self.view_embedding(cam_in.astype(dtype))
    residuals = []
    if layout is not None and self.condition_image_adapter is not None:
      residuals = self.condition_image_adapter(layout.astype(dtype))

    masked = row_mask is not None
    first_decoder = cfg.num_layers - self.decode_layers  # == num_layers without a mask module
    if masked:
      from wm_jax.models import masking
      x = masking.gather_rows(x, row_mask)
      residuals = [masking.gather_rows(r, row_mask) if i < first_decoder else r
                   for i, r in enumerate(residuals)]

    frame_index = sinusoidal(jnp.arange(t), dim)
    view_index = sinusoidal(jnp.arange(v), dim)
    # nnx.remat takes positional arguments only
    joint = self._remat(lambda blk, xs, cs, te: blk(xs, cs, te))
    kind = cfg.temporal_attention_type
    temporal = self._remat(
        lambda blk, mix, pos, xs, idx, cam, te, dis: temporal_step(
            blk, mix, pos, xs, kind=kind, index_emb=idx, cond_emb=cam, time_emb=te, disabled=dis))
    crossview = self._remat(
        lambda blk, mix, pos, xs, idx, cam, adj, dis: crossview_step(
            blk, mix, pos, xs, index_emb=idx, cond_emb=cam, view_adjacency=adj, disabled=dis))
    def layer(joint_block, temporal_parts, crossview_parts, x, ctx, residual):
      """Joint block (+ temporal, + cross-view) on x [B,T,V,h,w',D]; returns (x, context)."""
      if residual is not None:
        x = x + residual.astype(x.dtype)
      width = x.shape[4]
      new_ctx, xs = joint(joint_block, x.reshape(n, h * width, dim), ctx, temb)
      x = xs.reshape(b, t, v, h, width, dim)
      if temporal_parts is not None:
        pos, block, mix = temporal_parts
        x = temporal(block, mix, pos, x, frame_index, cam_emb, t_only, disable_temporal)
      if crossview_parts is not None:
        pos, block, mix = crossview_parts
        x = crossview(block, mix, pos, x, view_index, cam_emb, view_adjacency, disable_crossview)
      x = constrain(x, ("activation_batch", None, None, None, None, "activation_embed"))
      # the last block (context_pre_only) returns no context: keep the carry's structure
      return x, (ctx if new_ctx is None else new_ctx)

    feats = {}

    def enter_decoder(x):
      feats["encoder"] = x
      if masked:  # under the blocks' remat policy too: its side blocks run at full width
        x = self._remat(lambda module, *args: module(*args))(
            self.mask_module, x, row_mask, noise.astype(dtype), timesteps.astype(jnp.float32),
            temb_btv, ctx0.reshape(b, t, v, *ctx0.shape[1:]), self.pos_embed.cropped(h, w).astype(dtype))
      feats["reconstructed"] = x
      return x

    ctx = ctx0
    if self.runs is None:
      for i, block in enumerate(self.transformer_blocks):
        if i == first_decoder:
          x = enter_decoder(x)
        x, ctx = layer(block, self._video_parts(i, "temporal"), self._video_parts(i, "crossview"),
                       x, ctx, residuals[i] if i < len(residuals) else None)
    else:
      for run, units in zip(self.runs, self.layer_runs):
        if run.start == first_decoder:
          x = enter_decoder(x)
        res = None
        if run.start < len(residuals):  # zeros (x + 0 == x) where a layer of the run has none
          pad = lambda i: residuals[i] if i < len(residuals) else jnp.zeros(x.shape, x.dtype)
          res = jnp.stack([jnp.stack([pad(run.layer(r, k)) for k in range(run.period)])
                           for r in range(run.repeats)])

        def step(carry, units, res_r):
          x, ctx = carry
          for k, unit in enumerate(units):
            x, ctx = layer(unit.joint, unit.parts("temporal"), unit.parts("crossview"), x, ctx,
                           None if res_r is None else res_r[k])
          return x, ctx

        x, ctx = nnx.scan(step, in_axes=(nnx.Carry, 0, 0 if res is not None else None),
                          out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: None}
                          )((x, ctx), units, res)
    feats["final"] = x
    y = self.proj_out(self.norm_out(x.reshape(n, h * w, dim), temb))
    y = y.reshape(b, t, v, h, w, p, p, cfg.out_channels)
    y = y.transpose(0, 1, 2, 3, 5, 4, 6, 7).reshape(b, t, v, hl, wl, cfg.out_channels)
    y = y.astype(out_dtype)
    return (y, feats) if return_features else y

  def _video_parts(self, i: int, kind: str):
    """(index MLP, block, mixer) of the temporal / cross-view block after joint block i, or None
    (unscanned layout: the canonical lists of scan.FIELDS)."""
    layer_list = self.temporal_layers if kind == "temporal" else self.crossview_layers
    if i not in layer_list:
      return None
    j = layer_list.index(i)
    return tuple(getattr(self, scan.FIELDS[field][0])[j] for field in scan.PARTS[kind])

  # ---------------------------------------------------------------------------------------------
  def _check_inputs(self, latents, timesteps, context, pooled, camera, layout, view_adjacency,
                    disable_temporal, disable_crossview, row_mask, noise):
    cfg = self.cfg
    if latents.ndim != 6:
      raise ValueError(f"latents must be [B,T,V,h,w,C] (rank 6), got shape {tuple(latents.shape)}")
    b, t, v, hl, wl, c = latents.shape
    want = {"frames (T)": (t, cfg.num_frames), "views (V)": (v, cfg.num_views),
            "latent height": (hl, cfg.latent_height), "latent width": (wl, cfg.latent_width),
            "latent channels": (c, cfg.in_channels)}
    for name, (got, expected) in want.items():
      if got != expected:
        raise ValueError(f"latents {tuple(latents.shape)}: {name} is {got}, the model config "
                         f"says {expected}")
    if hl % cfg.patch_size or wl % cfg.patch_size:
      raise ValueError(f"latent size {hl}x{wl} is not divisible by patch_size={cfg.patch_size}")
    lead = (b, t, v)
    if tuple(timesteps.shape) != lead:
      raise ValueError(f"timesteps must be [B,T,V]={lead}, got shape {tuple(timesteps.shape)}")
    if not isinstance(timesteps, jax.core.Tracer):
      tau = np.asarray(timesteps, np.float32)
      if not np.all((tau >= 0) & (tau <= 1)):
        bad = tau[~((tau >= 0) & (tau <= 1))]
        raise ValueError(f"timesteps must lie in [0, 1]; got values such as {bad.ravel()[:4]}")
    shapes = {
        "context": (context, lead + (None, cfg.joint_attention_dim)),
        "pooled": (pooled, lead + (cfg.pooled_projection_dim,)),
        "camera": (camera, lead + (cfg.camera_scalars,)),
        "layout": (layout, lead + (hl * VAE_FACTOR, wl * VAE_FACTOR, None)),
        "view_adjacency": (view_adjacency, (b, v, v)),
        "disable_temporal": (disable_temporal, (b,)),
        "disable_crossview": (disable_crossview, (b,)),
        "noise": (noise, tuple(latents.shape)),
    }
    if self.condition_image_adapter is not None:
      shapes["layout"] = (layout, lead + (hl * VAE_FACTOR, wl * VAE_FACTOR,
                                          cfg.layout_adapter.in_channels))
    for name, (value, expected) in shapes.items():
      if value is None:
        continue
      got = tuple(value.shape)
      if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {shown}, got {got}")
    if camera is not None and self.view_embedding is None:
      raise ValueError("camera scalars given, but the model config has camera_scalars=0")
    if layout is not None and self.condition_image_adapter is None:
      raise ValueError("layout given, but the model config has no layout_adapter")
    if (row_mask is None) != (noise is None):
      raise ValueError("the mask-reconstruction path needs both row_mask and noise; got "
                       f"row_mask={'set' if row_mask is not None else None}, "
                       f"noise={'set' if noise is not None else None}")
    if row_mask is not None:
      if self.mask_module is None:
        raise ValueError("row_mask given, but the model was built without a mask module "
                         "(mask_config.enabled is False)")
      want_idx = (b, t, v, hl // cfg.patch_size, self.kept_width)
      if tuple(row_mask.keep_idx.shape) != want_idx:
        raise ValueError(f"row_mask.keep_idx must have shape {want_idx}, got "
                         f"{tuple(row_mask.keep_idx.shape)}")


class ScannedLayer(nnx.Module):
  """One layer of a scanned run: joint block i and the temporal / cross-view parts after it.

  Its attribute names are wm_jax.models.scan.FIELDS (the conversion to canonical names)."""

  def __init__(self, joint, temporal=None, crossview=None):
    self.joint = joint
    self.time_pos_embed, self.temporal, self.time_mixer = temporal or (None, None, None)
    self.view_pos_embed, self.crossview, self.view_mixer = crossview or (None, None, None)

  def parts(self, kind: str):
    """(index MLP, block, mixer) for kind 'temporal' or 'crossview', or None."""
    pos, block, mixer = (getattr(self, field) for field in scan.PARTS[kind])
    return None if block is None else (pos, block, mixer)


class _Static:
  """Read-only plain-Python copy of a ConfigDict (NNX modules should not hold ConfigDicts)."""

  def __init__(self, cfg):
    self._d = {k: _freeze(val) for k, val in cfg.items()}

  def __getattr__(self, name):
    try:
      return self.__dict__["_d"][name]
    except KeyError:
      raise AttributeError(name) from None

  def __getitem__(self, name):
    return self._d[name]

  def get(self, name, default=None):
    return self._d.get(name, default)

  def items(self):
    return self._d.items()

  def __eq__(self, other):
    return isinstance(other, _Static) and self._d == other._d

  def __hash__(self):
    return hash(tuple(sorted(self._d.items())))


def _freeze(value: Any):
  if hasattr(value, "items"):
    return _Static(value)
  if isinstance(value, list):
    return tuple(value)
  return value
