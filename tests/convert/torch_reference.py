"""A compact PyTorch reference of OpenDWM's CTSD video and mask modules, written for the parity
tests (own code following OpenDWM's semantics and state_dict names, built from diffusers' public
layers as OpenDWM is): VT self-attention block, AlphaBlender, the temporal / row-wise cross-view
steps of DiTCrossviewTemporalConditionModel, the layout ImageAdapter, and MaskGWM's side block
(OpenDWM STDiT3Block) and mask tokens.

Layouts are PyTorch's: hidden states [N, S, D] with N = B*T*V (frame-major, then view), images
[N, C, H, W].
"""
import einops
import torch
from diffusers.models import adapter as d_adapter
from diffusers.models import attention as d_attention
from diffusers.models import attention_processor as d_attn
from diffusers.models import embeddings as d_embeddings


class VTBlock(torch.nn.Module):
  """OpenDWM VTSelfAttentionBlock: u += ff_in(norm_in(u)); u += attn1(norm1(u)); u += ff(norm3(u))."""

  def __init__(self, dim, heads, head_dim, qk_norm="rms_norm"):
    super().__init__()
    self.norm_in = torch.nn.LayerNorm(dim)
    self.ff_in = d_attention.FeedForward(dim, dim_out=dim, activation_fn="geglu")
    self.norm1 = torch.nn.LayerNorm(dim)
    self.attn1 = d_attn.Attention(query_dim=dim, heads=heads, dim_head=head_dim, qk_norm=qk_norm)
    self.norm3 = torch.nn.LayerNorm(dim)
    self.ff = d_attention.FeedForward(dim, activation_fn="geglu")

  def forward(self, u, mask=None):
    u = u + self.ff_in(self.norm_in(u))
    u = u + self.attn1(self.norm1(u), attention_mask=mask)
    return u + self.ff(self.norm3(u))


class AlphaBlender(torch.nn.Module):
  """'learned_with_images': alpha = 1 where the indicator is set, else sigmoid(mix_factor)."""

  def __init__(self, alpha):
    super().__init__()
    self.mix_factor = torch.nn.Parameter(torch.tensor([float(alpha)]))

  def forward(self, a, b, indicator):
    alpha = torch.where(indicator, torch.ones(1), torch.sigmoid(self.mix_factor))
    alpha = alpha.view(*alpha.shape, *([1] * (a.ndim - alpha.ndim)))
    return alpha * a + (1 - alpha) * b


