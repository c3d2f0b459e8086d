"""Style domains ("cities") of the synthetic world.

A domain fixes appearance (palette, light, weather) and layout statistics (lane width, traffic side,
building density and height, street furniture). Training on one and testing on the other measures
domain generalisation. Colours are linear RGB in [0, 1].
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  location: str                  # nuScenes-style log location written by the exporter
  traffic_side: int              # +1 drive on the right, -1 on the left
  lane_width: float              # metres
  lanes_per_direction: int
  kerb_width: float
  sidewalk_width: float
  building_gap: tuple            # (min, max) metres between buildings along a street side
  building_height: tuple         # (min, max) metres
  building_depth: tuple          # (min, max) metres away from the street
  building_colors: tuple         # facade colours
  vehicle_colors: tuple
  pole_spacing: float            # street lamps every this many metres (per side)
  tree_spacing: float            # trees every this many metres (0 = none)
  vehicle_density: float         # moving vehicles per 100 m of lane
  parked_density: float          # parked vehicles per 100 m of kerb
  pedestrian_density: float      # pedestrians per 100 m of sidewalk
  speed_range: tuple             # ego / traffic cruise speed, m/s
  sky_zenith: tuple
  sky_horizon: tuple
  sun_direction: tuple           # towards the sun, world frame (normalised by the renderer)
  sun_color: tuple
  ambient: float
  fog_density: float             # 1/m, exponential fog towards sky_horizon
  asphalt: tuple
  marking: tuple                 # lane marking colour
  centre_marking: tuple          # colour of the line between the two directions
  kerb_colors: tuple             # two alternating kerb stone colours
  sidewalk: tuple
  ground: tuple                  # verge / grass
  window: tuple


DOMAINS: dict[str, Domain] = {
    # Boston-like: right-hand traffic, wide lanes, dense low brick buildings, overcast afternoon.
    "boston": Domain(
        name="boston", location="boston-seaport", traffic_side=1, lane_width=3.7,
        lanes_per_direction=2, kerb_width=0.3, sidewalk_width=3.0,
        building_gap=(0.5, 4.0), building_height=(7.0, 18.0), building_depth=(10.0, 18.0),
        building_colors=((0.45, 0.20, 0.14), (0.55, 0.28, 0.18), (0.38, 0.30, 0.26),
                         (0.60, 0.55, 0.48), (0.32, 0.16, 0.12)),
        vehicle_colors=((0.10, 0.10, 0.12), (0.55, 0.55, 0.58), (0.75, 0.75, 0.78),
                        (0.45, 0.05, 0.05), (0.05, 0.12, 0.35), (0.85, 0.85, 0.85)),
        pole_spacing=28.0, tree_spacing=0.0, vehicle_density=2.5, parked_density=6.0,
        pedestrian_density=3.0, speed_range=(7.0, 12.0),
        sky_zenith=(0.42, 0.47, 0.55), sky_horizon=(0.72, 0.74, 0.76),
        sun_direction=(-0.4, 0.5, 0.35), sun_color=(0.75, 0.73, 0.70), ambient=0.48,
        fog_density=0.010, asphalt=(0.24, 0.24, 0.25), marking=(0.85, 0.85, 0.82),
        centre_marking=(0.85, 0.70, 0.15), kerb_colors=((0.55, 0.55, 0.54), (0.50, 0.50, 0.50)),
        sidewalk=(0.52, 0.50, 0.48), ground=(0.30, 0.34, 0.22), window=(0.12, 0.15, 0.20)),
    # Singapore-like: left-hand traffic, narrower lanes, sparse tall pale towers, trees, bright sun.
    "singapore": Domain(
        name="singapore", location="singapore-onenorth", traffic_side=-1, lane_width=3.2,
        lanes_per_direction=2, kerb_width=0.25, sidewalk_width=2.5,
        building_gap=(8.0, 25.0), building_height=(20.0, 60.0), building_depth=(14.0, 25.0),
        building_colors=((0.88, 0.88, 0.84), (0.80, 0.86, 0.88), (0.92, 0.85, 0.72),
                         (0.75, 0.80, 0.75), (0.95, 0.95, 0.95)),
        vehicle_colors=((0.95, 0.95, 0.95), (0.85, 0.80, 0.10), (0.10, 0.10, 0.10),
                        (0.20, 0.45, 0.75), (0.70, 0.70, 0.72), (0.80, 0.20, 0.15)),
        pole_spacing=35.0, tree_spacing=12.0, vehicle_density=1.5, parked_density=1.0,
        pedestrian_density=1.5, speed_range=(9.0, 14.0),
        sky_zenith=(0.20, 0.42, 0.85), sky_horizon=(0.68, 0.82, 0.95),
        sun_direction=(0.3, -0.2, 0.9), sun_color=(1.10, 1.05, 0.95), ambient=0.40,
        fog_density=0.003, asphalt=(0.30, 0.30, 0.32), marking=(0.95, 0.95, 0.95),
        centre_marking=(0.95, 0.95, 0.95), kerb_colors=((0.85, 0.85, 0.85), (0.15, 0.15, 0.15)),
        sidewalk=(0.70, 0.62, 0.55), ground=(0.22, 0.45, 0.15), window=(0.25, 0.40, 0.50)),
}


def get_domain(name: str) -> Domain:
  if name not in DOMAINS:
    raise ValueError(f"unknown domain {name!r}; known domains: {sorted(DOMAINS)}")
  return DOMAINS[name]
