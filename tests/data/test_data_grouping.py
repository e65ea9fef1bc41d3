"""group_positions: shapes, K < C, determinism, coverage, seed exclusion."""

import logging

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychodus_ptychopinn_torch.data.grouping import group_positions


@pytest.fixture
def grid():
    yy, xx = np.mgrid[0:6, 0:6]
    return np.column_stack([xx.ravel() * 5.0, yy.ravel() * 5.0]) + 0.1 * np.arange(36)[:, None]


def test_gridsize1(grid, caplog):
    assert group_positions(grid, gridsize=1).tolist() == [[i] for i in range(36)]
    g = group_positions(grid, gridsize=1, n_groups=10, seed=0)
    assert g.shape == (10, 1) and g.dtype == np.int64 and len(set(g[:, 0])) == 10
    assert group_positions(grid, gridsize=1, n_groups=4, sequential=True).ravel().tolist() == [0, 1, 2, 3]
    with caplog.at_level(logging.WARNING):
        g = group_positions(grid, gridsize=1, n_groups=100, seed=0)
    assert g.shape == (36, 1) and sorted(g[:, 0]) == list(range(36))
    assert "exceeds the 36 available positions" in caplog.text


def test_gridsize2_training_groups(grid):
    g = group_positions(grid, gridsize=2, n_groups=20, neighbor_count=6, seed=1)
    assert g.shape == (20, 4) and g.dtype == np.int64
    assert all(len(set(row)) == 4 for row in g)


def test_training_groups_drawn_from_neighbours_excluding_seed(grid):
    # sequential seeds 0..35: group i is drawn from seed i's 6 nearest others
    g = group_positions(grid, gridsize=2, n_groups=36, neighbor_count=6, sequential=True, seed=2)
    _, nn = cKDTree(grid).query(grid, k=7)
    for seed, row in enumerate(g):
        assert seed not in row
        assert set(row) <= set(nn[seed, 1:])
    # random draws: over all seeds more than the 4 nearest are used
    assert any(not set(row) <= set(nn[s, 1:5]) for s, row in enumerate(g))


def test_deterministic(grid):
    a = group_positions(grid, gridsize=2, n_groups=15, seed=7)
    b = group_positions(grid, gridsize=2, n_groups=15, seed=7)
    c = group_positions(grid, gridsize=2, n_groups=15, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_k_smaller_than_c(grid):
    with pytest.raises(ValueError, match=r"neighbor_count=3 is smaller than gridsize\*\*2=4"):
        group_positions(grid, gridsize=2, neighbor_count=3)
    with pytest.raises(ValueError, match=r"more than neighbor_count=7 positions .* got 5"):
        group_positions(grid[:5], gridsize=2, neighbor_count=7)


def test_all_positions_covers_every_pattern(grid):
    g = group_positions(grid, gridsize=2, all_positions=True, neighbor_count=4, seed=0)
    assert g.shape == (36, 4)
    assert np.array_equal(g[:, 0], np.arange(36))  # seed first, then its 3 nearest
    assert set(g.ravel()) == set(range(36))
    _, nn = cKDTree(grid).query(grid, k=4)
    assert all(set(g[i]) == set(nn[i]) for i in range(36))


def test_subsample(grid):
    subset = group_positions(grid, gridsize=1, all_positions=True, n_subsample=12, seed=3)
    assert subset.shape == (12, 1) and len(set(subset.ravel())) == 12 and subset.max() < 36
    assert np.all(np.diff(subset[:, 0]) > 0)  # kept in scan order
    g2 = group_positions(grid, gridsize=2, all_positions=True, n_subsample=12, seed=3)
    assert g2.shape == (12, 4)
    assert np.array_equal(g2[:, 0], subset[:, 0])
    assert set(g2.ravel()) <= set(subset[:, 0])  # groups only among the subsample


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        group_positions(np.zeros((4, 3)), gridsize=1)
    with pytest.raises(ValueError, match="empty scan"):
        group_positions(np.zeros((0, 2)), gridsize=1)
    with pytest.raises(ValueError, match="gridsize must be a positive integer"):
        group_positions(np.zeros((4, 2)), gridsize=0)
    with pytest.raises(ValueError, match="n_groups must be >= 1"):
        group_positions(np.zeros((4, 2)), gridsize=1, n_groups=0)
