"""The open_clip embedder with a tiny architecture and seeded untrained weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.embedder import ModelIdentity, ModelSpec, configured_model, create_embedder, resolve_device
from indexer.errors import ConfigError


def test_outputs_are_unit_float32_vectors(embedder, photo_arrays):
    images = [Image.fromarray(photo_arrays[name]) for name in ("astronaut", "coffee")]
    vectors = embedder.encode_images(images)
    texts = embedder.encode_texts(["a cat", "a rocket", "coffee"])
    assert vectors.shape == (2, 32) and texts.shape == (3, 32)
    assert vectors.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert embedder.encode_images([]).shape == (0, 32)


def test_untrained_weights_are_created_once_and_shared(settings, tiny_model_config, tmp_path, photo_arrays):
    spec = ModelSpec(settings.model, "none", "cpu")
    first = create_embedder(spec, settings.models_dir)
    second = create_embedder(spec, settings.models_dir)
    assert first.identity == second.identity
    assert first.identity.pretrained == "none" and not first.identity.semantic
    image = [Image.fromarray(photo_arrays["rocket"])]
    np.testing.assert_array_equal(first.encode_images(image), second.encode_images(image))
    # a separate models folder makes the same seeded weights
    elsewhere = create_embedder(spec, tmp_path / "other-models")
    assert elsewhere.identity.checkpoint_sha256 == first.identity.checkpoint_sha256


def test_preprocessing_keeps_the_whole_picture(embedder):
    """Squash resizing: a mark in the corner changes the embedding (a centre crop would drop it)."""
    plain = Image.new("RGB", (400, 100), (128, 128, 128))
    marked = plain.copy()
    marked.paste((255, 0, 0), (0, 0, 40, 100))
    a, b = embedder.encode_images([plain, marked])
    assert float(a @ b) < 0.9999
    assert embedder.prepare(plain).shape == (32, 32, 3)


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_half_precision(settings, photo_arrays):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    embedder = create_embedder(ModelSpec(settings.model, "none", "cuda"), settings.models_dir)
    assert embedder.dtype == torch.float16
    cpu = create_embedder(ModelSpec(settings.model, "none", "cpu"), settings.models_dir)
    image = [Image.fromarray(photo_arrays["astronaut"])]
    assert float(embedder.encode_images(image)[0] @ cpu.encode_images(image)[0]) > 0.99


@pytest.mark.weights
def test_real_weights_rank_the_right_caption_first(tmp_path, photo_arrays):
    """With real ViT-B-32 weights (when cached or downloadable), a cat photo matches "a cat"."""
    import os

    spec = ModelSpec("ViT-B-32", os.environ.get("LOUPE_TEST_PRETRAINED", "laion2b_s34b_b79k"), "auto")
    if not os.environ.get("LOUPE_TEST_REAL_WEIGHTS"):
        pytest.skip("set LOUPE_TEST_REAL_WEIGHTS=1 (and network or LOUPE_TEST_PRETRAINED=checkpoint) to run")
    embedder = create_embedder(spec, tmp_path)
    image = embedder.encode_images([Image.fromarray(photo_arrays["chelsea"])])[0]
    texts = embedder.encode_texts(["a photo of a cat", "a photo of a rocket", "a photo of coffee"])
    assert int(np.argmax(texts @ image)) == 0


def test_prepared_pixels_match_open_clip_preprocessing(embedder, photo_arrays):
    """Loupe's split preprocessing (Pillow resize, then batched normalise) gives exactly the
    embedding of open_clip's own transform."""
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    images = [Image.fromarray(photo_arrays[name]) for name in ("astronaut", "camera", "rocket")]
    preprocess = image_transform_v2(PreprocessCfg(**embedder.model.visual.preprocess_cfg), is_train=False)
    with torch.inference_mode():
        reference = embedder.model.encode_image(torch.stack([preprocess(img) for img in images]))
    reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    prepared = [embedder.prepare(img) for img in images]
    assert prepared[0].dtype == np.uint8 and prepared[0].shape == (32, 32, 3)
    np.testing.assert_allclose(embedder.encode_batch(prepared), reference, atol=1e-5)
    np.testing.assert_allclose(embedder.encode_batch(np.stack(prepared)), reference, atol=1e-5)


@pytest.mark.parametrize("pretrained, semantic", [
    ("laion2b_s34b_b79k", True), ("none", False), ("file", "unknown"),
])
def test_identity_is_semantic_only_for_a_pretrained_tag(pretrained, semantic):
    identity = ModelIdentity("ViT-B-32", pretrained, None if pretrained != "file" else "0" * 64, 512)
    assert identity.as_dict()["semantic"] == semantic and type(identity.semantic) is type(semantic)
    assert (identity.caveat() is None) == (semantic is True)


@pytest.mark.parametrize("pretrained, semantic", [
    ("laion2b_s34b_b79k", True), ("none", False), ("made-up-tag", "unknown"), ("/some/weights.pt", "unknown"),
])
def test_configured_weights_are_described_before_loading(pretrained, semantic):
    model = configured_model("ViT-B-32", pretrained)
    assert model["semantic"] == semantic and type(model["semantic"]) is type(semantic)
    assert model["pretrained"] == pretrained and model["embed_dim"] is None
