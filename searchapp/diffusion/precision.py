"""The precision a model runs at when its caller does not choose one."""

from __future__ import annotations


def default_dtype(device: str):
    """Half precision on CUDA, single precision elsewhere (a torch dtype)."""
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32
