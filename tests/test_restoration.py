"""Query restoration: the noise estimate, each stage with tiny seeded models, fusion, the
policy, and the whole path through the API and the CLI."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_env, write_photo_folder
from helpers import check_schema, run_cli, run_json
from indexer.embedder import ModelIdentity
from indexer.library import SearchResult
from indexer.noise import DEFAULT_PROFILE, MIN_NOISY_LEVEL, NoiseProfile, noise_levels
from searchapp import create_app
from searchapp.diffusion.unet import UNetConfig
from searchapp.restoration.embedding import EmbeddingConfig, load_embedding_restorer, train_embedding_restorer
from searchapp.restoration.expansion import alpha_query_expansion
from searchapp.restoration.fusion import fuse
from searchapp.restoration.outpaint import KEEP, REPAINT, Outpainter, outpaint_canvas
from searchapp.restoration.pipeline import Detection
from searchapp.restoration.stages import parse_policy
from searchapp.restoration.pixel import PixelRestorer, StageUnavailable, load_pixel_restorer, timestep_for
from searchapp.settings import ServiceSettings

TINY_UNET = UNetConfig(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)


def smooth_picture(size: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth colour field: almost nothing for the noise estimator to mistake for noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.3, 1) * x + rng.uniform(0.3, 1) * y + rng.uniform()))
                for _ in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def noisy(pixels: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(pixels + rng.normal(0, sigma, pixels.shape)), 0, 255).astype(np.uint8)


# -- detection ----------------------------------------------------------------------------------------
def test_noise_estimate_matches_added_noise():
    clean = smooth_picture()
    assert noise_levels([clean])[0] < 1.5
    for sigma in (10, 25, 40):
        estimate = noise_levels([noisy(clean, sigma)])[0]
        assert abs(estimate - sigma) < 0.12 * sigma, (sigma, estimate)
    batch = noise_levels(np.stack([clean, noisy(clean, 20)]))
    assert batch.shape == (2,) and batch[0] < batch[1]


def test_noise_profile_threshold_and_excess():
    profile = NoiseProfile.of([1.0] * 98 + [8.0, 20.0, None, float("nan")])
    assert profile.pictures == 100 and profile.median == 1.0 and 8.0 < profile.high < 20.0
    assert profile.threshold() == profile.high
    assert NoiseProfile.of([0.5, 1.0]).threshold() == MIN_NOISY_LEVEL  # a floor for clean collections
    assert NoiseProfile.of([]) is DEFAULT_PROFILE
    assert profile.excess(5.0) == pytest.approx(np.sqrt(24.0)) and profile.excess(0.5) == 0.0


def test_detection_conditions():
    assert Detection(30.0, 29.0, 10.0, 0.0).conditions == ("noise",)
    assert Detection(3.0, 2.0, 10.0, 0.004).conditions == ("crop",)
    assert Detection(3.0, 2.0, 10.0, None).conditions == ()
    assert Detection(3.0, 2.0, 10.0, None, top_score=0.5, match_cutoff=0.9).conditions == ("unmatched",)
    assert Detection(3.0, 2.0, 10.0, 0.0, top_score=0.95, match_cutoff=0.9).conditions == ()


def test_training_damage_is_seeded_covers_every_family_and_avoids_the_held_out_bands():
    from searchapp.restoration.corruptions import FAMILIES, HELD_OUT, SMALL_SIDE, add_noise, draw, random_damage

    picture = Image.fromarray(smooth_picture(300)[:, :240])
    seen = set()
    for seed in range(60):
        first, family = random_damage(picture, np.random.default_rng(seed))
        again, _ = random_damage(picture, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(first), np.asarray(again)), family
        seen.add(family)
    assert seen == set(FAMILIES)
    rng = np.random.default_rng(0)
    for name, bands in HELD_OUT.items():
        values = [draw(rng, 0.0, 100.0, bands) for _ in range(2000)]
        assert not any(a <= v <= b for v in values for a, b in bands), name
    with pytest.raises(ValueError, match="held-out"):
        draw(rng, 12.5, 17.5, HELD_OUT["sigma"])
    small = picture.copy()
    small.thumbnail((SMALL_SIDE, SMALL_SIDE))
    assert noise_levels([np.asarray(add_noise(small, 40.0, rng))])[0] > 25


# -- pixel purification ------------------------------------------------------------------------------------
def test_timestep_matches_the_noise_level():
    alphas = TINY_UNET.create_scheduler("ddpm").alphas_cumprod.numpy().astype(np.float64)
    assert timestep_for(alphas, 0) == 0
    steps = [timestep_for(alphas, s) for s in (5, 20, 60)]
    assert steps == sorted(steps) and steps[0] > 0
    for sigma, t in zip((5, 20, 60), steps):
        ratio = np.sqrt((1 - alphas[t]) / alphas[t]) * 127.5
        assert sigma <= ratio and np.sqrt((1 - alphas[t - 1]) / alphas[t - 1]) * 127.5 < sigma


def test_purify_keeps_shape_and_leaves_clean_pictures_alone():
    unet = TINY_UNET.create_unet(seed=0).eval()
    restorer = PixelRestorer(unet, TINY_UNET.create_scheduler().alphas_cumprod.numpy(), "test")
    picture = smooth_picture(30)[:, :27]  # odd sizes are padded for the network and cropped back
    assert restorer.purify(picture, 0.0) is picture
    for steps in (1, 3):
        out = restorer.purify(noisy(picture, 30), 30.0, steps)
        assert out.shape == picture.shape and out.dtype == np.uint8


@pytest.mark.slow
def test_trained_denoiser_removes_noise(tmp_path):
    """A tiny denoiser trained for 120 steps (seconds; a step count, not a time budget, so a busy
    machine trains the same model) on smooth pictures already brings a noisy one closer to the
    clean picture, one-shot and with DDIM steps (measured: 0.53 and 0.45 of the error left at
    120 steps, 0.43 and 0.32 at 200)."""
    from searchapp.diffusion.training import TrainOptions, train

    pictures = np.stack([smooth_picture(24, seed) for seed in range(16)])
    train(tmp_path / "pixel", pictures, TINY_UNET,
          TrainOptions(budget_seconds=3600, max_steps=120, batch_size=16, max_timestep=300, progress=False,
                       learning_rate=1e-3, ema_decay=0.9))
    restorer = load_pixel_restorer(str(tmp_path / "pixel"), tmp_path, "cpu")
    clean = smooth_picture(48, seed=99)
    damaged = noisy(clean, 40)
    before = np.abs(damaged.astype(float) - clean).mean()
    for steps in (1, 4):
        after = np.abs(restorer.purify(damaged, 40.0, steps).astype(float) - clean).mean()
        assert after < 0.7 * before, (steps, before, after)


def test_pretrained_diffusers_unet_loads_from_a_folder(tmp_path):
    from diffusers import DDPMScheduler

    TINY_UNET.create_unet().save_pretrained(tmp_path / "ddpm")
    DDPMScheduler(num_train_timesteps=500).save_pretrained(tmp_path / "ddpm")
    restorer = load_pixel_restorer(str(tmp_path / "ddpm"), tmp_path, "cpu")
    assert len(restorer.alphas) == 500
    assert restorer.purify(smooth_picture(16), 20.0).shape == (16, 16, 3)
    with pytest.raises(StageUnavailable, match="LOUPE_RESTORE_MODEL"):
        load_pixel_restorer(str(tmp_path / "nothing-here"), tmp_path, "cpu")
    with pytest.raises(StageUnavailable, match="train-restorer"):
        load_pixel_restorer(None, tmp_path, "cpu")


# -- crops ---------------------------------------------------------------------------------------------------
def test_outpaint_canvas_mask_polarity():
    crop = Image.fromarray(smooth_picture(40)[:, :20])
    canvas, mask, (x, y, w, h) = outpaint_canvas(crop, 64)
    assert canvas.size == mask.size == (64, 64) and max(w, h) == round(0.7 * 64)
    m = np.asarray(mask)
    assert (m[y : y + h, x : x + w] == KEEP).all()  # diffusers keeps black...
    assert (m == REPAINT).sum() == 64 * 64 - w * h  # ...and repaints white


@pytest.mark.slow
def test_outpainter_extends_a_crop_and_keeps_its_pixels(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    from bench.random_models import TINY, save_random_pipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(save_random_pipeline(tmp_path / "sd", TINY, inpainting=True),
                                                          safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    outpainter = Outpainter(pipe, steps=2)
    crop = Image.fromarray(smooth_picture(20))
    full = outpainter.outpaint(crop)
    canvas, _, (x, y, w, h) = outpaint_canvas(crop, outpainter.size)
    assert full.size == (outpainter.size, outpainter.size)
    assert np.array_equal(np.asarray(full)[y : y + h, x : x + w], np.asarray(canvas)[y : y + h, x : x + w])


# -- embedding space -------------------------------------------------------------------------------------------
def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.slow
def test_embedding_restorer_moves_damaged_embeddings_towards_their_originals(tmp_path):
    rng = np.random.default_rng(0)
    originals = _unit(rng.normal(size=(12, 16))).astype(np.float32)
    clean = np.repeat(originals, 40, axis=0)
    damaged = _unit(clean + rng.normal(scale=0.35, size=clean.shape)).astype(np.float32)
    identity = ModelIdentity("test", "none", "0" * 64, 16).as_dict()
    summary = train_embedding_restorer(tmp_path, clean, damaged, identity, EmbeddingConfig(dim=16, hidden=128, blocks=2),
                                       budget_seconds=3600, max_steps=600, batch_size=128)
    assert summary.last_loss < summary.first_loss
    restorer = load_embedding_restorer(tmp_path, identity)
    queries = _unit(originals + rng.normal(scale=0.35, size=originals.shape)).astype(np.float32)  # unseen damage
    before = np.mean(np.sum(queries * originals, axis=1))
    after = np.mean([restorer.restore(q) @ o for q, o in zip(queries, originals)])
    assert after > before + 0.05, (before, after)
    with pytest.raises(StageUnavailable, match="another model"):
        load_embedding_restorer(tmp_path, {"architecture": "other"})


def test_alpha_query_expansion():
    query = _unit(np.array([1.0, 0.2, 0.0]))
    neighbours = _unit(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    expanded = alpha_query_expansion(query, neighbours, neighbours @ query, alpha=3.0)
    assert np.linalg.norm(expanded) == pytest.approx(1.0)
    assert expanded @ neighbours[0] > query @ neighbours[0]  # pulled towards the close neighbour
    assert expanded[2] == pytest.approx(0.0)  # not towards the orthogonal one
    assert np.allclose(alpha_query_expansion(query, np.zeros((0, 3)), np.zeros(0)), query)


# -- fusion and policy --------------------------------------------------------------------------------------------
def _results(*pairs):
    return [SearchResult(i, f"/p/{i}.jpg", s, 10, 10) for i, s in pairs]


def test_fusion_needs_both_rankings_to_promote_a_result():
    raw = _results((1, 0.90), (2, 0.80), (3, 0.70))
    restored = _results((2, 0.95), (4, 0.94), (1, 0.85))
    fused = fuse(raw, restored)
    assert [r.id for r in fused] == [1, 2, 4, 3]  # 4: only the reconstruction found it, at the raw floor
    assert {r.id: r.found_by for r in fused} == {1: "both", 2: "both", 3: "raw", 4: "restored"}
    assert fused[0].score == pytest.approx(0.5 * 0.90 + 0.5 * 0.85)
    assert fused[2].score == pytest.approx(0.5 * 0.70 + 0.5 * 0.94)
    # A hallucinated reconstruction alone cannot take the top place from a clear raw match.
    drifted = fuse(_results((1, 0.95), (2, 0.60)), _results((7, 0.99), (1, 0.90)))
    assert drifted[0].id == 1
    assert [r.found_by for r in fuse(raw, [])] == ["raw"] * 3
    # Nor can a reconstruction that agrees with a close second: the raw top result keeps its place.
    close = fuse(_results((1, 0.80), (2, 0.79)), _results((2, 0.99), (1, 0.50)))
    assert [r.id for r in close] == [1, 2] and close[1].score > close[0].score


def test_auto_does_not_reconstruct_a_query_that_verified():
    from searchapp.restoration.pipeline import VERIFIED_ALREADY, _choose

    class Ready:
        policy = parse_policy("noise:pixel,unmatched:embedding")

        def missing(self, stage, identity):
            return None

    noisy = dict(noise_level=30.0, noise_excess=25.0, noise_threshold=10.0, crop_margin=None, top_score=0.5,
                 match_cutoff=0.9)
    assert Detection(**noisy, verified=True).conditions == ("noise",)
    assert _choose("auto", Detection(**noisy, verified=True), Ready(), {}) == ((), {"pixel": VERIFIED_ALREADY})
    # Not verified: the damage and the missing copy both call for their stages.
    assert Detection(**noisy, verified=False).conditions == ("noise", "unmatched")
    assert _choose("auto", Detection(**noisy, verified=False), Ready(), {}) == (("pixel", "embedding"), {})
    # Without verification, `unmatched` still means a top score under the cut-off.
    assert Detection(**noisy).conditions == ("noise", "unmatched")
    # A stage named by the caller runs whatever was found.
    assert _choose("pixel", Detection(**noisy, verified=True), Ready(), {}) == (("pixel",), {})


def test_policy_parsing():
    assert parse_policy(None, "cuda:0") == {"noise": ("pixel",)}
    assert parse_policy(None, "cpu") == {}  # the pixel stage does not fit auto's latency budget on a CPU
    assert parse_policy("none") == {}
    assert parse_policy("noise:pixel-ddim+qe, crop:outpaint") == {"noise": ("pixel-ddim", "qe"), "crop": ("outpaint",)}
    for bad in ("noise:magic", "blur:pixel", "noise:", "noise"):
        with pytest.raises(Exception, match="LOUPE_RESTORE_AUTO"):
            parse_policy(bad)


# -- through the service ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Restorable:
    env: dict
    settings: object
    photos: Path


RESTORER_STEPS = 5


@pytest.fixture(scope="module")
def restorable(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """Photographs indexed with the tiny CLIP model and both restorers trained for a few
    seeded steps: built once for the module (the tests only read it)."""

    folder = tmp_path_factory.mktemp("restorable")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    run_json(["index", str(photos), "--no-progress"], env)
    report = run_json(["train-restorer", "--steps", str(RESTORER_STEPS), "--max-pictures", "4", "--no-progress",
                       "--json"], env)
    assert report["pixel"]["steps"] == report["embedding"]["steps"] == RESTORER_STEPS
    settings = ServiceSettings.from_env(env)
    # auto's CUDA default: on a CPU, the default runs no stage (the pixel stage exceeds the budget).
    return Restorable(env, replace(settings, restore=replace(settings.restore, auto=(("noise", ("pixel",)),))), photos)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _noisy_upload(photos, sigma=70.0) -> bytes:
    """A photograph at the tiny model's input size with heavy noise: noisier than any indexed one."""
    picture = np.asarray(Image.open(sorted(photos.rglob("*-0.*"))[0]).convert("RGB").resize((32, 32)))
    return _png_bytes(noisy(picture, sigma))


