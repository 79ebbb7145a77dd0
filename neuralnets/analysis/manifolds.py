"""Slow points grouped into what they form: isolated points, lines, rings, planes.

A fixed-point search started from many states returns many points; on a line attractor they all lie on
one line, and listing them one by one hides that. `group_points` links points closer than
`link_frac` × the scale of the visited states (single linkage: a chain of close points is one group),
then reads each group's shape from the spread of its members: the principal axes whose standard
deviation exceeds `DIM_REL` of the largest one (and `DIM_ABS` × scale) count as its dimension; one
axis: a line; two: a ring when a circle fits the members' radii to within `RING_CV` (coefficient of
variation) and they cover most of it, else a plane. The extent along each axis is the members' range.

`modes` lists the modes of a Jacobian spectrum a report shows: every mode slower than a stated time
scale (and every growing one), complex pairs once, instead of a fixed number of modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralnets.errors import AnalysisError

MIN_TAU_BINS = 5  # modes slower than this many bins are listed (neuralnets-analyze --min-tau-ms's default)

LINK_FRAC = 0.3  # points closer than this × the visited states' RMS spread are linked into one group
DIM_REL = 0.1  # an axis counts when its sd is at least this fraction of the group's largest sd ...
DIM_ABS = 0.01  # ... and at least this fraction of the scale (a tight cluster is a point, not a line)
RING_CV = 0.15  # a 2-D group is a ring when the sd of its radii is below this fraction of their mean ...
RING_COVER = 0.75  # ... and its members span at least this fraction of the full circle
ALIGN_MIN = 0.9  # |cos| between a line of slow points and the slowest mode: a line attractor


@dataclass
class PointGroup:
    """One group of fixed/slow points. `members (M,)` indices into the points, `kind` ('point', 'line',
    'ring', 'arc', 'plane' or 'D-dimensional'), `dimension`, `center (H,)`, `axes (d, H)` unit principal
    axes, `extent (d,)` the members' range along each axis (state units), `radius` (rings and arcs: the
    fitted circle's, else None), `representative` the member with the lowest q."""

    members: np.ndarray
    kind: str
    dimension: int
    center: np.ndarray
    axes: np.ndarray
    extent: np.ndarray
    radius: float | None
    representative: int


def _link(states: np.ndarray, radius: float) -> np.ndarray:
    """Connected components of the graph joining points closer than `radius`: labels `(P,)`."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    close = cdist(states, states) <= radius  # (P, P)
    return connected_components(close, directed=False)[1]


def _circle(xy: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares circle through `xy (M, 2)` (x² + y² = 2 a x + 2 b y + c): centre, radius and the
    members' radii `(M,)` from that centre."""
    a = np.column_stack([2 * xy, np.ones(len(xy))])  # (M, 3)
    sol = np.linalg.lstsq(a, (xy**2).sum(1), rcond=None)[0]
    centre = sol[:2]
    radius = float(np.sqrt(max(sol[2] + centre @ centre, 0.0)))
    return centre, radius, np.sqrt(((xy - centre) ** 2).sum(1))


def _angular_cover(xy: np.ndarray, centre: np.ndarray) -> float:
    """Fraction of the circle around `centre` the points `xy (M, 2)` span (1 − largest angular gap / 2π)."""
    ang = np.sort(np.arctan2(xy[:, 1] - centre[1], xy[:, 0] - centre[0]))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * np.pi]))
    return float(1 - gaps.max() / (2 * np.pi))


