"""Query restoration: detecting a damaged query (noise, crop) and reconstructing it before the
nearest-neighbour lookup (pixel-space diffusion, outpainting, embedding-space diffusion, query
expansion), then fusing the raw and reconstructed rankings. See `pipeline` for the stages."""
