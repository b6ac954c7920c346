import pickle

import numpy as np
import pytest

from indexflow.tasks.errors import BadResponseError
from indexflow.tasks.normalize import MIN_NORM, find_bad_rows, l2_normalize


def test_rows_become_unit_length_float32_and_keep_direction():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(7, 16)) * rng.uniform(0.01, 50, size=(7, 1))
    out = l2_normalize(vectors, expected_dim=16)
    assert out.dtype == np.float32
    assert out.shape == (7, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    cos = (out * vectors).sum(axis=1) / np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)


def test_empty_batch_is_fine():
    out = l2_normalize(np.zeros((0, 8), dtype=np.float32), expected_dim=8)
    assert out.shape == (0, 8)


@pytest.mark.parametrize("shape", [(3, 15), (16,), (2, 3, 16)])
def test_wrong_shape_is_a_bad_response(shape):
    with pytest.raises(BadResponseError) as info:
        l2_normalize(np.ones(shape), expected_dim=16)
    assert info.value.reason == "shape"
    assert info.value.shape == shape
    assert info.value.expected_dim == 16


def test_bad_rows_are_named():
    vectors = np.ones((5, 4), dtype=np.float32)
    vectors[1, 2] = np.nan
    vectors[3] = 0.0
    vectors[4, 0] = np.inf
    assert find_bad_rows(vectors) == {1: "non-finite", 3: "zero norm", 4: "non-finite"}
    with pytest.raises(BadResponseError) as info:
        l2_normalize(vectors, expected_dim=4)
    err = info.value
    assert err.rows == [1, 3, 4]
    assert err.reasons == {1: "non-finite", 3: "zero norm", 4: "non-finite"}
    assert err.transient is True
    copy = pickle.loads(pickle.dumps(err))
    assert copy.rows == [1, 3, 4]


def test_near_zero_norm_is_bad_but_small_real_vectors_are_not():
    vectors = np.array([[1e-9, 0.0], [1e-3, 1e-3]])
    assert find_bad_rows(vectors) == {0: "zero norm"}


def test_good_rows_can_be_kept_after_find_bad_rows():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    bad = find_bad_rows(vectors)
    keep = [i for i in range(len(vectors)) if i not in bad]
    out = l2_normalize(vectors[keep], expected_dim=2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]], atol=1e-7)


@pytest.mark.parametrize(("vectors", "rows"), [
    (np.ones((3, 15)), [0, 1, 2]),  # every row of the batch must be embedded again
    (np.ones((2, 3, 16)), [0, 1]),
    (np.ones(16), list(range(16))),  # a flat answer: each entry along its only axis
    (np.float64(1.0), []),  # a scalar has no rows
])
def test_a_wrong_shape_names_every_row_of_the_batch(vectors, rows):
    with pytest.raises(BadResponseError) as info:
        l2_normalize(vectors, expected_dim=16)
    assert (info.value.rows, info.value.reason) == (rows, "shape")


def test_a_batch_that_is_not_numbers_is_a_bad_response_naming_every_row():
    with pytest.raises(BadResponseError) as info:
        l2_normalize(np.full((2, 4), "x"), expected_dim=4)
    err = info.value
    assert (err.rows, err.reason, err.shape, err.expected_dim) == ([0, 1], "dtype", (2, 4), 4)
    assert str(err) == "embedding batch has dtype <U1, expected numbers"


def test_the_error_names_the_first_bad_row_and_its_reason():
    vectors = np.ones((5, 3))
    vectors[2] = 0.0
    vectors[4, 1] = np.nan
    with pytest.raises(BadResponseError) as info:
        l2_normalize(vectors, expected_dim=3)
    err = info.value
    assert (err.rows, err.reasons, err.reason) == ([2, 4], {2: "zero norm", 4: "non-finite"}, "zero norm")
    assert str(err) == "2 of 5 embeddings are unusable (first: row 2, zero norm); these items must be embedded again"


def test_a_norm_of_exactly_the_minimum_is_usable():
    vectors = np.array([[6e-7, 8e-7], [1e-6, 0.0], [0.0, 9.99e-7]])
    assert np.linalg.norm(vectors[:2], axis=1).tolist() == [MIN_NORM, MIN_NORM]
    assert find_bad_rows(vectors) == {2: "zero norm"}
    np.testing.assert_allclose(l2_normalize(vectors[:2], expected_dim=2), [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
