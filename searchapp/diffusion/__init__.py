"""Loupe's own small pixel-space diffusion models (diffusers `UNet2DModel`): their
configuration, training on the indexed pictures, and SDEdit-style sampling. Shared by
"generate similar" and query restoration."""
