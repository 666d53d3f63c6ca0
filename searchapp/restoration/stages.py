"""The names of the restoration stages and modes (imported by the CLI's argument parser, so
nothing heavy lives here)."""

STAGES = ("outpaint", "blur", "pixel", "pixel-ddim", "embedding", "qe")  # in the order they run
IMAGE_STAGES = frozenset({"outpaint", "blur", "pixel", "pixel-ddim"})
MODES = ("auto", "off") + STAGES
CONDITIONS = ("noise", "crop", "unmatched")  # unmatched: no verified copy (without verification, or when
# nothing could be judged: no raw result over the near-duplicate cut-off)
# Named on their own, these need the API token when one is set: many diffusion steps or large models.
COSTLY_STAGES = frozenset({"outpaint", "pixel-ddim", "embedding"})
