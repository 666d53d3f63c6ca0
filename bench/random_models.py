"""Stable Diffusion-shaped img2img and inpainting pipelines with seeded random weights, saved like downloaded
ones: the real compute for benchmarks (bench/generate_speed.py), and tiny ones for tests (no weights can
be fetched; tests import it as `bench.random_models`). A development helper: not part of the installed app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineShape:
    resolution: int = 512
    unet_widths: tuple[int, ...] = (320, 640, 1280, 1280)  # Stable Diffusion 1.x
    unet_blocks: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    vae_widths: tuple[int, ...] = (128, 256, 512, 512)
    text_width: int = 768  # CLIP ViT-L/14's text tower
    text_layers: int = 12
    text_heads: int = 12
    attention_head_dim: int = 8
    norm_groups: int = 32


TINY = PipelineShape(resolution=16, unet_widths=(8, 16), unet_blocks=("DownBlock2D", "CrossAttnDownBlock2D"),
                     vae_widths=(8, 16), text_width=16, text_layers=1, text_heads=2, attention_head_dim=2,
                     norm_groups=4)

_UP = {"DownBlock2D": "UpBlock2D", "CrossAttnDownBlock2D": "CrossAttnUpBlock2D"}


def save_random_pipeline(folder: Path, shape: PipelineShape = PipelineShape(), seed: int = 0,
                         inpainting: bool = False) -> Path:
    """Build an img2img (or, with `inpainting`, an inpainting) pipeline with seeded random
    weights and save it under `folder`; returns the pipeline's folder."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInpaintPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vae_scale = 2 ** (len(shape.vae_widths) - 1)
    unet = UNet2DConditionModel(
        sample_size=shape.resolution // vae_scale, in_channels=9 if inpainting else 4, out_channels=4,
        block_out_channels=shape.unet_widths,
        down_block_types=shape.unet_blocks, up_block_types=tuple(_UP[b] for b in reversed(shape.unet_blocks)),
        cross_attention_dim=shape.text_width, attention_head_dim=shape.attention_head_dim,
        norm_num_groups=shape.norm_groups)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=shape.vae_widths,
                        down_block_types=("DownEncoderBlock2D",) * len(shape.vae_widths),
                        up_block_types=("UpDecoderBlock2D",) * len(shape.vae_widths),
                        norm_num_groups=shape.norm_groups, sample_size=shape.resolution)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=shape.text_width,
                                        intermediate_size=4 * shape.text_width, num_hidden_layers=shape.text_layers,
                                        num_attention_heads=shape.text_heads, max_position_embeddings=77))
    # Prompts are empty for variations: a vocabulary of the special tokens is all the tokenizer needs.
    tokens = folder / "tokenizer-files"
    tokens.mkdir(parents=True, exist_ok=True)
    (tokens / "vocab.json").write_text(json.dumps({"<|startoftext|>": 49406, "<|endoftext|>": 49407, "a</w>": 0}))
    (tokens / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tokens / "vocab.json"), str(tokens / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    kind = StableDiffusionInpaintPipeline if inpainting else StableDiffusionImg2ImgPipeline
    pipe = kind(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"
