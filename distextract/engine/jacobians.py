"""Region Jacobians by forward differences, verified and repaired.

Between two consecutive kinks of a line the network is affine. For the region around the
line point ``x0 = x(t0)`` we know ``F(x0)`` and the slope along the line ``v``; the other
``d-1`` columns come from steps ``x0 + h·q_l`` along an orthonormal basis ``Q`` of ``v⊥``.
``stencil_checks`` extra points ``x0 + h·Qγ`` (random unit ``γ``) verify the result: a stencil
point that crossed a hyperplane shows up as residuals proportional to ``γ_l``, which locates
the bad column; it is re-measured with a smaller step. The step is set from the local kink
density so that a crossing is rare, and as large as that allows, because the rounding error of
a column is ``noise·scale/h``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .lines import Line

Query = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]  # X -> (values, scale)

MAX_ATTEMPTS = 4
# With two inputs the single column needs no locating: two checks on the mirror side tell
# a crossed column (both off) from a crossed check (one off); with three, the ratio of two
# checks' residuals names the column, and the repaired column is verified again
TWO_INPUT_CHECKS = 2  # checks used with at most three inputs
SHRINK = 4.0  # a crossed stencil is re-measured with a step this much shorter (a step n
# times shorter makes those regions' neurons about n times less precise: 4 keeps them
# within the fidelity target where 16 does not)


@dataclass(frozen=True)
class RegionPlan:
    """What to measure in one region.

    Attributes
    ----------
    region : int
        Index of the region on its line (0 = left of the first kink).
    t0 : float
        Line position of the stencil centre.
    f0 : ndarray of shape (m,) or None
        Value at ``t0`` if already paid for, else None (then it is queried).
    scale0 : float
        Magnitude at ``t0`` (rounding scale); ignored when ``f0`` is None.
    slope : ndarray of shape (m,)
        Derivative along the line in this region.
    h : float
        Stencil step.
    """

    region: int
    t0: float
    f0: np.ndarray | None
    scale0: float
    slope: np.ndarray
    h: float


@dataclass(frozen=True)
class RegionJacobian:
    """A measured region.

    Attributes
    ----------
    region : int
    t0 : float
    f0 : ndarray of shape (m,)
    J : ndarray of shape (m, d) or None
        Jacobian in input coordinates; None when every attempt failed.
    h : float
        Step finally used.
    status : str
        ``"ok"``, ``"repaired"`` (a crossed stencil row was re-measured) or ``"failed"``.
    X : ndarray of shape (n, d)
        Points queried for this region (kept for the output-layer solve).
    Y : ndarray of shape (n, m)
    precision : float
        Estimated rounding error of one Jacobian entry.
    """

    region: int
    t0: float
    f0: np.ndarray
    J: np.ndarray | None
    h: float
    status: str
    X: np.ndarray
    Y: np.ndarray
    precision: float


def check_directions(line: Line, region: int, count: int) -> np.ndarray:
    """Seeded check directions in basis coordinates, shape (count, d-1), unit norm.

    The first has random signs and equal weights, so an error in *any* stencil column shows
    in its residual with the same weight ``1/sqrt(d-1)`` (a Gaussian direction can give one
    column a tiny weight and miss it). The others are Gaussian: their residual ratios locate
    the bad column.

    With two inputs (one column) unit directions are ±1, and +1 repeats the column's own
    point, which then confirms whatever that point crossed: the checks are the mirror point
    and points at other distances along the column instead, ``-1`` then
    ``±(1 - s/(count+1))`` alternating sides (two checks: ``-1, -2/3``; three: ``-1, -3/4,
    +1/2``).
    """
    if line.dim == 2:
        return np.array([[-1.0]] + [[(-1.0) ** s * (1.0 - s / (count + 1))]
                                    for s in range(1, count)])
    rng = np.random.default_rng([line.seed, 2, region])
    G = rng.standard_normal((count, line.dim - 1))
    G[0] = np.where(G[0] >= 0, 1.0, -1.0)
    return G / np.linalg.norm(G, axis=1, keepdims=True)


def _verify(D: np.ndarray, f0: np.ndarray, fz: np.ndarray, gam: np.ndarray, h: float,
            tol: float) -> tuple[str, int]:
    """Check columns ``D`` (m, d-1) against check values ``fz`` (c, m).

    Returns (verdict, index): ``("ok", -1)``, ``("column", l)``, ``("check", s)`` or
    ``("fail", -1)``.
    """
    pred = f0[None, :] + h * (gam @ D.T)  # (c, m)
    rho = fz - pred
    bad = np.max(np.abs(rho), axis=1) > tol
    if not bad.any():
        return "ok", -1
    # A single bad column l gives rho_s = -delta * gam[s, l] for every check s: the
    # Gaussian checks' residual ratio names l, and every check must agree with that delta.
    s1, s2 = (1, 2) if gam.shape[0] >= 3 else (0, 1)
    r1, r2 = rho[s1], rho[s2]
    g1, g2 = gam[s1], gam[s2]
    num = np.max(np.abs(np.outer(g2, r1) - np.outer(g1, r2)), axis=1)
    den = np.max(np.abs(r1)) + np.max(np.abs(r2))
    if den > 0:
        score = num / den
        best = int(np.argmin(score))
        order = np.sort(score)
        unique = len(order) < 2 or order[1] > 10 * max(score[best], 1e-12)
        if score[best] < 1e-3 and unique:
            g = gam[:, best]
            s_ref = int(np.argmax(np.abs(g[[s1, s2]])))
            s_ref = (s1, s2)[s_ref]
            delta = -rho[s_ref] / g[s_ref]
            pred = -np.outer(g, delta)
            if np.max(np.abs(rho - pred)) <= tol * 4:
                return "column", best
    if bad.sum() == 1:  # one check point crossed a hyperplane; the columns are fine
        return "check", int(np.flatnonzero(bad)[0])
    return "fail", -1


def measure_regions(query: Query, line: Line, plans: list[RegionPlan], noise: float,
                    check_factor: float, n_checks: int) -> list[RegionJacobian]:
    """Measure the Jacobian of every planned region of ``line``.

    Parameters
    ----------
    query : callable
        ``query(X (n, d)) -> (values (n, m), scale (n,))``; called once per attempt round for
        all regions together.
    line : Line
    plans : list of RegionPlan
    noise : float
        Relative output precision.
    check_factor : float
    n_checks : int

    Returns
    -------
    list of RegionJacobian, in the order of ``plans``.
    """
    d = line.dim
    if d <= 3:
        n_checks = min(n_checks, TWO_INPUT_CHECKS)
    Q = line.basis()  # (d, d-1)
    B = np.concatenate([line.v[:, None], Q], axis=1)  # (d, d)
    state = []
    for p in plans:
        state.append({
            "plan": p, "h": p.h, "x0": line.points([p.t0])[0], "f0": p.f0, "s0": p.scale0,
            "gam": check_directions(line, p.region, n_checks), "D": None, "status": None,
            "X": [], "Y": [], "attempt": 0, "column": -1,
        })
    pending = list(range(len(state)))
    while pending:
        rows, owners = [], []
        for i in pending:
            st = state[i]
            x0, h = st["x0"], st["h"]
            if st["column"] >= 0:  # re-measure a single crossed column with a smaller step
                rows.append(x0 + h * Q[:, st["column"]])
                owners.append((i, "col", st["column"]))
                continue
            if st["f0"] is None:
                rows.append(x0)
                owners.append((i, "x0", -1))
            rows.append(x0[None, :] + h * Q.T)
            owners.extend((i, "q", l) for l in range(d - 1))
            rows.append(x0[None, :] + h * (st["gam"] @ Q.T))
            owners.extend((i, "z", s) for s in range(n_checks))
        X = np.vstack([r if r.ndim == 2 else r[None, :] for r in rows])
        Y, S = query(X)
        m = Y.shape[1]
        # scatter answers
        per = {i: {"q": np.empty((d - 1, m)), "z": np.empty((n_checks, m)), "col": None,
                   "scale": []} for i in pending}
        for n, (i, kind, l) in enumerate(owners):
            st = state[i]
            st["X"].append(X[n])
            st["Y"].append(Y[n])
            per[i]["scale"].append(S[n])
            if kind == "x0":
                st["f0"], st["s0"] = Y[n], float(S[n])
            elif kind == "q":
                per[i]["q"][l] = Y[n]
            elif kind == "z":
                per[i]["z"][l] = Y[n]
            else:
                per[i]["col"] = Y[n]
        next_pending = []
        for i in pending:
            st = state[i]
            got = per[i]
            scale = max(st["s0"], max(got["scale"]))
            tol = check_factor * noise * scale * 3.0
            h = st["h"]
            if st["column"] >= 0:
                l = st["column"]
                D = st["D"].copy()
                D[:, l] = (got["col"] - st["f0"]) / h
                verdict, _ = _verify(D, st["f0"], st["zv"], st["gam"], st["hz"], tol)
                st["column"] = -1
                if verdict == "ok":
                    st["D"], st["status"] = D, "repaired"
                    st["prec_h"] = h
                    continue
                st["attempt"] += 1
                st["h"] = st["hz"] / SHRINK
                if st["attempt"] >= MAX_ATTEMPTS:
                    st["status"] = "failed"
                    continue
                next_pending.append(i)
                continue
            D = (got["q"] - st["f0"][None, :]).T / h  # (m, d-1)
            verdict, idx = _verify(D, st["f0"], got["z"], st["gam"], h, tol)
            if verdict == "ok" or verdict == "check":
                st["D"], st["status"], st["prec_h"] = D, "ok", h
                continue
            st["attempt"] += 1
            if st["attempt"] >= MAX_ATTEMPTS:
                st["status"] = "failed"
                continue
            if verdict == "column":
                st["D"], st["zv"], st["hz"] = D, got["z"], h
                st["column"] = idx
                st["h"] = h / SHRINK
            else:
                st["h"] = h / SHRINK
            next_pending.append(i)
        pending = next_pending

    out = []
    for st in state:
        p = st["plan"]
        J = None
        prec = np.inf
        if st["status"] != "failed":
            JB = np.concatenate([p.slope[:, None], st["D"]], axis=1)  # (m, d) in basis B
            J = JB @ B.T
            prec = 2.0 * noise * st["s0"] / st["prec_h"]
        out.append(RegionJacobian(
            region=p.region, t0=p.t0, f0=np.asarray(st["f0"]), J=J, h=st["h"],
            status=st["status"], X=np.asarray(st["X"]).reshape(-1, d),
            Y=np.asarray(st["Y"]).reshape(len(st["X"]), -1), precision=prec))
    return out
