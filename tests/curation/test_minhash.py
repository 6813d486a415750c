"""LSH parameter search: the same (bands, rows) and error areas as datasketch, without importing it."""

from __future__ import annotations

import pytest
from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param

from curation.minhash import error_rates, lsh_params


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256, 300])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8), (0.7, 0.3), (0.05, 0.95), (0.0, 1.0), (1.0, 0.0)])
def test_lsh_params_match_datasketch(num_perm: int, weights: tuple[float, float]) -> None:
    for threshold in (0.1, 0.5, 0.7, 0.8, 0.9, 0.99):
        assert lsh_params(threshold, num_perm, *weights) == _optimal_param(threshold, num_perm, *weights)


def test_error_areas_match_datasketch() -> None:
    for threshold, b, r in [(0.8, 12, 10), (0.7, 9, 13), (0.5, 128, 1), (0.95, 1, 128), (0.3, 20, 6)]:
        rates = error_rates(threshold, b, r)
        assert rates["false_positive_area"] == pytest.approx(_false_positive_probability(threshold, b, r), abs=1e-12)
        assert rates["false_negative_area"] == pytest.approx(_false_negative_probability(threshold, b, r), abs=1e-12)