def _dimension(pts: np.ndarray, scale: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(dimension, axes (d, H), centre (H,)) of points `pts (M, H)` from their principal axes' spread."""
    center = pts.mean(0)
    if len(pts) < 2:
        return 0, np.zeros((0, pts.shape[1])), center
    _, sv, vt = np.linalg.svd(pts - center, full_matrices=False)
    sd = sv / np.sqrt(len(pts))  # (r,) sd along each principal axis
    dim = int(((sd >= DIM_REL * sd[0]) & (sd >= DIM_ABS * scale)).sum())
    return dim, vt[:dim], center


def _merge_collinear(x: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """Join linked groups that lie on one manifold: a line broken by a gap in the search's coverage is
    one line. Two groups merge when one has a dimension, their union has no more dimensions than the
    larger-dimensional one, and the gap between them is within the larger group's extent."""
    from scipy.spatial.distance import cdist

    changed = True
    while changed:
        changed = False
        labs = list(np.unique(labels))
        for i, la in enumerate(labs):
            for lb in labs[i + 1 :]:
                pa, pb = x[labels == la], x[labels == lb]
                (da, _, _), (db, _, _) = _dimension(pa, scale), _dimension(pb, scale)
                if max(da, db) == 0 or _dimension(np.concatenate([pa, pb]), scale)[0] > max(da, db):
                    continue
                big = pa if len(pa) >= len(pb) else pb
                reach = np.sqrt(((big - big.mean(0)) ** 2).sum(1)).max() * 2  # the larger group's extent
                if cdist(pa, pb).min() <= reach:
                    labels = np.where(labels == lb, la, labels)
                    changed = True
                    break
            if changed:
                break
    return labels


def group_points(
    states: np.ndarray, scale: float, q: np.ndarray | None = None, link_frac: float = LINK_FRAC
) -> list[PointGroup]:
    """Group points `states (P, H)` into isolated points and the manifolds they trace.

    `scale`: the spread of the states the model visits (RMS distance from their mean), which sets both
    the linking radius (`link_frac` × scale) and how wide a group must be to have a dimension; linked
    groups on one manifold are then joined (`_merge_collinear`). `q (P,)`: the points' speeds (the
    representative is the slowest; default: the first member). Groups are ordered by size, largest first."""
    x = np.asarray(states, dtype=np.float64)
    if x.ndim != 2:
        raise AnalysisError(f"points must be (P, H); got shape {x.shape}")
    if not (np.isfinite(scale) and scale > 0):
        raise AnalysisError(f"scale must be a positive number; got {scale!r}")
    if len(x) == 0:
        return []
    qq = np.zeros(len(x)) if q is None else np.asarray(q, dtype=np.float64)
    labels = _merge_collinear(x, _link(x, link_frac * scale), scale)
    groups = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        pts = x[idx]
        dim, axes, center = _dimension(pts, scale)  # axes (d, H)
        proj = (pts - center) @ axes.T  # (M, d)
        extent = proj.max(0) - proj.min(0) if dim else np.zeros(0)
        kind, radius = {0: "point", 1: "line", 2: "plane"}.get(dim, f"{dim}-dimensional"), None
        if dim == 2 and len(idx) >= 5:
            centre, r, radii = _circle(proj)
            if r > 0 and radii.std() < RING_CV * r:
                kind, radius = ("ring" if _angular_cover(proj, centre) >= RING_COVER else "arc"), r
                center = center + centre @ axes  # the circle's centre, not the members' mean
        groups.append(
            PointGroup(
                members=idx, kind=kind, dimension=dim, center=center, axes=axes, extent=extent,
                radius=radius, representative=int(idx[np.argmin(qq[idx])]),
            )
        )  # fmt: skip
    return sorted(groups, key=lambda g: -len(g.members))


def slowest_direction_alignment(group: PointGroup, eigenvectors: np.ndarray) -> float | None:
    """|cos| between a line's axis and the slowest eigenvector (largest |λ|, column 0) of its
    representative's Jacobian, `eigenvectors (H, H)` (columns sorted as the eigenvalues); None unless
    the group is a line. Near 1: the line runs along the slow mode, as a line attractor does."""
    if group.kind != "line":
        return None
    v = np.asarray(eigenvectors)[:, 0]
    v = np.real(v) if np.abs(np.imag(v)).max() < 1e-12 else np.abs(v)
    return float(abs(group.axes[0] @ v) / max(np.linalg.norm(v), 1e-300))


def modes(eigenvalues: np.ndarray, bin_size: float, min_tau: float) -> list[dict]:
    """The modes of one spectrum `eigenvalues (H,)` of a one-bin map worth showing: every growing mode
    (|λ| > 1) and every decaying one with τ = −dt/ln|λ| >= `min_tau` seconds, complex pairs once,
    slowest first. Each: {"abs": |λ|, "tau_s": τ (inf for |λ| = 1, negative when growing), "hz"}."""
    lam = np.asarray(eigenvalues)
    keep = lam[np.imag(lam) >= -1e-12]  # one of each conjugate pair (and every real eigenvalue)
    out = []
    for v in keep[np.argsort(-np.abs(keep), kind="stable")]:
        a = float(abs(v))
        tau = np.inf if a == 1 else float(-bin_size / np.log(a)) if a > 0 else 0.0
        if a > 1 or tau >= min_tau:
            out.append({"abs": a, "tau_s": tau, "hz": float(abs(np.angle(v)) / (2 * np.pi * bin_size))})
    return out


def describe_group(group: PointGroup, alignment: float | None, slowest_tau: float, window: float) -> str:
    """What a group is, in words: 'isolated point', or a 'line attractor' (a line along its slowest mode,
    |cos| >= ALIGN_MIN) / 'ring attractor' / 'arc attractor' when its slowest time constant
    `slowest_tau` (s) is longer than `window` (s, e.g. a trial), else its shape ('line', 'plane', ...)."""
    if group.kind == "point":
        return "isolated point"
    slow = not np.isfinite(slowest_tau) or slowest_tau > window
    if group.kind == "line" and alignment is not None and alignment >= ALIGN_MIN and slow:
        return f"line attractor (along its slowest mode: cos {alignment:.2f})"
    if group.kind in ("ring", "arc") and slow:
        return f"{group.kind} attractor"
    return group.kind


def format_modes(ms: list[dict]) -> str:
    """Modes (`modes`) as 'τ ms @ f Hz' items, slowest first, growing ones marked; 'none' for none."""
    out = []
    for m in ms:
        tau = "∞" if not np.isfinite(m["tau_s"]) else f"{abs(m['tau_s']) * 1e3:.0f}"
        hz = f" @ {m['hz']:.2f} Hz" if m["hz"] > 0 else ""
        out.append(f"{'grows ' if m['abs'] > 1 else ''}{tau} ms{hz}")
    return "; ".join(out) or "none"


def describe_kinds(kinds: list[str], representative: str) -> str:
    """The slowest point's kind, with the mix of kinds over a group's members when they differ (points
    along a slow line may be stable or saddles by a hair's breadth), e.g. 'stable (34 stable, 20 saddle)'."""
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    mix = ", ".join(f"{n} {k}" for k, n in counts.items())
    return representative if len(counts) <= 1 else f"{representative} ({mix})"
