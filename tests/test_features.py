"""Local features and geometric verification on real photographs (scikit-image's)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer import features
from indexer.verify import (QUERY_IN_RESULT, RESULT_IN_QUERY, SAME_FRAME, VerifyOptions, verify_candidates,
                            verify_pair)

CUTOFF = 12


@pytest.fixture(scope="module")
def stored(photo_arrays):
    """Each photograph's features as the index keeps them (encoded, then decoded)."""
    return {name: features.decode(features.encode(features.extract(Image.fromarray(pixels))))
            for name, pixels in photo_arrays.items()}


def query(image: Image.Image) -> features.LocalFeatures:
    return features.extract(image, max_keypoints=features.QUERY_KEYPOINTS)


def crop(image: Image.Image, fraction: float, at=(0.2, 0.15)) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A crop holding `fraction` of the picture's area, and its box."""
    w, h = image.size
    side = fraction ** 0.5
    x, y = int(w * at[0]), int(h * at[1])
    box = (x, y, x + int(w * side), y + int(h * side))
    return image.crop(box), box


def test_blob_is_compact_and_round_trips(photo_arrays):
    found = features.extract(Image.fromarray(photo_arrays["chelsea"]))
    blob = features.encode(found)
    assert 100 <= len(found) <= features.INDEX_KEYPOINTS
    assert len(blob) <= 16 * 1024
    back = features.decode(blob)
    assert (back.width, back.height) == (found.width, found.height)
    assert np.abs(back.points - found.points).max() < 1e-4
    # 4-bit descriptors stay close to the originals (cosine similarity).
    assert np.min(np.sum(back.descriptors * found.descriptors, axis=1)) > 0.95
    with pytest.raises(ValueError):
        features.decode(blob[:-1])


