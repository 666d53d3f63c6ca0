"""Whether the configured model's weights are on this machine, found without loading them
(the readiness check of `/api/health`): a checkpoint file exists, untrained weights can always
be made, and a pretrained tag's file is in open_clip's cache under `LOUPE_HOME/models`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HF_DEFAULT_FILE = "open_clip_pytorch_model.bin"  # open_clip's name when a hub entry names no file


@dataclass(frozen=True)
class WeightsOnDisk:
    """`present`: the model can load without the network; `reason` says what was found (no
    server paths: `/api/health` shows it to anyone); `detail` adds the paths."""

    present: bool
    reason: str
    detail: str = ""


def find_weights(architecture: str, pretrained: str, models_dir: Path) -> WeightsOnDisk:
    """Look for the weights of `architecture`/`pretrained` (as `LOUPE_MODEL`/`LOUPE_PRETRAINED`
    give them) without reading them."""
    import open_clip

    from .embedder import weights_kind

    if architecture not in open_clip.list_models():
        return WeightsOnDisk(False, f"unknown model architecture {architecture!r} (LOUPE_MODEL)")
    kind = weights_kind(pretrained)
    if kind == "none":
        return WeightsOnDisk(True, "untrained seeded weights (LOUPE_PRETRAINED=none): made once on first use")
    if kind == "file":
        path = Path(pretrained).expanduser()
        if path.is_file():
            return WeightsOnDisk(True, "the checkpoint file (LOUPE_PRETRAINED) is present", str(path))
        return WeightsOnDisk(False, "the checkpoint file (LOUPE_PRETRAINED) does not exist", f"no file {path}")
    if pretrained not in open_clip.list_pretrained_tags_by_model(architecture):
        return WeightsOnDisk(False, f"{architecture} has no pretrained tag {pretrained!r} (LOUPE_PRETRAINED)")
    cfg = open_clip.get_pretrained_cfg(architecture, pretrained) or {}
    if _cached(cfg, models_dir):
        return WeightsOnDisk(True, f"weights {architecture}/{pretrained} are in LOUPE_HOME/models", str(models_dir))
    return WeightsOnDisk(False, f"weights {architecture}/{pretrained} are not in LOUPE_HOME/models: loading them "
                                "needs the network once (or set LOUPE_PRETRAINED to a local checkpoint file)",
                         f"looked in {models_dir}")


def _cached(cfg: dict, models_dir: Path) -> bool:
    """Whether open_clip would find `cfg`'s weights in `models_dir` without downloading."""
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    hub = cfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or HF_DEFAULT_FILE
        names = [filename]  # open_clip prefers a safetensors file beside it
        if filename == HF_DEFAULT_FILE:
            names.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=str(models_dir))
            if isinstance(found, str) and Path(found).is_file():
                return True
        return False
    url = cfg.get("url") or ""
    return bool(url) and (models_dir / os.path.basename(url)).is_file()