def _search(client, data: bytes, **params):
    return client.post("/api/search/image", data={"image": (io.BytesIO(data), "q.png"), "k": 5, **params},
                       content_type="multipart/form-data")


@pytest.mark.slow
def test_auto_restores_noisy_queries_and_leaves_clean_ones_alone(restorable):
    photos = restorable.photos
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": restorable.settings}).test_client()
    clean = next(photos.rglob("*-0.*")).read_bytes()
    off = _search(client, clean, restore="off").get_json()
    auto = _search(client, clean).get_json()
    assert auto["restoration"]["applied"] == [] and "noise" not in auto["restoration"]["detected"]
    assert [r["id"] for r in auto["results"]] == [r["id"] for r in off["results"]]
    assert all("found_by" not in r for r in auto["results"])

    response = _search(client, _noisy_upload(photos))
    check_schema(response, "/api/search/image", "post")
    restoration = response.get_json()["restoration"]
    assert restoration["detected"][:1] == ["noise"] and restoration["applied"][:1] == ["pixel"]
    assert restoration["noise"]["level"] > restoration["noise"]["threshold"]
    header, data = restoration["reconstruction"].split(",", 1)
    assert header == "data:image/png;base64" and Image.open(io.BytesIO(base64.b64decode(data))).size == (32, 32)
    found_by = [r["found_by"] for r in response.get_json()["results"]]
    assert set(found_by) <= {"raw", "restored", "both"}
    # A 32-pixel query has no keypoints: verification cannot judge it (verified null, the
    # score cut-off decides), and still no result only the reconstruction found passes one the
    # query as given found.
    assert restoration["verified"] is None
    assert found_by == sorted(found_by, key=lambda f: f == "restored")

    stranger = _search(client, _png_bytes(smooth_picture(32, seed=5))).get_json()  # not in the collection
    restoration = stranger["restoration"]
    assert restoration["match"]["top_score"] < restoration["match"]["cutoff"] and not stranger["copy_found"]
    # Detected, but the default policy leaves it alone (the embedding model hurt unseen pictures).
    assert "unmatched" in restoration["detected"] and restoration["applied"] == []
    assert restoration["reconstruction"] is None


