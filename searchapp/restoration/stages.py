"""The names of the restoration stages and modes (imported by the CLI's argument parser, so
nothing heavy lives here)."""

STAGES = ("outpaint", "blur", "pixel", "pixel-ddim", "embedding", "qe")  # in the order they run
IMAGE_STAGES = frozenset({"outpaint", "blur", "pixel", "pixel-ddim"})
MODES = ("auto", "off") + STAGES
CONDITIONS = ("noise", "crop", "unmatched")  # unmatched: the raw lookup found no near-duplicate
