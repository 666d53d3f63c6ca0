"""The CLIP embedder: open_clip image and text towers giving L2-normalised float32 vectors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .atomic import atomic_path, atomic_write
from .errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

# Squash keeps the whole picture (no centre crop): borders matter for reverse lookup.
RESIZE_MODE = "squash"
UNTRAINED_SEED = 0
UNKNOWN = "unknown"  # `semantic` of a checkpoint file's weights
CHECKPOINT_SUFFIXES = (".pt", ".bin", ".safetensors", ".pth")
_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class ModelSpec:
    """Which model to run, and where. `pretrained` is a tag, a checkpoint path or `none`."""

    architecture: str
    pretrained: str
    device: str = "auto"


@dataclass(frozen=True)
class ModelIdentity:
    """What an index's vectors mean: the architecture and the exact weights."""

    architecture: str
    pretrained: str  # tag, "none", or "file"
    checkpoint_sha256: str | None
    embed_dim: int

    @property
    def semantic(self) -> bool | str:
        """Whether nearest neighbours mean something (see `semantic_of`)."""
        return semantic_of(self.pretrained)

    def caveat(self) -> str | None:
        """A line to print beside results when they may not be semantic, else None."""
        if self.semantic is False:
            return "untrained model weights (LOUPE_PRETRAINED=none): results are not semantic"
        if self.semantic == UNKNOWN:
            return ("model weights from a checkpoint file: Loupe cannot tell whether they are trained, "
                    "so results may not be semantic")
        return None

    def same_weights(self, other: "ModelIdentity") -> bool:
        """Whether `other` is the same model: the one way identities are compared."""
        return (self.architecture, self.pretrained, self.checkpoint_sha256) == (
            other.architecture,
            other.pretrained,
            other.checkpoint_sha256,
        )

    def describe(self) -> str:
        if self.pretrained == "file":
            return f"{self.architecture} (checkpoint sha256 {self.checkpoint_sha256[:12]})"
        if self.pretrained == "none":
            return f"{self.architecture} (untrained, seed {UNTRAINED_SEED}, sha256 {self.checkpoint_sha256[:12]})"
        return f"{self.architecture}/{self.pretrained}"

    def as_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "embed_dim": self.embed_dim,
            "semantic": self.semantic,
        }

    @classmethod
    def from_dict(cls, data: object) -> "ModelIdentity | None":
        """The identity `as_dict` wrote (stored beside a trained model or a shard); None when
        `data` is not one. Compare it with `same_weights`."""
        try:
            return cls(str(data["architecture"]), str(data["pretrained"]), data["checkpoint_sha256"],
                       int(data["embed_dim"]))
        except (KeyError, TypeError, ValueError):
            return None


def weights_kind(pretrained: str) -> str:
    """How a `LOUPE_PRETRAINED` value names the weights, as an identity records it:
    "none" (untrained), "file" (a checkpoint path) or the value itself (a pretrained tag)."""
    if pretrained.lower() == "none":
        return "none"
    if os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES) or Path(pretrained).expanduser().is_file():
        return "file"
    return pretrained


def semantic_of(pretrained: str) -> bool | str:
    """`model.semantic` for an identity's `pretrained` field: False for untrained weights
    ("none"), "unknown" for a checkpoint file (Loupe cannot tell whether it was trained), True
    for a pretrained tag (`create_embedder` accepts only the tags open_clip publishes)."""
    if pretrained == "none":
        return False
    return UNKNOWN if pretrained == "file" else True


def configured_model(architecture: str, pretrained: str) -> dict:
    """`ModelIdentity.as_dict()`'s facts for configured weights that nothing has loaded yet:
    the setting as given, no hash or dimension; a tag open_clip does not publish is "unknown"."""
    kind = weights_kind(pretrained)
    semantic = semantic_of(kind)
    if semantic is True:
        import open_clip

        if pretrained not in open_clip.list_pretrained_tags_by_model(architecture):
            semantic = UNKNOWN
    return {"architecture": architecture, "pretrained": pretrained, "checkpoint_sha256": None,
            "embed_dim": None, "semantic": semantic}


