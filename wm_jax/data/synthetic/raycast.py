"""Per-pixel ray casting of one frame (all views) with jitted, vectorised JAX.

Every pixel casts one ray from its camera's optical centre through the pixel centre. The ray is
p(t) = o + t d with d = R_world_cam K^-1 (u + 0.5, v + 0.5, 1), so the hit parameter t IS the
depth along the optical axis (camera z). The nearest hit among

  * K oriented boxes per image tile (slab test in each box's frame; the caller lists for each
    tile the boxes whose projection covers it, see render.select_boxes),
  * the ground plane z = 0, painted from the KR nearest road segments (asphalt, lane markings,
    kerbs, sidewalks, zebra crossings) and procedural noise (verge / grass),
  * the sky (no hit: gradient by elevation + sun glow, depth = FAR)

gives the colour (Lambert sun + ambient, exponential fog) and the depth. Shapes are static per
(V, H, W, K, KR), so one compile serves every scene, domain and frame of that size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.data.synthetic import world

FAR = 500.0  # depth of sky pixels and cap of all depths, metres
# Box rows: cx,cy,cz, hl,hw,hh, yaw, r,g,b, material, id (track id or 0), active.
BOX_COLS = 13
# Segment rows: ax,ay, dx,dy (unit), length, s0, road, half_width, lane_width, lanes, parking,
# active.
SEG_COLS = 12
# Style vector layout (see style_vector).
_STYLE_KEYS = ("sky_zenith", "sky_horizon", "sun_direction", "sun_color", "asphalt", "marking",
               "centre_marking", "kerb_a", "kerb_b", "sidewalk", "ground", "window")


def style_vector(domain) -> np.ndarray:
  """Domain appearance as a flat float32 vector (so domains share one compiled renderer)."""
  sun = np.asarray(domain.sun_direction, np.float64)
  vals = [domain.sky_zenith, domain.sky_horizon, sun / np.linalg.norm(sun), domain.sun_color,
          domain.asphalt, domain.marking, domain.centre_marking, domain.kerb_colors[0],
          domain.kerb_colors[1], domain.sidewalk, domain.ground, domain.window]
  flat = np.concatenate([np.asarray(v, np.float64) for v in vals])
  extra = [domain.ambient, domain.fog_density, domain.kerb_width, domain.sidewalk_width]
  return np.concatenate([flat, extra]).astype(np.float32)


def _unpack_style(sv):
  out = {k: sv[3 * i:3 * i + 3] for i, k in enumerate(_STYLE_KEYS)}
  n = 3 * len(_STYLE_KEYS)
  out.update(ambient=sv[n], fog=sv[n + 1], kerb_width=sv[n + 2], sidewalk_width=sv[n + 3])
  return out


def _hash01(ix, iy, salt):
  """Integer lattice hash -> float in [0, 1)."""
  h = (ix.astype(jnp.uint32) * jnp.uint32(0x8DA6B343)) ^ (iy.astype(jnp.uint32) *
                                                           jnp.uint32(0xD8163841))
  h = h ^ jnp.uint32(salt * 0x9E3779B1 & 0xFFFFFFFF)
  h = (h ^ (h >> 13)) * jnp.uint32(0x5BD1E995)
  h = h ^ (h >> 15)
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _value_noise(x, y, salt):
  """Smooth value noise with unit lattice spacing."""
  fx, fy = jnp.floor(x), jnp.floor(y)
  tx, ty = x - fx, y - fy
  tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
  ix, iy = fx.astype(jnp.int32), fy.astype(jnp.int32)
  a = _hash01(ix, iy, salt)
  b = _hash01(ix + 1, iy, salt)
  c = _hash01(ix, iy + 1, salt)
  d = _hash01(ix + 1, iy + 1, salt)
  return (a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty


def _mix(a, b, w):
  return a + (b - a) * w[..., None]


def _ground_color(px, py, segs, crossings, st):
  """Colour [P,3] of ground points (px, py) [P] from road segments [KR,SEG_COLS].

  A scan over the segments keeps the nearest asphalt edge (with its segment, lateral offset u and
  arc length s) and the nearest edge distance of the main road and of the side roads.
  """
  inf = jnp.full_like(px, jnp.inf)
  zero = jnp.zeros_like(px)

  def body(carry, seg):
    k, e_main, e_side, e1, u1, s1, k1 = carry
    ax, ay, dx, dy, ln, s0, road, hw, _, _, _, active = (seg[i] for i in range(SEG_COLS))
    rx, ry = px - ax, py - ay
    along = jnp.clip(rx * dx + ry * dy, 0.0, ln)
    ex, ey = rx - along * dx, ry - along * dy
    edge = jnp.sqrt(ex * ex + ey * ey) - hw + jnp.where(active > 0, 0.0, jnp.inf)
    better = edge < e1
    e_main = jnp.minimum(e_main, edge + jnp.where(road == 0, 0.0, jnp.inf))
    e_side = jnp.minimum(e_side, edge + jnp.where(road == 0, jnp.inf, 0.0))
    return (k + 1, e_main, e_side, jnp.where(better, edge, e1),
            jnp.where(better, dx * ry - dy * rx, u1), jnp.where(better, s0 + along, s1),
            jnp.where(better, k, k1)), None

  init = (jnp.int32(0), inf, inf, inf, zero, zero, jnp.zeros(px.shape, jnp.int32))
  (_, e_main, e_side, e1, u1, s1, k1), _ = jax.lax.scan(body, init, segs)
  # Side roads cross only the main road, so "another road" is the other of the two classes.
  other = jnp.where(segs[k1, 6] == 0, e_side, e_main)
  road1, hw1, lw1, lanes1, park1 = (segs[:, i][k1] for i in (6, 7, 8, 9, 10))
  kerb, walk = st["kerb_width"], st["sidewalk_width"]

  asphalt = (e1 < 0) | (other < 0)
  is_kerb = ~asphalt & (e1 < kerb)
  is_walk = ~asphalt & ~is_kerb & (e1 < kerb + walk)
  au = jnp.abs(u1)
  line = 0.09
  dash = jnp.mod(s1, 9.0) < 3.0
  markable = (e1 < 0) & (other > kerb + walk)
  centre = jnp.where(lanes1 >= 2, jnp.abs(au - 0.15) < line, (au < line) & dash)
  k_div = jnp.round(au / lw1)
  divider = (k_div >= 1) & (k_div < lanes1) & (jnp.abs(au - k_div * lw1) < line) & dash
  park_line = (park1 > 0) & (jnp.abs(au - lw1) < line)
  edge_line = (park1 < 1) & (jnp.abs(au - (hw1 - 0.3)) < line)
  zebra = jnp.zeros_like(au, dtype=bool)
  for j in range(crossings.shape[0]):
    c_road, c_a, c_b = crossings[j, 0], crossings[j, 1], crossings[j, 2]
    zebra |= (road1 == c_road) & (s1 > c_a) & (s1 < c_b) & (au < hw1 - 0.4) & \
        (jnp.mod(u1 + 100.0, 1.2) < 0.6)
  white = markable & (divider | park_line | edge_line | zebra)
  yellow = markable & centre

  n_fine = _value_noise(px * 2.0, py * 2.0, 1)
  n_coarse = _value_noise(px * 0.15, py * 0.15, 2)
  tex = 0.85 + 0.2 * n_fine + 0.15 * n_coarse
  col = st["ground"][None] * (0.7 + 0.3 * n_fine + 0.4 * n_coarse)[:, None]
  walk_tile = (jnp.mod(s1, 1.5) < 0.08) | (jnp.mod(u1, 1.5) < 0.08)
  col = jnp.where(is_walk[:, None], st["sidewalk"][None] * jnp.where(walk_tile, 0.8, tex)[:, None],
                  col)
  kerb_col = jnp.where((jnp.mod(jnp.floor(s1), 2.0) < 1)[:, None], st["kerb_a"][None],
                       st["kerb_b"][None])
  col = jnp.where(is_kerb[:, None], kerb_col, col)
  col = jnp.where(asphalt[:, None], st["asphalt"][None] * tex[:, None], col)
  col = jnp.where(white[:, None], st["marking"][None] * (0.9 + 0.1 * n_fine)[:, None], col)
  col = jnp.where(yellow[:, None], st["centre_marking"][None], col)
  return col


def _box_hits(o, d, boxes):
  """Nearest box hit per ray. o [3] world, d [P,3]. Returns (t [P], k [P] int32).

  Slab test in each box's frame, scanned over the K boxes with a running minimum: each step is a
  fused pass over [P] vectors that stay in cache (much faster on CPU than [P,K] + argmin).
  """
  tiny = 1e-12
  dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
  iz = 1.0 / jnp.where(jnp.abs(dz) < tiny, tiny, dz)

  def body(carry, box):
    k, best_t, best_k = carry
    cx, cy, cz, hl, hw, hh, yaw = (box[i] for i in range(7))
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    ox, oy = o[0] - cx, o[1] - cy
    olx, oly, olz = c * ox + s * oy, -s * ox + c * oy, o[2] - cz
    dlx = c * dx + s * dy
    dly = -s * dx + c * dy
    ix = 1.0 / jnp.where(jnp.abs(dlx) < tiny, tiny, dlx)
    iy = 1.0 / jnp.where(jnp.abs(dly) < tiny, tiny, dly)
    tx1, tx2 = (-hl - olx) * ix, (hl - olx) * ix
    ty1, ty2 = (-hw - oly) * iy, (hw - oly) * iy
    tz1, tz2 = (-hh - olz) * iz, (hh - olz) * iz
    tnear = jnp.maximum(jnp.maximum(jnp.minimum(tx1, tx2), jnp.minimum(ty1, ty2)),
                        jnp.minimum(tz1, tz2))
    tfar = jnp.minimum(jnp.minimum(jnp.maximum(tx1, tx2), jnp.maximum(ty1, ty2)),
                       jnp.maximum(tz1, tz2))
    better = (tnear <= tfar) & (tnear > 1e-3) & (box[12] > 0) & (tnear < best_t)
    return (k + 1, jnp.where(better, tnear, best_t), jnp.where(better, k, best_k)), None

  init = (jnp.int32(0), jnp.full_like(dz, jnp.inf), jnp.zeros(dz.shape, jnp.int32))
  (_, best_t, best_k), _ = jax.lax.scan(body, init, boxes)
  return best_t, best_k


def _box_color(o, d, t, box, sky_dir_col, st):
  """Colour [P,3] and world normal [P,3] at the hit of rays on their winning box rows [P,13]."""
  cx, cy, cz, hl, hw, hh, yaw = (box[:, i] for i in range(7))
  base = box[:, 7:10]
  mat = box[:, 10]
  c, s = jnp.cos(yaw), jnp.sin(yaw)
  wx = o[0] + t * d[:, 0] - cx
  wy = o[1] + t * d[:, 1] - cy
  lx, ly, lz = c * wx + s * wy, -s * wx + c * wy, o[2] + t * d[:, 2] - cz
  fx, fy, fz = jnp.abs(lx) / hl, jnp.abs(ly) / jnp.maximum(hw, 1e-6), jnp.abs(lz) / hh
  on_x = (fx >= fy) & (fx >= fz)
  on_y = ~on_x & (fy >= fz)
  on_z = ~on_x & ~on_y
  nlx = jnp.where(on_x, jnp.sign(lx), 0.0)
  nly = jnp.where(on_y, jnp.sign(ly), 0.0)
  nz = jnp.where(on_z, jnp.sign(lz), 0.0)
  n = jnp.stack([c * nlx - s * nly, s * nlx + c * nly, nz], -1)
  height = lz + hh  # above the box bottom
  across = jnp.where(on_x, ly, lx)  # horizontal coordinate on a side face

  col = base
  # Buildings: window grid above a plain ground floor, darker roofs.
  win = (jnp.mod(across + 50.0, 3.0) > 0.8) & (jnp.mod(height, 3.2) > 1.0) & (height > 3.5) & \
      (height < 2 * hh - 0.8)
  win_col = st["window"][None] * 0.6 + sky_dir_col * 0.4
  col = jnp.where(((mat == world.MAT_BUILDING) & ~on_z & win)[:, None], win_col, col)
  col = jnp.where(((mat == world.MAT_BUILDING) & on_z)[:, None], base * 0.55, col)
  # Vehicle bodies: head/tail lights on the end faces, dark wheel arches low on the sides.
  body = mat == world.MAT_BODY
  lamp = body & on_x & (jnp.abs(ly) > hw - 0.45) & (jnp.abs(ly) < hw - 0.08) & \
      (height > 2 * hh - 0.3) & (height < 2 * hh - 0.1)
  lamp_col = jnp.where((lx > 0)[:, None], jnp.array([0.95, 0.92, 0.8]), jnp.array([0.8, 0.05, 0.05]))
  col = jnp.where(lamp[:, None], lamp_col, col)
  wheel = body & on_y & (height < 0.35) & (jnp.abs(jnp.abs(lx) - 0.62 * hl) < 0.35)
  col = jnp.where(wheel[:, None], jnp.array([0.04, 0.04, 0.04]), col)
  col = jnp.where((body & on_z)[:, None], base * 0.9, col)
  # Glass: dark tint plus sky reflection; bus: a window band and a windscreen.
  glass = (mat == world.MAT_GLASS) | ((mat == world.MAT_BUS) & ~on_z & (height > 1.0) &
                                      (height < 2 * hh - 0.35) & ((lx > 0) | (jnp.mod(across, 2.0) > 0.15)))
  col = jnp.where(glass[:, None], base * 0.0 + jnp.array([0.06, 0.08, 0.1]) + 0.35 * sky_dir_col,
                  col)
  foliage = mat == world.MAT_FOLIAGE
  leaf = _value_noise(lx * 3.0 + lz * 1.7, ly * 3.0 - lz * 2.3, 3)
  col = jnp.where(foliage[:, None], base * (0.6 + 0.8 * leaf)[:, None], col)
  return col, n


def _shade(col, n, st):
  sun = st["sun_direction"]
  lambert = jnp.maximum(n @ sun, 0.0)
  return col * (st["ambient"] + (1 - st["ambient"]) * lambert[:, None] * st["sun_color"][None])


def _shade_rays(o, d, boxes, segs, crossings, st):
  """Colour uint8 [C,3], depth [C] and hit id [C] of rays o + t d (d [C,3] with camera z = 1)."""
  norm = jnp.linalg.norm(d, axis=-1)
  dir_unit = d / norm[:, None]

  # Sky.
  elev = jnp.clip(dir_unit[:, 2], 0.0, 1.0)
  sky = _mix(jnp.broadcast_to(st["sky_horizon"], d.shape), jnp.broadcast_to(st["sky_zenith"], d.shape),
             jnp.sqrt(elev))
  glow = jnp.maximum(dir_unit @ st["sun_direction"], 0.0) ** 48
  sky = sky + 0.5 * glow[:, None] * st["sun_color"][None]
  # Reflection colour for glass: the sky in the mirrored direction (elevation flipped up).
  refl = _mix(jnp.broadcast_to(st["sky_horizon"], d.shape), jnp.broadcast_to(st["sky_zenith"], d.shape),
              jnp.sqrt(jnp.abs(dir_unit[:, 2])))

  # Ground.
  t_ground = jnp.where(d[:, 2] < -1e-6, -o[2] / jnp.minimum(d[:, 2], -1e-6), jnp.inf)
  gx = o[0] + jnp.minimum(t_ground, FAR) * d[:, 0]
  gy = o[1] + jnp.minimum(t_ground, FAR) * d[:, 1]
  # Tiles entirely above the horizon skip the road-segment pass.
  ground = jax.lax.cond(jnp.any(d[:, 2] < -1e-6),
                        lambda: _ground_color(gx, gy, segs, crossings, st),
                        lambda: jnp.zeros(d.shape, jnp.float32))
  ground = _shade(ground, jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), d.shape), st)

  # Boxes.
  t_box, k = _box_hits(o, d, boxes)
  box_rows = boxes[k]
  box_col, normal = _box_color(o, d, t_box, box_rows, refl, st)
  box_col = _shade(box_col, normal, st)

  hit_box = t_box < t_ground
  t = jnp.minimum(jnp.minimum(t_box, t_ground), FAR)
  col = jnp.where(hit_box[:, None], box_col, ground)
  fog = jnp.exp(-st["fog"] * t * norm)
  col = col * fog[:, None] + st["sky_horizon"][None] * (1 - fog)[:, None]
  any_hit = t < FAR
  col = jnp.where(any_hit[:, None], col, sky)
  rgb = jnp.clip(col * 255.0 + 0.5, 0, 255).astype(jnp.uint8)
  hit_id = jnp.where(hit_box & any_hit, box_rows[:, 11], 0.0).astype(jnp.int32)
  return rgb, t, hit_id


TILE_SHAPE = (32, 128)  # largest tile, rows x columns (temporaries stay in cache)


def tile_grid(height, width):
  """(tile_h, tile_w, tiles_y, tiles_x): the image, padded up, splits into tiles_y x tiles_x tiles.

  Tiles are at most TILE_SHAPE and at most a quarter of the height and half the width, so even
  small images get 4 x 2 tiles for box culling.
  """
  th = max(1, min(TILE_SHAPE[0], -(-height // 4)))
  tw = max(1, min(TILE_SHAPE[1], -(-width // 2)))
  return th, tw, -(-height // th), -(-width // tw)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def render_views(origins, r_wc, k_inv, boxes, segs, crossings, style, *, height, width):
  """Renders V views of one frame.

  Args:
    origins [V,3] camera centres (world); r_wc [V,3,3] world-from-camera rotations (OpenCV camera
    axes); k_inv [V,3,3] inverse intrinsics; boxes [V,Ty*Tx,K,BOX_COLS] box lists per view and
    tile (tile_grid; row-major tiles; a tile's list must hold every box that covers any of its
    pixels, nearest first); segs [KR,SEG_COLS] road segments; crossings [J,3]; style [S].
  Returns:
    rgb uint8 [V,H,W,3], depth float32 [V,H,W] (metres along the optical axis, FAR for sky),
    hit_id int32 [V,H,W] (the `id` column of the box seen at each pixel, 0 for ground / sky).

  Rays are shaded tile by tile with lax.map: one pass over a whole image would stream dozens of
  image-sized temporaries through memory, a tile's stay in cache, and each tile tests only the
  boxes that can cover it.
  """
  st = _unpack_style(style)
  num_views = origins.shape[0]
  th, tw, ty, tx = tile_grid(height, width)
  hp, wp = th * ty, tw * tx
  v, u = jnp.meshgrid(jnp.arange(hp, dtype=jnp.float32) + 0.5,
                      jnp.arange(wp, dtype=jnp.float32) + 0.5, indexing="ij")
  pix = jnp.stack([u, v, jnp.ones_like(u)], -1)  # [Hp,Wp,3]
  pix = pix.reshape(ty, th, tx, tw, 3).transpose(0, 2, 1, 3, 4).reshape(ty * tx, th * tw, 3)
  d = jnp.einsum("tpi,vji,vkj->vtpk", pix, k_inv, r_wc)  # z_cam = 1: t is the optical depth
  d = d.reshape(num_views * ty * tx, th * tw, 3)
  boxes = boxes.reshape(num_views * ty * tx, *boxes.shape[2:])
  view_of_tile = jnp.repeat(jnp.arange(num_views), ty * tx)

  def one_tile(args):
    d_tile, view, tile_boxes = args
    return _shade_rays(origins[view], d_tile, tile_boxes, segs, crossings, st)

  rgb, depth, hit_id = jax.lax.map(one_tile, (d, view_of_tile, boxes))

  def untile(a):
    a = a.reshape(num_views, ty, tx, th, tw, *a.shape[2:])
    a = jnp.moveaxis(a, 3, 2).reshape(num_views, hp, wp, *a.shape[5:])
    return a[:, :height, :width]
  return untile(rgb), untile(depth), untile(hit_id)
