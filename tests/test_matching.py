"""Match labels and their calibration (pure functions), and the calibration an index job
stores with the index."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import run_json
from indexer.matching import (
    DEFAULT_CUTOFF,
    EXACT,
    MAX_INLIERS,
    MIN_INLIERS,
    NEAR_DUPLICATE,
    SIMILAR,
    MatchCutoff,
    calibrate_cutoff,
    quantile_cutoff,
)


def test_quantile_cutoff_lets_through_at_most_the_target_share():
    scores = np.linspace(0.5, 0.9, 1000)
    cutoff = quantile_cutoff(scores, target=0.01)
    reaching = np.mean(scores >= cutoff)
    assert 0.009 <= reaching <= 0.01


def test_quantile_cutoff_with_few_scores_is_above_all_of_them():
    scores = np.array([0.7, 0.8, 0.75])
    assert quantile_cutoff(scores, target=0.01) > 0.8
    assert quantile_cutoff(np.array([0.7]), target=0.01) is None


def test_quantile_cutoff_never_exceeds_one():
    assert quantile_cutoff(np.array([1.0, 1.0, 0.99]), target=0.01) == 1.0


def test_calibrate_gives_whole_and_region_cutoffs():
    rng = np.random.default_rng(0)
    whole, region = rng.uniform(0.6, 0.8, 500), rng.uniform(0.7, 0.9, 500)
    cutoff = calibrate_cutoff(whole, region)
    assert 0.79 < cutoff.whole <= 0.8 and 0.89 < cutoff.region <= 0.9
    assert "500 indexed images" in cutoff.basis
    assert calibrate_cutoff(np.array([0.5]), np.array([])) is DEFAULT_CUTOFF
    no_regions = calibrate_cutoff(whole, np.array([]))
    assert no_regions.region == DEFAULT_CUTOFF.region


@pytest.mark.parametrize("score, exact, region, label", [
    (0.99, True, False, EXACT),
    (0.10, True, False, EXACT),  # content decides exactness, not score
    (0.91, False, False, NEAR_DUPLICATE),
    (0.91, False, True, SIMILAR),  # regions need the higher cut-off
    (0.96, False, True, NEAR_DUPLICATE),
    (0.89, False, False, SIMILAR),
])
def test_labels(score, exact, region, label):
    assert MatchCutoff(0.9, 0.95, "test").label(score, exact, region) == label


def test_index_job_calibrates_and_status_reports_it(env, photos):
    before = run_json(["index", str(photos / "a"), "--no-progress"], env)
    assert before["added"] == 12
    first = run_json(["status"], env)["matching"]
    assert first["basis"].startswith("calibrated on leave-one-out searches of 12")
    assert 0 < first["near_duplicate"] <= 1 and 0 < first["near_duplicate_region"] <= 1
    run_json(["index", str(photos), "--no-progress"], env)
    status = run_json(["status"], env)
    second = status["matching"]
    assert second["basis"].startswith("calibrated on leave-one-out searches of 24")
    verification = status["verification"]
    assert verification["enabled"] is True and verification["candidates"] == 30
    assert verification["basis"].startswith("calibrated on 24 indexed pictures")
    # The collection holds crops of its own photographs: their counts push the cut-off to its bound.
    assert MIN_INLIERS <= verification["inliers"] <= MAX_INLIERS