def test_keypoints_are_in_the_pictures_own_pixels_whatever_the_decode_size(photo_arrays):
    image = Image.fromarray(photo_arrays["coffee"])
    full = features.extract(image)
    half = features.extract(image.resize((image.width // 2, image.height // 2)), image.width, image.height)
    assert (half.width, half.height) == image.size
    assert half.pixels()[:, 0].max() <= image.width and half.pixels()[:, 1].max() <= image.height
    assert verify_pair(query(image), half).inliers >= 4 * CUTOFF
    assert len(full) == features.INDEX_KEYPOINTS


@pytest.mark.parametrize("colour", [(128, 128, 128), (0, 0, 0)])
def test_flat_and_tiny_pictures_have_no_features(colour):
    assert len(features.extract(Image.new("RGB", (640, 480), colour))) == 0
    assert len(features.extract(Image.new("RGB", (12, 9), (255, 0, 0)))) == 0
    blob = features.encode(features.extract(Image.new("RGB", (640, 480), colour)))
    assert len(features.decode(blob)) == 0 and features.decode(blob).width == 640


def test_a_40_percent_crop_verifies_with_its_overlap_and_outline(photo_arrays, stored):
    image = Image.fromarray(photo_arrays["chelsea"])
    part, (x0, y0, x1, y1) = crop(image, 0.4)
    found = verify_pair(query(part), stored["chelsea"])
    assert found.inliers >= 3 * CUTOFF
    assert found.overlap_query == pytest.approx(1.0, abs=0.03)
    assert found.overlap_result == pytest.approx(0.4, abs=0.03)
    assert found.scale == pytest.approx(1.0, abs=0.03)
    assert abs(found.rotation_deg) < 1 and not found.mirrored
    assert found.relation == QUERY_IN_RESULT
    expected = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    assert np.abs(np.array(found.outline) - np.array(expected)).max() < 4
    assert found.describe().startswith("Your picture is 40 % of this photo")


def test_a_rotated_copy_verifies_with_its_angle(photo_arrays, stored):
    image = Image.fromarray(photo_arrays["astronaut"]).resize((400, 400))
    found = verify_pair(query(image.rotate(12, expand=True)), stored["astronaut"])
    assert found.inliers >= 3 * CUTOFF
    assert found.rotation_deg == pytest.approx(12, abs=1)
    assert found.scale == pytest.approx(512 / 400, rel=0.03)  # result pixels per query pixel
    assert not found.mirrored and found.overlap_result > 0.95


def test_a_mirrored_copy_verifies_only_as_mirrored(photo_arrays, stored):
    image = Image.fromarray(photo_arrays["motorcycle"])
    flipped = image.transpose(Image.FLIP_LEFT_RIGHT)
    straight = verify_pair(query(flipped), stored["motorcycle"])
    assert straight is None or straight.inliers < CUTOFF
    report = verify_candidates(query(flipped), [(1, stored["motorcycle"]), (2, stored["coffee"])], CUTOFF,
                               mirrored=lambda: query(features.mirrored_image(flipped)))
    assert report.mirrored_tried and set(report.results) == {1}
    found = report.results[1]
    assert found.mirrored and found.relation == SAME_FRAME and abs(found.rotation_deg) < 1
    # The outline maps the query's own corners: its top-left corner lands on the original's top-right.
    assert np.abs(np.array(found.outline[0]) - (image.width, 0)).max() < 4
    assert "mirrored" in found.describe()


def test_a_picture_framed_in_a_larger_canvas_is_found_inside_it(photo_arrays, stored):
    image = Image.fromarray(photo_arrays["coins"])
    canvas = Image.new("RGB", (image.width * 2, image.height * 2), (250, 250, 250))
    canvas.paste(image, (image.width // 2, image.height // 3))
    found = verify_pair(query(canvas), stored["coins"])
    assert found.inliers >= 2 * CUTOFF
    assert found.relation == RESULT_IN_QUERY
    assert found.overlap_query == pytest.approx(0.25, abs=0.03)
    assert found.overlap_result == pytest.approx(1.0, abs=0.03)


def test_unrelated_pictures_do_not_verify(photo_arrays, stored):
    for name, pixels in photo_arrays.items():
        part, _ = crop(Image.fromarray(pixels), 0.5)
        mine = query(part)
        for other, candidate in stored.items():
            if other != name:
                found = verify_pair(mine, candidate)
                assert found is None or found.inliers < CUTOFF, (name, other, found)


def test_flat_tiny_and_noise_queries_are_unverified_not_errors(stored):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    candidates = [(i, f) for i, f in enumerate(stored.values())] + [(99, None)]
    for picture in (Image.new("RGB", (300, 200), (90, 90, 90)), Image.new("RGB", (10, 10))):
        report = verify_candidates(query(picture), candidates, CUTOFF,
                                   mirrored=lambda: query(features.mirrored_image(picture)))
        # No keypoints: verification cannot judge any pair (the score cut-off decides).
        assert report.results == {} and report.unverifiable == {i for i, _ in candidates}
    report = verify_candidates(query(noise), candidates, CUTOFF, mirrored=lambda: query(features.mirrored_image(noise)))
    assert len(query(noise)) > 100 and report.results == {} and report.unverifiable == {99}
    assert report.mirrored_tried and report.checked == set(range(len(stored)))


def test_time_budget_leaves_later_candidates_unchecked(photo_arrays, stored):
    q = query(Image.fromarray(photo_arrays["camera"]))
    report = verify_candidates(q, list(enumerate(stored.values())), CUTOFF, options=VerifyOptions(budget_ms=0))
    assert report.checked == set() and report.results == {}


def test_verify_settings_from_the_environment(tmp_path):
    from indexer.errors import ConfigError
    from indexer.settings import Settings

    base = {"LOUPE_HOME": str(tmp_path)}
    default = Settings.from_env(base)
    assert default.verify is True and default.verify_candidates == 30
    chosen = Settings.from_env({**base, "LOUPE_VERIFY": "off", "LOUPE_VERIFY_CANDIDATES": "50"})
    assert chosen.verify is False and chosen.verify_candidates == 50
    for bad in ({"LOUPE_VERIFY": "maybe"}, {"LOUPE_VERIFY_CANDIDATES": "0"}, {"LOUPE_VERIFY_CANDIDATES": "x"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings.from_env({**base, **bad})


def test_inlier_cutoff_is_calibrated_within_its_bounds():
    from indexer.matching import DEFAULT_INLIER_CUTOFF, MAX_INLIERS, MIN_INLIERS, inlier_cutoff

    assert inlier_cutoff(np.array([3])) is DEFAULT_INLIER_CUTOFF
    assert inlier_cutoff(np.zeros(100)).inliers == MIN_INLIERS
    counts = np.array([4] * 98 + [13, 14])
    assert inlier_cutoff(counts).inliers == 14  # one of 100 may reach it
    assert inlier_cutoff(np.array([4] * 90 + [200] * 10)).inliers == MAX_INLIERS  # copies inside the collection


class _FeatureShelf:
    """What `CandidateVerifier` asks of a library: stored features by id."""

    def __init__(self, by_id):
        self.by_id = by_id

    def features_of(self, ids):
        return {i: self.by_id.get(i) for i in ids}


def test_a_later_proposal_rises_only_as_a_verified_copy(photo_arrays, stored):
    from types import SimpleNamespace

    from indexer.library import SearchResult
    from indexer.lookup import CandidateVerifier

    names = list(stored)
    by_id = {i: stored[name] for i, name in enumerate(names, start=1)}
    original = names.index("coins") + 1
    others = [i for i in by_id if i != original]
    part, _ = crop(Image.fromarray(photo_arrays["coins"]), 0.4)
    decoded = SimpleNamespace(image=part, width=part.width, height=part.height)

    def results(*ids):
        return [SearchResult(i, f"/p/{i}.jpg", 0.5, 10, 10) for i in ids]

    verifier = CandidateVerifier(_FeatureShelf(by_id), decoded, VerifyOptions(candidates=3), CUTOFF)
    assert verifier.verdict is None  # nothing compared yet
    assert verifier.propose(results(*others[:3]), "raw") == 0 and verifier.verdict is False
    assert verifier.propose(results(others[3], others[0]), "restored") == 0  # unverified: behind the raw ones
    assert [r.id for r in verifier.ranked()] == others[:4]
    assert verifier.sources[others[0]] == {"raw", "restored"} and verifier.sources[others[3]] == {"restored"}
    assert verifier.report.checked == set(others[:4])  # each candidate compared once
    assert verifier.propose(results(others[4], original), "restored") == 1 and verifier.verified
    assert [r.id for r in verifier.ranked()] == [original] + others[:5]  # a verified copy rises
    assert verifier.verdict is True

    flat = Image.new("RGB", (300, 200), (90, 90, 90))
    blank = CandidateVerifier(_FeatureShelf(by_id), SimpleNamespace(image=flat, width=300, height=200),
                              VerifyOptions(candidates=3), CUTOFF)
    blank.propose(results(*others[:3]), "raw")
    assert blank.verdict is None  # no keypoints: nothing can be judged, the score cut-off decides