class VideoModel(torch.nn.Module):
  """The video parts of DiTCrossviewTemporalConditionModel under its state_dict names.

  The camera embedding joins a temporal block's frame-index embedding only when
  enable_crossview=True and disable_view_emb_on_temporal_module=False (OpenDWM's rule); it always
  joins the cross-view blocks' view-index embedding."""

  def __init__(self, dim, heads, head_dim, n_temporal, n_crossview, camera_scalars, merge=2.0,
               enable_crossview=True, disable_view_emb_on_temporal_module=False):
    super().__init__()
    self.enable_crossview = enable_crossview
    self.disable_view_emb_on_temporal_module = disable_view_emb_on_temporal_module
    mlp = lambda: d_embeddings.TimestepEmbedding(dim, dim * 4, out_dim=dim)
    self.index_proj = d_embeddings.Timesteps(dim, True, 0)
    self.view_cam_proj = d_embeddings.Timesteps(256, True, 0)
    self.view_embedding = d_embeddings.TimestepEmbedding(camera_scalars * 256, dim)
    self.time_pos_embeds = torch.nn.ModuleList([mlp() for _ in range(n_temporal)])
    self.temporal_transformer_blocks = torch.nn.ModuleList(
        [VTBlock(dim, heads, head_dim) for _ in range(n_temporal)])
    self.time_mixers = torch.nn.ModuleList([AlphaBlender(merge) for _ in range(n_temporal)])
    self.view_pos_embeds = torch.nn.ModuleList([mlp() for _ in range(n_crossview)])
    self.crossview_transformer_blocks = torch.nn.ModuleList(
        [VTBlock(dim, heads, head_dim) for _ in range(n_crossview)])
    self.view_mixers = torch.nn.ModuleList([AlphaBlender(merge) for _ in range(n_crossview)])

  @classmethod
  def from_opendwm_config(cls, c):
    """The video parts an OpenDWM model config (its JSON, in its names) builds."""
    enable_crossview = bool(c.get("enable_crossview", False))
    return cls(c["num_attention_heads"] * c["attention_head_dim"], c["num_attention_heads"],
               c["attention_head_dim"],
               len(c["temporal_block_layers"]) if c.get("enable_temporal", False) else 0,
               len(c["crossview_block_layers"]) if enable_crossview else 0,
               c["projection_class_embeddings_input_dim"] // 256, merge=c["merge_factor"],
               enable_crossview=enable_crossview,
               disable_view_emb_on_temporal_module=c.get("disable_view_emb_on_temporal_module",
                                                         False))

  def camera_embedding(self, scalars):
    """scalars [B, T, V, S] -> [B*T*V, 1, D]."""
    n = scalars.shape[0] * scalars.shape[1] * scalars.shape[2]
    return self.view_embedding(self.view_cam_proj(scalars.flatten()).view(n, -1)).unsqueeze(1)

  def temporal(self, j, x, b, t, v, width, kind, cam=None, disabled=None):
    """x [(b t v), (h w), D]."""
    emb = self.index_proj(torch.arange(t).unsqueeze(0).unsqueeze(-1).repeat(b, 1, v).flatten())
    emb = self.time_pos_embeds[j](emb).unsqueeze(1)
    if cam is not None and self.enable_crossview and not self.disable_view_emb_on_temporal_module:
      emb = emb + cam
    u = x + emb
    if kind == "pointwise":
      y = einops.rearrange(u, "(b t v) hw c -> (b v hw) t c", b=b, t=t)
      y = einops.rearrange(self.temporal_transformer_blocks[j](y), "(b v hw) t c -> (b t v) hw c",
                           b=b, v=v, t=t)
    else:  # rowwise
      y = einops.rearrange(u, "(b t v) (h w) c -> (b v h) (t w) c", b=b, v=v, w=width)
      y = einops.rearrange(self.temporal_transformer_blocks[j](y),
                           "(b v h) (t w) c -> (b t v) (h w) c", b=b, v=v, w=width)
    return self._mix(self.time_mixers[j], x, y, b, t, v, disabled)

  def crossview(self, j, x, b, t, v, height, width, cam=None, adjacency=None, disabled=None):
    emb = self.index_proj(torch.arange(v).unsqueeze(0).repeat(b * t, 1).flatten())
    emb = self.view_pos_embeds[j](emb).unsqueeze(1)
    if cam is not None:
      emb = emb + cam
    u = x + emb
    mask = None
    if adjacency is not None:  # [b, v, v] -> [(b t h), (v w), (v w)], True = may attend
      mask = (adjacency.repeat_interleave(width, 2).repeat_interleave(width, 1)
              .repeat_interleave(t * height, 0))
    y = einops.rearrange(u, "(bt v) (h w) c -> (bt h) (v w) c", w=width, v=v)
    y = self.crossview_transformer_blocks[j](y, mask)
    y = einops.rearrange(y, "(bt h) (v w) c -> (bt v) (h w) c", bt=b * t, v=v)
    return self._mix(self.view_mixers[j], x, y, b, t, v, disabled)

  @staticmethod
  def _mix(mixer, x, y, b, t, v, disabled):
    if disabled is None:
      disabled = torch.zeros(b, dtype=torch.bool)
    out = mixer(x.view(b, t * v, *x.shape[1:]), y.view(b, t * v, *y.shape[1:]), disabled)
    return out.flatten(0, 1)


class ImageAdapter(torch.nn.Module):
  """OpenDWM's layout adapter: pixel-unshuffle, diffusers AdapterBlocks, zero convs."""

  def __init__(self, in_channels, channels, is_downblocks, num_res_blocks, downscale_factor):
    super().__init__()
    self.unshuffle = torch.nn.PixelUnshuffle(downscale_factor)
    widths = [in_channels * downscale_factor ** 2, *channels]
    self.body = torch.nn.ModuleList([
        d_adapter.AdapterBlock(widths[i], widths[i + 1], num_res_blocks, down=is_downblocks[i])
        for i in range(len(channels))])
    self.zero_convs = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 1) for c in channels])

  def forward(self, x):
    x = self.unshuffle(x)
    out = []
    for block, zero in zip(self.body, self.zero_convs):
      x = block(x)
      out.append(zero(x))
    return out


def _side_attention(dim, heads):
  return d_attn.Attention(query_dim=dim, added_kv_proj_dim=dim, qk_norm="rms_norm",
                          dim_head=dim // heads, heads=heads, out_dim=dim, bias=True,
                          processor=d_attn.AttnProcessor2_0())


