"""Privileged geometry of LIBERO objects for the scripted expert (simulator side only).

An object's collision geometry as points in the world frame (box corners, rings of cylinder
and capsule points, sphere extremes, mesh vertices), its xy footprint (centre, principal
axes, extents) and its height. Works on robosuite's ``MjSim`` wrapper (``env.env.sim``).
"""

from dataclasses import dataclass

import numpy as np

_PLANE, _SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX, _MESH = 0, 2, 3, 4, 5, 6, 7


def body_subtree(model, root: int) -> list[int]:
    """Return ``root`` and every body below it."""
    out = [root]
    for b in range(root + 1, model.nbody):
        if int(model.body_parentid[b]) in out:
            out.append(b)
    return out


def _local_points(model, g: int) -> np.ndarray:
    """Return sample points of geom ``g`` in its own frame."""
    kind, size = int(model.geom_type[g]), np.asarray(model.geom_size[g])
    ring = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                     np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], axis=1)
    if kind == _BOX:
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
        return signs * size
    if kind in (_CYLINDER, _CAPSULE):
        r, h = size[0], size[1] + (size[0] if kind == _CAPSULE else 0.0)
        return np.concatenate([np.c_[ring * r, np.full(12, z)] for z in (-h, h)])
    if kind in (_SPHERE, _ELLIPSOID):
        radii = size if kind == _ELLIPSOID else np.full(3, size[0])
        return np.concatenate([np.eye(3) * radii, -np.eye(3) * radii])
    if kind == _MESH:
        mesh = int(model.geom_dataid[g])
        start, count = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        return np.asarray(model.mesh_vert[start:start + count], dtype=np.float64)
    return np.zeros((0, 3))


def collision_points(sim, root_body: str) -> np.ndarray:
    """Return world-frame points (N, 3) of the collision geoms of a body and its subtree."""
    model, data = sim.model, sim.data
    bodies = set(body_subtree(model, model.body_name2id(root_body)))
    pts = []
    for g in range(model.ngeom):
        if int(model.geom_bodyid[g]) not in bodies:
            continue
        if model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0:
            continue
        local = _local_points(model, g)
        if len(local):
            rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
            pts.append(local @ rot.T + np.asarray(data.geom_xpos[g]))
    if not pts:  # an object whose only geoms are visual: fall back to those
        for g in range(model.ngeom):
            if int(model.geom_bodyid[g]) in bodies:
                rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
                pts.append(_local_points(model, g) @ rot.T + np.asarray(data.geom_xpos[g]))
    return np.concatenate(pts) if pts else np.zeros((0, 3))


@dataclass
class Footprint:
    """An object's footprint on the table and its vertical extent."""

    centre: np.ndarray    # (2,) xy centre of the extents along the principal axes
    minor: np.ndarray     # (2,) unit vector of the narrow principal axis
    major: np.ndarray     # (2,) unit vector of the long principal axis
    minor_extent: float   # full width along ``minor`` (m)
    major_extent: float   # full width along ``major`` (m)
    z_min: float
    z_max: float

    @property
    def height(self) -> float:
        """Return the vertical extent (m)."""
        return self.z_max - self.z_min


def footprint(points: np.ndarray) -> Footprint:
    """Return the footprint of a point set by PCA of its xy coordinates."""
    xy = points[:, :2]
    mean = xy.mean(axis=0)
    cov = np.cov((xy - mean).T) if len(xy) > 2 else np.eye(2)
    _vals, vecs = np.linalg.eigh(cov)
    minor, major = vecs[:, 0], vecs[:, 1]
    a, b = (xy - mean) @ minor, (xy - mean) @ major
    centre = mean + minor * (a.max() + a.min()) / 2 + major * (b.max() + b.min()) / 2
    return Footprint(centre, minor, major, float(a.max() - a.min()), float(b.max() - b.min()),
                     float(points[:, 2].min()), float(points[:, 2].max()))


def span_along(points: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> float:
    """Return the full width (m) of ``points`` along the xy unit ``axis``."""
    proj = (points[:, :2] - centre) @ axis
    return float(proj.max() - proj.min()) if len(proj) else 0.0
