"""Neighbour grouping of scan positions (PtychoPINN ``gridsize`` semantics), numpy only.

gridsize 1: every group is one pattern (a sampled seed). gridsize g > 1: C = g**2 patterns
per group; for training a seed's K = ``neighbor_count`` nearest neighbours are found with a
k-d tree (the seed itself excluded) and C distinct indices are drawn at random from them,
as PtychoPINN's TensorFlow ``generate_grouped_data`` does (so the seed is usually not in
its own group). For inference (``all_positions=True``) the draw would leave some patterns
unused, so each group is instead the seed plus its C-1 nearest neighbours: every position
is a seed once, hence every pattern appears in at least one group.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["group_positions"]

logger = logging.getLogger(__name__)


def _check_positions(positions_px: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions_px must have shape (M, 2) with columns (x, y); got {pos.shape}")
    if pos.shape[0] == 0:
        raise ValueError("cannot group an empty scan: positions_px has no rows")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_px contains NaN or infinite values")
    return pos


def _choose_seeds(
    m: int, n_groups: int | None, rng: np.random.Generator, *, sequential: bool
) -> np.ndarray:
    if n_groups is None:
        return np.arange(m)
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1 (or None for one group per position); got {n_groups}")
    if n_groups > m:
        logger.warning("n_groups=%d exceeds the %d available positions; using %d groups", n_groups, m, m)
        n_groups = m
    if sequential:
        return np.arange(n_groups)
    return rng.choice(m, size=n_groups, replace=False)


def group_positions(
    positions_px: np.ndarray,
    *,
    gridsize: int,
    n_groups: int | None = None,
    neighbor_count: int = 4,
    seed: int | None = None,
    sequential: bool = False,
    all_positions: bool = False,
    n_subsample: int | None = None,
) -> np.ndarray:
    """Return an ``(G, C)`` int64 array of pattern indices, C = gridsize**2.

    n_groups: number of seeds (sampled without replacement with ``seed``, capped at the
        number of positions with a warning); None means every position once, in order.
    sequential: take the first ``n_groups`` positions as seeds instead of sampling.
    all_positions: every position is a seed once, in order (inference); ignores n_groups.
    n_subsample: first draw that many positions (seeded, kept in scan order) and group
        only among them; returned indices still refer to the full scan.
    """
    pos = _check_positions(positions_px)
    if int(gridsize) != gridsize or gridsize < 1:
        raise ValueError(f"gridsize must be a positive integer; got {gridsize}")
    channels = int(gridsize) ** 2
    rng = np.random.default_rng(seed)

    subset = np.arange(pos.shape[0])
    if n_subsample is not None:
        if n_subsample < 1:
            raise ValueError(f"n_subsample must be >= 1; got {n_subsample}")
        if n_subsample < pos.shape[0]:
            subset = np.sort(rng.choice(pos.shape[0], size=n_subsample, replace=False))
    sub = pos[subset]
    m = sub.shape[0]

    if channels > 1:
        if neighbor_count < channels:
            raise ValueError(
                f"neighbor_count={neighbor_count} is smaller than gridsize**2={channels}: a group "
                f"draws {channels} distinct neighbours; expected neighbor_count >= {channels}"
            )
        if m <= neighbor_count:
            raise ValueError(
                f"grouping needs more than neighbor_count={neighbor_count} positions "
                f"(gridsize={gridsize}); got {m}"
            )
    elif m < 1:  # pragma: no cover - guarded by _check_positions
        raise ValueError("no positions to group")

    if all_positions:
        seeds = np.arange(m)
    else:
        seeds = _choose_seeds(m, n_groups, rng, sequential=sequential)

    if channels == 1:
        local = seeds[:, None]
    elif all_positions:
        local = _nearest_groups(sub, seeds, channels)
    else:
        local = _random_neighbour_groups(sub, seeds, channels, neighbor_count, rng)
    return subset[local].astype(np.int64)


def _neighbours_without_seed(pos: np.ndarray, seeds: np.ndarray, k: int) -> np.ndarray:
    """(G, k) indices of each seed's k nearest other positions, nearest first."""
    _, idx = cKDTree(pos).query(pos[seeds], k=k + 1)
    idx = np.asarray(idx).reshape(len(seeds), k + 1)
    # Push the seed to the end (stable, so distance order is kept), then drop the last
    # column; with duplicate positions the seed may not be first, or not returned at all.
    is_seed = idx == seeds[:, None]
    order = np.argsort(is_seed, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)[:, :k]


def _random_neighbour_groups(
    pos: np.ndarray, seeds: np.ndarray, channels: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    neighbours = _neighbours_without_seed(pos, seeds, k)
    picks = np.argsort(rng.random(neighbours.shape), axis=1)[:, :channels]
    return np.take_along_axis(neighbours, picks, axis=1)


def _nearest_groups(pos: np.ndarray, seeds: np.ndarray, channels: int) -> np.ndarray:
    neighbours = _neighbours_without_seed(pos, seeds, channels - 1)
    return np.concatenate([seeds[:, None], neighbours], axis=1)
