import numpy as np
import pytest

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.fusion import HYBRID_DEPTH, RRF_C, FusionWeights, depth_for, fuse_rows, rrf, tiered_fusion


def test_rrf_sums_weighted_reciprocal_ranks_and_breaks_ties_by_key():
    fused = rrf([["a", "b", "c"], ["c", "d"]], [1.0, 0.5])
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["c"] == pytest.approx(1 / 63 + 0.5 / 61)
    assert scores["d"] == pytest.approx(0.5 / 62)
    assert [key for key, _ in fused] == ["c", "a", "b", "d"]
    tied = rrf([["y"], ["x"]], [1.0, 1.0])  # rank 1 on one side each: equal scores, key order
    assert [key for key, _ in tied] == ["x", "y"]
    assert rrf([["a", "b"], ["c"]], [0.0, 1.0]) == [("c", pytest.approx(1 / 61))]  # weight 0: that side is off
    with pytest.raises(ValueError):
        rrf([["a"]], [1.0, 1.0])


def test_depth_is_constant_up_to_the_documented_depth_then_doubles():
    assert [depth_for(k) for k in (1, 10, HYBRID_DEPTH)] == [HYBRID_DEPTH] * 3
    assert [depth_for(k) for k in (101, 200, 201, 1000)] == [200, 200, 400, 1600]
    assert RRF_C == 60


class Sides:
    """Each side's top-d of a fixed ranking, as a table would return them; records the depths asked."""

    def __init__(self, seed: int, n: int = 1_000) -> None:
        rng = np.random.default_rng(seed)
        self.vector = [{"id": f"c{i}"} for i in rng.permutation(n)]
        self.text = [{"id": f"c{i}"} for i in rng.permutation(n)[: n // 3]]  # full text matches fewer
        self.depths: list[int] = []

    def __call__(self, depth: int) -> tuple[list[dict], list[dict]]:
        self.depths.append(depth)
        return self.vector[:depth], self.text[:depth]


@pytest.mark.parametrize("weights", [FusionWeights(), FusionWeights(0.7, 0.3), FusionWeights(0.0, 1.0)])
def test_the_top_n_never_changes_as_k_grows(weights):
    for seed in range(5):
        ids = lambda k: [row["id"] for row in tiered_fusion(Sides(seed), k, weights)]
        longest = ids(1_000)
        for k in (1, 10, 99, 100, 101, 150, 200, 201, 333, 700):
            assert ids(k) == longest[:k], (seed, k)
    # what cutting each side to k before fusing does instead (the old behaviour): the top-10 moves
    sides = Sides(0)
    cut = lambda k: [key for key, _ in rrf([[r["id"] for r in side[:k]] for side in (sides.vector, sides.text)],
                                           [1.0, 1.0])][:10]
    assert cut(10) != cut(100)


def test_tiers_fetch_only_the_depths_k_needs_and_stop_when_the_sides_run_out():
    sides = Sides(1)
    tiered_fusion(sides, 10, FusionWeights())
    assert sides.depths == [HYBRID_DEPTH]
    sides = Sides(1)
    assert len(tiered_fusion(sides, 250, FusionWeights())) == 250
    assert sides.depths == [100, 200, 400]
    sides = Sides(1, n=150)
    assert len(tiered_fusion(sides, 10_000, FusionWeights())) == 150  # everything, then stop
    assert sides.depths == [100, 200]
    sides = Sides(1, n=150)
    assert len(tiered_fusion(sides, 10_000, FusionWeights(0.0, 1.0))) == 50  # only the text side counts
    assert sides.depths == [100]


def test_the_first_tier_is_plain_weighted_rrf_of_each_sides_top_100():
    sides, weights = Sides(2), FusionWeights(0.7, 0.3)
    expected = rrf([[r["id"] for r in sides.vector[:100]], [r["id"] for r in sides.text[:100]]], [0.7, 0.3])
    rows = tiered_fusion(sides, 100, weights)
    assert [(r["id"], r["_rrf"]) for r in rows] == expected[:100]


def test_fuse_rows_keeps_each_sides_row_and_the_fused_score():
    vector = [{"id": "a", "_distance": 0.1}, {"id": "b", "_distance": 0.2}]
    text = [{"id": "b", "title": "B"}, {"id": "c", "title": "C"}]
    rows = fuse_rows(vector, text, 2, FusionWeights())
    assert [r["id"] for r in rows] == ["b", "a"]
    assert rows[0]["_rrf"] == pytest.approx(1 / 62 + 1 / 61)
    assert rows[1] == {"id": "a", "_distance": 0.1, "_rrf": pytest.approx(1 / 61)}


@pytest.mark.parametrize("given, expected", [
    (None, FusionWeights(1.0, 1.0)), ("0.7,0.3", FusionWeights(0.7, 0.3)), ((2, 1), FusionWeights(2.0, 1.0)),
    (FusionWeights(0.0, 1.0), FusionWeights(0.0, 1.0)),
])
def test_weights_from_each_accepted_form(given, expected):
    assert FusionWeights.of(given) == expected


@pytest.mark.parametrize("bad", ["0.7", "a,b", "0.7,0.3,1", "-1,1", "0,0", "nan,1", "inf,1"])
def test_bad_weights_are_config_errors(bad):
    with pytest.raises(ConfigError):
        FusionWeights.of(bad)