def resolve_device(requested: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`; an unusable request is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"LOUPE_DEVICE={requested} but torch sees no CUDA GPU; use auto or cpu")
    return requested


@dataclass(frozen=True)
class Preparer:
    """Resizes an RGB PIL image to the model's input as (H, W, 3) uint8 pixels (squash).

    Pillow only, and small enough to pickle: decode processes and cluster workers run it
    without the model."""

    input_size: tuple[int, int]  # (width, height)
    resample: int = Image.BICUBIC

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.size != self.input_size:
            image = image.resize(self.input_size, self.resample)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ClipEmbedder:
    """Encodes images and texts with one open_clip model on one device.

    Image input is prepared in two steps: `prepare` resizes a PIL image to the model's input
    size as uint8 pixels (Pillow only, so decode threads and processes never run torch ops,
    whose per-thread OpenMP pools would fight the model for the cores), and `encode_batch`
    converts and normalises a whole batch at once, exactly as open_clip's own preprocessing
    (`image_transform_v2` of the model's `preprocess_cfg`, squash resize) does.
    """

    def __init__(self, model, tokenizer: Callable, device: str, identity: ModelIdentity,
                 source: tuple[ModelSpec, Path] | None = None):
        self.model = model
        self.source = source  # (spec, models folder) it was created from: how other processes rebuild it
        self.tokenizer = tokenizer
        self.device = device
        self.identity = identity
        # The image tower's input dtype: open_clip's fp16 keeps some parameters (logit_scale,
        # positional embeddings in some versions) in float32, so the first parameter can lie.
        self.dtype = model.visual.conv1.weight.dtype if hasattr(model.visual, "conv1") else _main_dtype(model.visual)
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.input_size = (int(size[1]), int(size[0])) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.resample = _PIL_FILTERS.get(cfg.get("interpolation", "bicubic"), Image.BICUBIC)
        # The model's input pixels for an RGB PIL image: (H, W, 3) uint8, squash-resized.
        self.prepare = Preparer(self.input_size, self.resample)
        self.mean = np.asarray(cfg["mean"], dtype=np.float32)
        self.std = np.asarray(cfg["std"], dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.identity.embed_dim

    @property
    def image_size(self) -> int:
        return max(self.input_size)

    def encode_batch(self, pixels) -> np.ndarray:
        """Embed prepared pixels: a (N, H, W, 3) uint8 array, or a list of (H, W, 3) uint8
        arrays or tensors (tensors may already be on the device, as GPU decoding leaves them)."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            return _normalised(self.model.encode_image(self._model_input(pixels)))

    def _model_input(self, pixels):
        """Stack, move to the device (from pinned memory on CUDA, without blocking), scale,
        normalise and cast, as open_clip's preprocessing does."""
        import torch

        if isinstance(pixels, (list, tuple)) and any(isinstance(p, torch.Tensor) for p in pixels):
            x = torch.stack([torch.as_tensor(p).to(self.device) for p in pixels])
        else:
            batch = np.stack(pixels) if isinstance(pixels, (list, tuple)) else pixels
            if not batch.flags.writeable or not batch.flags.c_contiguous:
                batch = np.array(batch)  # torch.from_numpy wants memory it may own
            x = torch.from_numpy(batch)
            if self.device.startswith("cuda"):
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.from_numpy(self.mean).to(x.device).view(1, 3, 1, 1)
        std = torch.from_numpy(self.std).to(x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).to(self.dtype)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Embed RGB PIL images."""
        return self.encode_batch([self.prepare(img) for img in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return _normalised(self.model.encode_text(tokens))


def _main_dtype(module):
    """The dtype most of `module`'s parameter elements have."""
    counts: dict = {}
    for param in module.parameters():
        counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get)


def _normalised(features) -> np.ndarray:
    vectors = features.float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def create_embedder(spec: ModelSpec, models_dir: Path) -> ClipEmbedder:
    """Build the embedder for `spec`, loading (or, for `none`, creating once) its weights."""
    import open_clip

    if spec.architecture not in open_clip.list_models():
        raise ConfigError(
            f"unknown model architecture {spec.architecture!r} (LOUPE_MODEL); "
            f"see open_clip.list_models(), e.g. ViT-B-32"
        )
    device = resolve_device(spec.device)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    checkpoint, identity_pretrained, sha = _resolve_weights(spec, models_dir)
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            spec.architecture,
            pretrained=str(checkpoint) if checkpoint else spec.pretrained,
            precision=precision,
            device=device,
            image_resize_mode=RESIZE_MODE,
            cache_dir=str(models_dir),
            require_pretrained=True,
        )
    except Exception as err:
        raise WeightsUnavailableError(_weights_remedy(spec, err)) from err
    model.eval()
    identity = ModelIdentity(
        architecture=spec.architecture,
        pretrained=identity_pretrained,
        checkpoint_sha256=sha,
        embed_dim=int(model.visual.output_dim),
    )
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    return ClipEmbedder(model, tokenizer, device, identity, source=(spec, Path(models_dir)))


def _resolve_weights(spec: ModelSpec, models_dir: Path) -> tuple[Path | None, str, str | None]:
    """(checkpoint file or None for a hub tag, identity's pretrained field, sha256)."""
    import open_clip

    kind = weights_kind(spec.pretrained)
    if kind == "none":
        path = untrained_checkpoint(spec.architecture, models_dir)
        return path, "none", file_sha256(path)
    if kind == "file":
        candidate = Path(spec.pretrained).expanduser()
        if not candidate.is_file():
            raise ConfigError(f"LOUPE_PRETRAINED={spec.pretrained} is not an existing checkpoint file")
        return candidate.absolute(), "file", file_sha256(candidate)
    tags = open_clip.list_pretrained_tags_by_model(spec.architecture)
    if spec.pretrained not in tags:
        known = ", ".join(tags) or "none published"
        raise ConfigError(
            f"{spec.architecture} has no pretrained tag {spec.pretrained!r} (known: {known}); "
            "LOUPE_PRETRAINED also takes a checkpoint path or none"
        )
    return None, spec.pretrained, None


def _weights_remedy(spec: ModelSpec, err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    reason = text.split(" Last error:")[0][:240].rstrip(". ")
    return (
        f"cannot load weights {spec.pretrained!r} for {spec.architecture}: {reason}. "
        "Remedies: connect to the network once so open_clip can download them into LOUPE_HOME/models, "
        "set LOUPE_PRETRAINED to a local checkpoint file, "
        "or set LOUPE_PRETRAINED=none for untrained weights (results are then not semantic)"
    )


def untrained_checkpoint(architecture: str, models_dir: Path) -> Path:
    """The seeded untrained weights for `architecture`, created once and then reused.

    Every process loads the same file, so their vectors agree. The file is written to a
    temporary name and renamed, so concurrent first runs cannot see a partial file.
    """
    import open_clip
    import torch

    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", architecture)
    path = models_dir / f"{safe_name}-untrained-seed{UNTRAINED_SEED}.pt"
    if path.is_file():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        model = open_clip.create_model(architecture, pretrained=None)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached beside it in a small sidecar keyed by size and mtime."""
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256.json")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("key") == key:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    try:
        atomic_write(sidecar, json.dumps({"key": key, "sha256": sha}))
    except OSError:  # a read-only checkpoint folder just means no cache
        pass
    return sha