@pytest.mark.slow
def test_on_a_cpu_auto_detects_but_runs_no_stage_by_default(restorable):
    cpu_default = replace(restorable.settings, restore=replace(restorable.settings.restore, auto=None))
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": cpu_default}).test_client()
    restoration = _search(client, _noisy_upload(restorable.photos)).get_json()["restoration"]
    assert restoration["detected"][:1] == ["noise"] and restoration["applied"] == [] and not restoration["skipped"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["blur", "pixel", "pixel-ddim", "embedding", "qe"])
def test_each_stage_by_name(restorable, stage):
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": restorable.settings}).test_client()
    response = _search(client, _noisy_upload(restorable.photos), restore=stage)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["restoration"]["applied"] == [stage]
    assert 0 < body["restoration"]["stage_ms"][stage] < body["took_ms"]  # the stage ran, inside the request
    assert len(body["results"]) == 5 and all(r["found_by"] in ("raw", "restored", "both") for r in body["results"])
    assert (body["restoration"]["reconstruction"] is None) == (stage in ("embedding", "qe"))


@pytest.mark.slow
def test_unavailable_stages_fail_clearly_and_auto_skips_them(env, photos, settings, index_photos):
    index_photos(env, photos)
    settings = ServiceSettings.from_env(env, core=settings)
    settings = replace(settings, restore=replace(settings.restore, auto=(("noise", ("pixel",)),)))  # auto's CUDA default
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": settings}).test_client()
    for stage, words in (("pixel", "train-restorer"), ("outpaint", "LOUPE_OUTPAINT_MODEL"),
                         ("embedding", "train-restorer")):
        response = _search(client, _noisy_upload(photos), restore=stage)
        assert response.status_code == 503 and response.get_json()["error"] == "restore_unavailable"
        assert words in response.get_json()["message"]
    body = _search(client, _noisy_upload(photos)).get_json()
    assert body["restoration"]["applied"] == [] and "pixel" in body["restoration"]["skipped"]
    assert _search(client, _noisy_upload(photos), restore="magic").status_code == 400


