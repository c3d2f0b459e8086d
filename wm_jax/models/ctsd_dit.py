"""CTSDDiT: the spatio-temporal cross-view MMDiT of MaskGWM / OpenDWM (CTSD-3.5), channels last.

    model = CTSDDiT(config.model, config.mask, rngs=nnx.Rngs(0))
    cond = conditioning.model_inputs(batch, config)          # a conditioning.Conditioning
    v = model(latents [B,T,V,h,w,C], tau [B,T,V], cond)
    v, feats = model(latents, tau, cond, row_mask=mask, noise=eps, return_features=True)

Per (frame, view) image: patch embedding + cropped 2-D sin-cos positions, SD3 conditioning
vector from tau*1000 and pooled text, then the layer stack. Layer i (class Layer) is MMDiT joint
block i with the (context-embedded) text, then a temporal block if i in temporal_block_layers,
then a row-wise cross-view block if i in crossview_block_layers (each with its frame/view index
MLP, the camera embedding, and an AlphaBlender). The layout adapter's residual j is added before
layer j. Output: AdaLayerNormContinuous, proj_out, unpatchify -> velocity [B,T,V,h,w,C] (dtype of
latents).

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

Unscanned (scan_layers=False), the parts of the layers live in OpenDWM's lists
(transformer_blocks, temporal_transformer_blocks, time_mixers, ...; scan.FIELDS) and `layer(i)`
assembles Layer i from them; the stack applies the layers one by one. scan_layers=True stores
runs of identical layers as stacked Layers under `layer_runs` and applies each run with nnx.scan
(wm_jax.models.scan: which runs, and how their paths map to the canonical names); the function
computed is the same. Conversion and OpenDWM keys always use the canonical names.

Action module (model.action_module, wm_jax.models.action_module): `action_embedding` turns
cond.actions (+ cond.action_keep) into [B,T,2D] once per forward; every temporal block's
`action_attn` cross-attends from each (frame, view) image to that frame's text context (zeros
without text) with the action embedding added to its keys and values. cond.actions None is the
action-free mode (the cross-attention still sees the text). Its parameters draw their initial
values from a key stream of their own, so the other parameters of a seed are those of the model
without the module, and its output projections start at zero: at init the output is exactly that
model's.

Parameter paths joined with '.' are OpenDWM's state_dict keys (wm_jax.convert.param_map);
PAPER_ONLY_PARAMS lists the patterns of the parameters MaskGWM's paper adds (Eq. 5),
ACTION_PARAMS those of the action module (OpenDWM has neither), ACTION_OUTPUT_PARAMS the
zero-initialised output projections that decide whether the action module changes the output.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.models import action_module, conditioning, layers, mask_reconstruction, masking, scan
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
# The action module's parameters (OpenDWM has no action module), and among them the output
# projections: while these are zero the module adds exactly nothing.
ACTION_PARAMS = (r"action_embedding\..*", r"temporal_transformer_blocks\.\d+\.action_attn\..*")
ACTION_OUTPUT_PARAMS = (r"temporal_transformer_blocks\.\d+\.action_attn\.to_out\.0\.(weight|bias)",)


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

def _check_config(cfg, mask_config):
  """ValueError naming the field for a model config (and enabled mask config, or None) that
  CTSDDiT cannot build."""
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
  if cfg.action_module is not None:
    action_module.check_config(cfg.action_module)
  for name in ("latent_height", "latent_width"):
    if cfg[name] % cfg.patch_size:
      raise ValueError(f"{name}={cfg[name]} is not divisible by patch_size={cfg.patch_size}")
  for name in ("temporal_block_layers", "crossview_block_layers", "dual_attention_layers"):
    bad = [i for i in cfg[name] if not 0 <= i < cfg.num_layers]
    if bad:
      raise ValueError(f"{name} has layers {bad} outside 0..{cfg.num_layers - 1}")
  adapter = cfg.layout_adapter
  if adapter is not None:
    dim = cfg.num_heads * cfg.head_dim
    downs = sum(bool(d) for d in adapter.is_downblocks)
    grid = adapter.downscale_factor * 2 ** downs
    if grid != VAE_FACTOR * cfg.patch_size:
      raise ValueError(f"layout adapter: downscale_factor={adapter.downscale_factor} with "
                       f"{downs} downblocks gives a grid 1/{grid} of the image, but the token "
                       f"grid is 1/{VAE_FACTOR * cfg.patch_size}")
    if any(c != dim for c in adapter.channels):
      raise ValueError(f"layout adapter channels {list(adapter.channels)} must all equal the "
                       f"model width {dim}")
    if len(adapter.channels) > cfg.num_layers:
      raise ValueError(f"layout adapter has {len(adapter.channels)} residuals for "
                       f"{cfg.num_layers} joint blocks")
  if mask_config is not None:
    decode = int(mask_config.decode_layers)
    if not 0 < decode < cfg.num_layers:
      raise ValueError(f"mask decode_layers={decode} must be in 1..{cfg.num_layers - 1} for "
                       f"{cfg.num_layers} joint blocks")


def _remat(fn, policy_name: str):
  """fn under nnx.remat with the named policy (fn itself for 'none'); fn takes positional
  arguments only."""
  if policy_name == "none":
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[policy_name])


# hidden states [B, T, V, h, w, D] between layers
LAYER_AXES = ("activation_batch", None, None, None, None, "activation_embed")
# the video kinds in the order their parts are created (the order fixes the initial values)
KINDS = ("crossview", "temporal")


class LayerInputs(NamedTuple):
  """What every layer reads besides its hidden state and context; built once per forward."""
  temb: jax.Array                # [N, D] conditioning vector (N = B*T*V)
  time_emb: jax.Array            # [B, T, V, D] its timestep part (the temporal blocks' Eq. 5)
  camera: jax.Array | None       # [B, T, V, D] camera embedding
  frame_index: jax.Array         # [T, D] sinusoidal frame indices
  view_index: jax.Array          # [V, D] sinusoidal view indices
  view_adjacency: jax.Array | None
  disable_temporal: jax.Array | None
  disable_crossview: jax.Array | None
  temporal_kind: str             # temporal_attention_type
  remat_policy: str              # REMAT_POLICIES key, applied per block
  frame_context: jax.Array | None = None  # [B, T, V, L, Dj] text context (with an action module)
  action_kv: jax.Array | None = None      # [B, T, 2D] action embedding (None: no actions)


class Layer(nnx.Module):
  """Layer i of the stack: joint block i, then the temporal block after it (if i is in
  temporal_block_layers), then the row-wise cross-view block (if i is in crossview_block_layers).

  Attribute names are scan.FIELDS, the parts of a video block scan.PARTS (index MLP, block,
  AlphaBlender); absent parts are None. A scanned model stores stacked Layers; an unscanned one
  stores the parts in OpenDWM's lists and assembles a Layer per call (CTSDDiT.layer).
  """

  def __init__(self, joint, *, time_pos_embed=None, temporal=None, time_mixer=None,
               view_pos_embed=None, crossview=None, view_mixer=None):
    self.joint = joint
    self.time_pos_embed, self.temporal, self.time_mixer = time_pos_embed, temporal, time_mixer
    self.view_pos_embed, self.crossview, self.view_mixer = view_pos_embed, crossview, view_mixer

  def __call__(self, x, ctx, residual, side: LayerInputs):
    """x [B,T,V,h,w',D] (w' = K on the masked encoder path), ctx [N,L,D], residual (layout
    adapter) like x or None -> (x, ctx). The last joint block returns no context: ctx is kept."""
    if residual is not None:
      x = x + residual.astype(x.dtype)
    b, t, v, h, w, dim = x.shape
    joint = _remat(lambda blk, xs, cs, te: blk(xs, cs, te), side.remat_policy)
    new_ctx, xs = joint(self.joint, x.reshape(b * t * v, h * w, dim), ctx, side.temb)
    x = xs.reshape(b, t, v, h, w, dim)
    if self.temporal is not None:
      kind = side.temporal_kind
      temporal = _remat(
          lambda blk, mix, pos, xs, idx, cam, te, dis, fctx, akv: temporal_step(
              blk, mix, pos, xs, kind=kind, index_emb=idx, cond_emb=cam, time_emb=te,
              disabled=dis, frame_context=fctx, action_kv=akv), side.remat_policy)
      x = temporal(self.temporal, self.time_mixer, self.time_pos_embed, x, side.frame_index,
                   side.camera, side.time_emb, side.disable_temporal, side.frame_context,
                   side.action_kv)
    if self.crossview is not None:
      crossview = _remat(
          lambda blk, mix, pos, xs, idx, cam, adj, dis: crossview_step(
              blk, mix, pos, xs, index_emb=idx, cond_emb=cam, view_adjacency=adj, disabled=dis),
          side.remat_policy)
      x = crossview(self.crossview, self.view_mixer, self.view_pos_embed, x, side.view_index,
                    side.camera, side.view_adjacency, side.disable_crossview)
    x = constrain(x, LAYER_AXES)
    return x, (ctx if new_ctx is None else new_ctx)


class CTSDDiT(nnx.Module):

  def __init__(self, model_config, mask_config=None, *, rngs: nnx.Rngs):
    """mask_config: config.mask; None or enabled=False builds no mask module."""
    cfg = model_config
    mask_config = mask_config if mask_config is not None and mask_config.enabled else None
    _check_config(cfg, mask_config)
    base_rngs, rngs = rngs, layers.KeyStream(rngs)
    # the action module's own stream: the other parameters keep the values of a model without it
    action_keys = None if cfg.action_module is None else layers.KeyStream(base_rngs)
    self.cfg = _Static(cfg)
    self.prec = prec = layers.Precision.from_config(cfg)
    self.dim = dim = cfg.num_heads * cfg.head_dim
    self.temporal_layers = tuple(int(i) for i in cfg.temporal_block_layers)
    self.crossview_layers = tuple(int(i) for i in cfg.crossview_block_layers)
    self.decode_layers, self.kept_width = 0, None
    if mask_config is not None:
      self.decode_layers = int(mask_config.decode_layers)
      self.kept_width = masking.kept_width(cfg.latent_width // cfg.patch_size,
                                           float(mask_config.ratio))
    self.runs = self._layer_runs() if cfg.scan_layers else None

    # Parameters are created in this order (it fixes the initial values of a seed).
    self.pos_embed = PatchEmbed(cfg.in_channels, dim, cfg.patch_size, cfg.pos_embed_max_size,
                                cfg.sample_size // cfg.patch_size, rngs=rngs, prec=prec)
    self.time_text_embed = TimestepTextEmbedding(dim, cfg.pooled_projection_dim, rngs=rngs,
                                                 prec=prec)
    self.context_embedder = layers.linear(cfg.joint_attention_dim, dim, (None, "embed"),
                                          rngs=rngs, prec=prec)
    if self.runs is None:
      self.transformer_blocks = nnx.List([self._joint_block(i, rngs)
                                          for i in range(cfg.num_layers)])
    self.norm_out = AdaLayerNormContinuous(dim, dim, rngs=rngs, prec=prec)
    self.proj_out = layers.linear(dim, cfg.patch_size ** 2 * cfg.out_channels, ("embed", None),
                                  rngs=rngs, prec=prec)
    adapter = cfg.layout_adapter
    self.condition_image_adapter = None if adapter is None else ImageAdapter(
        adapter.in_channels, adapter.channels, adapter.is_downblocks, adapter.num_res_blocks,
        adapter.downscale_factor, adapter.use_zero_convs, rngs=rngs, prec=prec)
    self.view_embedding = (MLPEmbedding(cfg.camera_scalars * TIMESTEP_CHANNELS, dim, dim,
                                        rngs=rngs, prec=prec) if cfg.camera_scalars else None)
    if self.runs is None:
      # OpenDWM's lists (scan.FIELDS): part j of a kind belongs to the j-th layer having that kind
      for kind in KINDS:
        if self.layers_with(kind):
          for field in scan.PARTS[kind]:
            setattr(self, scan.FIELDS[field][0], nnx.List([
                self._part(kind, field, rngs, action_keys) for _ in self.layers_with(kind)]))
    else:
      self.layer_runs = nnx.List([
          nnx.List([self._stacked_layer(run.start + k, run.repeats, rngs, action_keys)
                    for k in range(run.period)]) for run in self.runs])
    self.action_embedding = None if action_keys is None else action_module.ActionEmbedding(
        cfg.action_module, dim, rngs=action_keys, prec=prec)
    self.mask_module = None if mask_config is None else mask_reconstruction.MaskModule(
        dim, cfg.num_heads, cfg.head_dim, cfg.in_channels, cfg.patch_size, mask_config,
        rngs=rngs, attention_impl=cfg.attention_impl, dtype=prec.dtype,
        param_dtype=prec.param_dtype)

  # ---------------------------------------------------------------------------------------------
  # the layer stack

  def layers_with(self, kind: str) -> tuple[int, ...]:
    """The layers with a temporal (kind 'temporal') or cross-view ('crossview') block."""
    return self.temporal_layers if kind == "temporal" else self.crossview_layers

  def _layer_runs(self):
    """scan.layer_runs of this stack: a layer's signature is what it has (layout residuals are
    not part of it: a run with some gets zeros elsewhere); the first decoder layer starts a run."""
    cfg = self.cfg
    signatures = [(i in cfg.dual_attention_layers, i == cfg.num_layers - 1,
                   i in self.temporal_layers, i in self.crossview_layers)
                  for i in range(cfg.num_layers)]
    first_decoder = cfg.num_layers - self.decode_layers
    return scan.layer_runs(signatures, boundaries=(first_decoder,) * bool(self.decode_layers))

  def _joint_block(self, i: int, keys) -> JointTransformerBlock:
    cfg = self.cfg
    return JointTransformerBlock(
        self.dim, cfg.num_heads, cfg.head_dim, rngs=keys, prec=self.prec,
        context_pre_only=i == cfg.num_layers - 1, dual_attention=i in cfg.dual_attention_layers,
        qk_norm=cfg.qk_norm, impl=cfg.attention_impl)

  def _part(self, kind: str, field: str, keys, action_keys=None):
    """A new module for `field` of scan.PARTS[kind]: index MLP, video block or AlphaBlender; a
    temporal block gets its action cross-attention from action_keys (None: no action module)."""
    cfg, dim, prec = self.cfg, self.dim, self.prec
    index_mlp, block, _ = scan.PARTS[kind]
    if field == index_mlp:
      return MLPEmbedding(dim, 4 * dim, dim, rngs=keys, prec=prec, axes=("embed", "mlp", "embed"))
    if field == block:
      action_attn = None
      if kind == "temporal" and action_keys is not None:
        action_attn = action_module.ActionCrossAttention(
            dim, cfg.joint_attention_dim, cfg.num_heads, cfg.head_dim, rngs=action_keys,
            prec=prec, qk_norm=cfg.qk_norm, impl=cfg.attention_impl)
      return VTSelfAttentionBlock(dim, cfg.num_heads, cfg.head_dim, rngs=keys, prec=prec,
                                  qk_norm=cfg.qk_norm, impl=cfg.attention_impl,
                                  time_modulation=kind == "temporal" and cfg.time_modulation,
                                  action_attn=action_attn)
    return AlphaBlender(cfg.merge_factor, prec=prec)

  def _new_layer(self, i: int, keys, action_keys=None) -> Layer:
    parts = {field: self._part(kind, field, keys, action_keys) for kind in KINDS
             if i in self.layers_with(kind) for field in scan.PARTS[kind]}
    return Layer(self._joint_block(i, keys), **parts)

  def _stacked_layer(self, i: int, repeats: int, rngs, action_rngs=None) -> Layer:
    """The run's layers i, i + period, ... (`repeats` of them, all shaped like layer i; one key
    each, and one of the action stream), their parameters stacked on a leading axis."""
    keys = jax.random.split(rngs.params(), repeats)
    action_keys = keys if action_rngs is None else jax.random.split(action_rngs.params(), repeats)
    make = nnx.vmap(
        lambda key, action_key: self._new_layer(
            i, layers.KeyStream.from_key(key),
            None if action_rngs is None else layers.KeyStream.from_key(action_key)),
        in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    return make(keys, action_keys)

  def layer(self, i: int) -> Layer:
    """Layer i of an unscanned model, assembled from OpenDWM's lists (scan.FIELDS)."""
    if self.runs is not None:
      raise ValueError("CTSDDiT.layer(i) assembles a layer of an unscanned model; this one stores "
                       "its layers stacked in layer_runs (scan_layers=True)")
    parts = {}
    for kind in KINDS:
      members = self.layers_with(kind)
      if i in members:
        parts.update({field: getattr(self, scan.FIELDS[field][0])[members.index(i)]
                      for field in scan.PARTS[kind]})
    return Layer(self.transformer_blocks[i], **parts)

  def _apply_layers(self, x, ctx, residuals, side: LayerInputs, start: int, stop: int):
    """Layers start..stop-1 on (x, ctx); residuals[i] enters before layer i (if i < len). A
    scanned model applies its runs in that range (runs never cross start or stop)."""
    if self.runs is None:
      for i in range(start, stop):
        x, ctx = self.layer(i)(x, ctx, residuals[i] if i < len(residuals) else None, side)
      return x, ctx
    for run, units in zip(self.runs, self.layer_runs):
      if not start <= run.start < stop:
        continue
      res = None
      if run.start < len(residuals):  # zeros (x + 0 == x) where a layer of the run has none
        pad = lambda i: residuals[i] if i < len(residuals) else jnp.zeros(x.shape, x.dtype)
        res = jnp.stack([jnp.stack([pad(run.layer(r, k)) for k in range(run.period)])
                         for r in range(run.repeats)])

      def step(carry, units, res_r):
        x, ctx = carry
        for k, layer in enumerate(units):
          x, ctx = layer(x, ctx, None if res_r is None else res_r[k], side)
        return x, ctx

      x, ctx = nnx.scan(step, in_axes=(nnx.Carry, 0, 0 if res is not None else None),
                        out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: None}
                        )((x, ctx), units, res)
    return x, ctx

  # ---------------------------------------------------------------------------------------------
  def __call__(self, latents, timesteps, cond: conditioning.Conditioning | None = None, *,
               row_mask: masking.RowMask | None = None, noise=None,
               return_features: bool = False):
    """Velocity [B,T,V,h,w,C] (dtype of latents), and the features dict if return_features.

    latents [B,T,V,h,w,C]; timesteps [B,T,V] in [0, 1]; cond: a conditioning.Conditioning (None:
    no conditions; absent context / pooled text are zeros; absent actions: action-free).
    row_mask and noise [B,T,V,h,w,C] (the eps of the noisy latents), both or neither: the
    training-only mask-reconstruction path.
    """
    cond = conditioning.Conditioning() if cond is None else cond
    self._check_inputs(latents, timesteps, cond, row_mask, noise)
    cfg = self.cfg
    out_dtype = latents.dtype
    dtype = self.prec.dtype or jnp.result_type(latents.dtype, jnp.float32)
    b, t, v, hl, wl, c = latents.shape
    p, dim = cfg.patch_size, self.dim
    h, w = hl // p, wl // p
    n = b * t * v
    context, pooled = cond.context, cond.pooled
    if context is None:
      context = jnp.zeros((b, t, v, cfg.text_tokens, cfg.joint_attention_dim), dtype)
    if pooled is None:
      pooled = jnp.zeros((b, t, v, cfg.pooled_projection_dim), dtype)

    x = self.pos_embed(latents.reshape(n, hl, wl, c).astype(dtype)).reshape(b, t, v, h, w, dim)
    ctx0 = self.context_embedder(context.reshape(n, *context.shape[3:]).astype(dtype))
    temb, t_only = self.time_text_embed(timesteps.reshape(n).astype(jnp.float32),
                                        pooled.reshape(n, -1).astype(dtype), dtype=dtype)
    cam_emb = None
    if cond.camera is not None:
      cam_in = sinusoidal(cond.camera.astype(jnp.float32), TIMESTEP_CHANNELS).reshape(b, t, v, -1)
      cam_emb = self.view_embedding(cam_in.astype(dtype))
    residuals = []
    if cond.layout is not None:
      residuals = self.condition_image_adapter(cond.layout.astype(dtype))
    frame_context = action_kv = None
    if self.action_embedding is not None:
      frame_context = context.astype(dtype)
      if cond.actions is not None:
        action_kv = self.action_embedding(cond.actions, cond.action_keep, dtype=dtype)

    first_decoder = cfg.num_layers - self.decode_layers  # == num_layers without a mask module
    if row_mask is not None:
      x = masking.gather_rows(x, row_mask)
      residuals = [masking.gather_rows(r, row_mask) if i < first_decoder else r
                   for i, r in enumerate(residuals)]
    side = LayerInputs(
        temb=temb, time_emb=t_only.reshape(b, t, v, dim), camera=cam_emb,
        frame_index=sinusoidal(jnp.arange(t), dim), view_index=sinusoidal(jnp.arange(v), dim),
        view_adjacency=cond.view_adjacency, disable_temporal=cond.disable_temporal,
        disable_crossview=cond.disable_crossview, temporal_kind=cfg.temporal_attention_type,
        remat_policy=cfg.remat_policy, frame_context=frame_context, action_kv=action_kv)

    feats = {}
    x, ctx = self._apply_layers(x, ctx0, residuals, side, 0, first_decoder)
    if self.mask_module is not None:
      feats["encoder"] = x
      if row_mask is not None:  # under the blocks' remat policy too: its side blocks run at width W
        x = _remat(lambda module, *args: module(*args), cfg.remat_policy)(
            self.mask_module, x, row_mask, noise.astype(dtype), timesteps.astype(jnp.float32),
            temb.reshape(b, t, v, dim), ctx0.reshape(b, t, v, *ctx0.shape[1:]),
            self.pos_embed.cropped(h, w).astype(dtype))
      feats["reconstructed"] = x
    x, ctx = self._apply_layers(x, ctx, residuals, side, first_decoder, cfg.num_layers)
    feats["final"] = x
    y = self.proj_out(self.norm_out(x.reshape(n, h * w, dim), temb))
    y = y.reshape(b, t, v, h, w, p, p, cfg.out_channels)
    y = y.transpose(0, 1, 2, 3, 5, 4, 6, 7).reshape(b, t, v, hl, wl, cfg.out_channels)
    y = y.astype(out_dtype)
    return (y, feats) if return_features else y

  # ---------------------------------------------------------------------------------------------
  def _check_inputs(self, latents, timesteps, cond, row_mask, noise):
    cfg = self.cfg
    if not isinstance(cond, conditioning.Conditioning):
      raise TypeError(f"cond must be a conditioning.Conditioning (conditioning.model_inputs "
                      f"builds one), got {type(cond).__name__}")
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
    layout_channels = (None if self.condition_image_adapter is None
                       else cfg.layout_adapter.in_channels)
    ac = cfg.action_module
    shapes = {
        "context": (cond.context, lead + (None, cfg.joint_attention_dim)),
        "pooled": (cond.pooled, lead + (cfg.pooled_projection_dim,)),
        "camera": (cond.camera, lead + (cfg.camera_scalars,)),
        "layout": (cond.layout, lead + (hl * VAE_FACTOR, wl * VAE_FACTOR, layout_channels)),
        "view_adjacency": (cond.view_adjacency, (b, v, v)),
        "disable_temporal": (cond.disable_temporal, (b,)),
        "disable_crossview": (cond.disable_crossview, (b,)),
        "noise": (noise, tuple(latents.shape)),
        "actions": (cond.actions, (b, t, None if ac is None else action_module.input_width(ac))),
        "action_keep": (cond.action_keep, (b, None if ac is None else len(ac.groups))),
    }
    for name, (value, expected) in shapes.items():
      if value is None:
        continue
      got = tuple(value.shape)
      if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {shown}, got {got}")
    if cond.camera is not None and self.view_embedding is None:
      raise ValueError("camera scalars given, but the model config has camera_scalars=0")
    if cond.layout is not None and self.condition_image_adapter is None:
      raise ValueError("layout given, but the model config has no layout_adapter")
    if cond.actions is not None and self.action_embedding is None:
      raise ValueError("actions given, but the model config has action_module=None")
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
