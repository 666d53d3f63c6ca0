""""Generate similar": variations of a picture made by a diffusion model, each with its
nearest indexed pictures. `backends` makes the pictures, `store` keeps them, `jobs` runs
requests in the background."""