@pytest.mark.slow
def test_outpaint_stage_with_a_configured_pipeline(env, photos, tmp_path, index_photos):
    from bench.random_models import TINY, save_random_pipeline

    index_photos(env, photos)
    pipeline = save_random_pipeline(tmp_path / "inpaint", TINY, inpainting=True)
    settings = ServiceSettings.from_env({**env, "LOUPE_OUTPAINT_MODEL": str(pipeline),
                                         "LOUPE_RESTORE_AUTO": "crop:outpaint"})
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": settings}).test_client()
    picture = Image.open(sorted(photos.rglob("*-0.*"))[0]).convert("RGB")
    crop = picture.crop((0, 0, picture.width // 2, picture.height // 2))
    body = _search(client, _png_bytes(np.asarray(crop)), restore="outpaint").get_json()
    assert body["restoration"]["applied"] == ["outpaint"] and body["restoration"]["reconstruction"]


@pytest.mark.slow
def test_cli_search_with_restore(restorable, tmp_path):
    env = restorable.env
    query = tmp_path / "noisy.png"
    query.write_bytes(_noisy_upload(restorable.photos))
    code, out, err = run_cli(["search", "--image", str(query), "--restore", "pixel", "--json", "-k", "3"], env)
    assert code == 0, err
    body = json.loads(out)
    assert body["restoration"]["applied"] == ["pixel"] and len(body["results"]) == 3
    code, out, _ = run_cli(["search", "--image", str(query)], env)
    assert code == 0 and out.startswith("restoration: detected noise")
    with pytest.raises(SystemExit) as usage:  # argparse refuses the unknown mode
        run_cli(["search", "--image", str(query), "--restore", "magic"], env)
    assert usage.value.code == 2


@pytest.mark.slow
def test_noise_levels_are_recorded_at_index_time(env, photos, settings):
    from indexer.factory import open_library

    run_json(["index", str(photos), "--no-progress"], env)
    library = open_library(settings)
    try:
        profile = library.calibration().noise
        assert profile is not DEFAULT_PROFILE and 0 < profile.median <= profile.high
        record = library.image_by_path(str(sorted(photos.rglob("*-0.*"))[0]))
        assert record.noise_level is not None and record.noise_level >= 0
    finally:
        library.close()


@pytest.mark.slow
def test_a_configured_model_that_fails_to_load_is_skipped_by_auto(env, photos, tmp_path, index_photos):

    index_photos(env, photos)
    (tmp_path / "broken").mkdir()
    settings = ServiceSettings.from_env({**env, "LOUPE_RESTORE_MODEL": str(tmp_path / "broken"),
                                  "LOUPE_RESTORE_AUTO": "noise:pixel"})
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": settings}).test_client()
    body = _search(client, _noisy_upload(photos)).get_json()
    assert body["restoration"]["applied"] == [] and "cannot load" in body["restoration"]["skipped"]["pixel"]
    assert len(body["results"]) == 5
    response = _search(client, _noisy_upload(photos), restore="pixel")
    assert response.status_code == 503 and "LOUPE_RESTORE_MODEL" in response.get_json()["message"]


def test_a_bad_restore_policy_stops_the_settings_the_app_and_serve(env, monkeypatch):
    """LOUPE_RESTORE_AUTO is parsed with the settings: a typo stops `loupe serve` (and the app's
    creation) with the variable named, rather than failing the first image search."""
    import waitress

    from indexer.errors import ConfigError
    from searchapp.settings import ServiceSettings

    bad = {**env, "LOUPE_RESTORE_AUTO": "noise:pixle"}
    with pytest.raises(ConfigError, match="LOUPE_RESTORE_AUTO part 'noise:pixle'"):
        ServiceSettings.from_env(bad)
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="LOUPE_RESTORE_AUTO"):
        create_app({"TESTING": True})

    def never(*args, **kwargs):
        raise AssertionError("served despite a bad LOUPE_RESTORE_AUTO")

    monkeypatch.setattr(waitress, "serve", never)
    code, out, err = run_cli(["serve", "--port", "0"], bad)
    assert code == 1 and "LOUPE_RESTORE_AUTO part 'noise:pixle'" in err and "serving" not in out
    good = ServiceSettings.from_env({**env, "LOUPE_RESTORE_AUTO": "noise:pixel+qe"})
    assert good.restore.auto == (("noise", ("pixel", "qe")),)


def test_each_stage_is_one_registry_entry(tmp_path):
    """The registry gives the stage names, kinds and costs; `missing` says why a stage cannot
    run without loading anything; the policy takes the settings' parsed LOUPE_RESTORE_AUTO."""
    from searchapp.settings import RestoreSettings
    from searchapp.restoration.pipeline import Restorers
    from searchapp.restoration.stages import COSTLY_STAGES, IMAGE_STAGES, MODES, REGISTRY, STAGES

    assert STAGES == tuple(stage.name for stage in REGISTRY) and MODES == ("auto", "off") + STAGES
    assert IMAGE_STAGES == {"outpaint", "blur", "pixel", "pixel-ddim"}
    assert COSTLY_STAGES == {"outpaint", "pixel-ddim", "embedding"}
    assert all(stage.needs for stage in REGISTRY)
    bare = Restorers(RestoreSettings(), tmp_path, "cpu")
    assert bare.policy == {} and Restorers(RestoreSettings(), tmp_path, "cuda").policy == {"noise": ("pixel",)}
    assert "loupe train-restorer" in bare.missing("pixel", {}) and "LOUPE_OUTPAINT_MODEL" in bare.missing("outpaint", {})
    assert "--stage embedding" in bare.missing("embedding", {})
    assert bare.missing("blur", {}) is None and bare.missing("qe", {}) is None
    assert Restorers(RestoreSettings(auto=(("crop", ("qe",)),)), tmp_path, "cuda").policy == {"crop": ("qe",)}
