import numpy as np
import pytest

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.fusion import HYBRID_DEPTH, RRF_C, FusionWeights, depth_for, fuse_rows, max_gain, rrf


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


def test_depth_is_constant_up_to_the_documented_depth():
    assert [depth_for(k) for k in (1, 10, HYBRID_DEPTH)] == [HYBRID_DEPTH] * 3
    assert depth_for(HYBRID_DEPTH + 1) == HYBRID_DEPTH + 1
    assert RRF_C == 60


def test_fetching_deeper_raises_no_score_by_more_than_max_gain():
    # The documented bound for k > HYBRID_DEPTH: random permutations of 1,000 ids per side.
    rng = np.random.default_rng(3)
    weights = FusionWeights(0.7, 0.3)
    for _ in range(20):
        sides = [list(rng.permutation(1000)) for _ in range(2)]
        shallow = dict(rrf([s[:HYBRID_DEPTH] for s in sides], [weights.vector, weights.text]))
        deep = dict(rrf(sides, [weights.vector, weights.text]))
        gains = [deep[key] - shallow.get(key, 0.0) for key in deep]
        assert min(gains) >= 0
        assert max(gains) <= max_gain(weights) + 1e-12
        assert max(gains) > 0.5 * max_gain(weights)  # the bound is close to tight, not vacuous


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