class Mlp(torch.nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = torch.nn.Linear(dim, hidden)
    self.fc2 = torch.nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))


class SideBlock(torch.nn.Module):
  """OpenDWM STDiT3Block as MaskGWM's side block F_s (temporal=False) / F_t (temporal=True).

  Per-frame modulation: each frame's own row of t (the paper's intent; see wm_jax's
  mask_reconstruction docstring for the frame-order quirk of the original)."""

  def __init__(self, dim, heads, temporal):
    super().__init__()
    self.temporal = temporal
    self.attn = _side_attention(dim, heads)
    self.cross_attn = _side_attention(dim, heads)
    self.mlp = Mlp(dim, 4 * dim)
    self.scale_shift_table = torch.nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

  def forward(self, x, y, t, frames):
    """x [N, T*S, D] (N = B*V), y [N*T, L, D] context, t [N, T, 6*D] per-frame modulation."""
    n, _, d = x.shape
    s = x.shape[1] // frames
    mod = (self.scale_shift_table[None, None] + t.view(n, frames, 6, d))  # [N, T, 6, D]
    mod = mod.repeat_interleave(s, 1)  # [N, T*S, 6, D]: frame-major tokens
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(2)
    norm = lambda z: torch.nn.functional.layer_norm(z, (d,), eps=1e-6)
    h = norm(x) * (1 + scale_msa) + shift_msa
    if self.temporal:
      h = einops.rearrange(h, "n (t s) c -> (n s) t c", t=frames)
      h = einops.rearrange(self.attn(h), "(n s) t c -> n (t s) c", n=n)
    else:
      h = einops.rearrange(h, "n (t s) c -> (n t) s c", t=frames)
      h = einops.rearrange(self.attn(h), "(n t) s c -> n (t s) c", n=n)
    x = x + gate_msa * h
    xs = einops.rearrange(x, "n (t s) c -> (n t) s c", t=frames)
    x = einops.rearrange(xs + self.cross_attn(xs, y), "(n t) s c -> n (t s) c", n=n)
    return x + gate_mlp * self.mlp(norm(x) * (1 + scale_mlp) + shift_mlp)


NOISE_PROJ_CHANNELS = 16  # MaskController's noise_proj input channels, whatever the latents have


class MaskTokens(torch.nn.Module):
  """OpenDWM MaskController's mask tokens of the dropped positions, use_origin_mask_token
  {'type': 'trans', 'target': [a, b]}: x_drop = context[a] * tau + context[b] * (1 - tau) with
  context = {'noise': noise_proj(eps) at the dropped positions, 'learnable': mask_token} and tau =
  timestep / 1000, then MaskPatchEmbed: x_drop + proj(3-D sin-cos table at those positions).
  noise_proj is Conv3d(16, D, (1, 3, 3), stride (1, 2, 2), padding (0, 1, 1))."""

  def __init__(self, dim, use_origin_mask_token):
    super().__init__()
    self.target = list(use_origin_mask_token["target"])
    self.noise_proj = torch.nn.Conv3d(NOISE_PROJ_CHANNELS, dim, (1, 3, 3), (1, 2, 2),
                                      padding=(0, 1, 1))
    self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
    self.mask_path_embed = torch.nn.Module()
    self.mask_path_embed.proj = torch.nn.Linear(dim, dim)

  def forward(self, noise, ids_drop, tau):
    """noise [N, C, T, h*2, w*2] (N = B*V), ids_drop [N*T, L] flat (row, column) positions,
    tau [N*T] -> [N*T, L, D]."""
    n, _, t, hp, wp = noise.shape
    d = self.mask_token.shape[-1]
    feats = einops.rearrange(self.noise_proj(noise), "n c t h w -> (n t) (h w) c")
    index = ids_drop.unsqueeze(-1).repeat(1, 1, d)
    context = {"noise": torch.gather(feats, 1, index),
               "learnable": self.mask_token.repeat(n * t, ids_drop.shape[1], 1)}
    tau = tau[:, None, None]
    x_drop = context[self.target[0]] * tau + context[self.target[1]] * (1 - tau)
    pos = d_embeddings.get_3d_sincos_pos_embed(d, (wp // 2, hp // 2), t).float()  # [T, h*w, D]
    pos = torch.gather(pos.repeat(n, 1, 1), 1, index)
    return x_drop + self.mask_path_embed.proj(pos)
