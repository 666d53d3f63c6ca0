"""The restoration stages, one registry entry each: its name, what it needs, why it cannot run
(`missing`, found without loading a model) and what it does (`apply`). A new stage is one class
here and its entry in `REGISTRY`. Also the modes and conditions, and `LOUPE_RESTORE_AUTO`'s
parser. The CLI's argument parser imports this module: nothing heavy is imported at import
time (each stage imports its model code when it runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from indexer.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from indexer.library import Library, SearchPage

    from .pipeline import Detection, Restorers

CONDITIONS = ("noise", "crop", "unmatched")  # unmatched: no verified copy (without verification, or when
# nothing could be judged: no raw result over the near-duplicate cut-off)
BLUR_RADIUS = 1.0  # at the model's input resolution
QE_NEIGHBOURS = 5

# What `auto` runs per detected condition (docs/robustness.md has the measurements); a stage
# whose model is missing is skipped. Only pixel denoising of noise beyond the collection's, and
# only where it fits auto's latency budget (150 ms p50): on a GPU (18 ms p50 on an H200), not on
# a CPU (520 ms p50 on 2 cores, where held out it won no query either), so on a CPU the default
# runs no stage. On pictures its training never saw, the embedding model pulled queries towards
# the pictures it had learned (held-out run, docs/robustness.md); verified proposals now make it
# harmless, but whether it earns its cost has not been decided on data it never saw, so it runs
# only when named (`restore=embedding`, or LOUPE_RESTORE_AUTO=unmatched:embedding). Crops are
# left to the regional index and to verification (αQE hurt them; outpainting could not be measured).
DEFAULT_POLICY: dict[str, tuple[str, ...]] = {"noise": ("pixel",)}  # on CUDA
CPU_DEFAULT_POLICY: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class StageInput:
    """What a stage may use: the stage models, the library, the embedder, the query picture as
    given (decoded), what was detected, the index's model identity, and the raw lookup (its
    page and its query vector, flat)."""

    restorers: "Restorers"
    library: "Library"
    embedder: object
    image: object  # PIL image of the query as given
    detection: "Detection"
    identity: dict
    raw: "SearchPage"
    raw_vector: "np.ndarray"


@dataclass(frozen=True)
class Stage:
    """A restoration stage. An image stage (`image`) changes the model input's pixels, the
    others change the query vector; image stages run first, each kind in registry order.
    `costly` stages need the API token when one is set; `supersedes`: stages it replaces when
    both are wanted; `needs`: what it needs, in words."""

    name: str
    image: bool
    needs: str = "nothing"
    costly: bool = False
    supersedes: tuple[str, ...] = ()

    def missing(self, restorers: "Restorers", identity: dict) -> str | None:
        """Why this stage cannot run, found without loading anything (None: it can)."""
        return None

    def apply(self, value: "np.ndarray", given: StageInput) -> "np.ndarray":
        """The restored model input (image stages) or query vector (the others)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Outpaint(Stage):
    """Crop ▸ full frame (a diffusers inpainting pipeline, when configured)."""

    def missing(self, restorers, identity):
        if not restorers.settings.outpaint_model:
            return "no outpainting model: set LOUPE_OUTPAINT_MODEL"
        return None

    def apply(self, value, given):
        from .outpaint import load_outpainter
        from .pixel import StageUnavailable

        restorers = given.restorers
        if not restorers.settings.outpaint_model:
            raise StageUnavailable("no outpainting model: set LOUPE_OUTPAINT_MODEL to a diffusers inpainting pipeline")
        outpainter = restorers.model("outpaint", lambda: load_outpainter(restorers.settings.outpaint_model,
                                                                        restorers.device))
        return given.embedder.prepare(restorers.run(outpainter.outpaint, given.image))


@dataclass(frozen=True)
class Blur(Stage):
    """Gaussian blur of the model input (the trivial denoising baseline)."""

    def apply(self, value, given):
        import numpy as np
        from PIL import Image, ImageFilter

        return np.asarray(Image.fromarray(value).filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))


@dataclass(frozen=True)
class Pixel(Stage):
    """Diffusion purification from the timestep matching the noise: one x₀ prediction, or
    (`multistep`) LOUPE_RESTORE_STEPS DDIM steps."""

    multistep: bool = False

    def missing(self, restorers, identity):
        from .pixel import OWN_FOLDER  # a light module-level name; the model loads in `apply`

        if not restorers.settings.pixel_model and not (restorers.home / OWN_FOLDER / "model.json").is_file():
            return "no pixel restorer: run `loupe train-restorer` or set LOUPE_RESTORE_MODEL"
        return None

    def apply(self, value, given):
        from .pixel import load_pixel_restorer

        restorers = given.restorers
        restorer = restorers.model("pixel", lambda: load_pixel_restorer(restorers.settings.pixel_model,
                                                                        restorers.home, restorers.device))
        steps = restorers.settings.steps if self.multistep else 1
        return restorers.run(restorer.purify, value, given.detection.noise_excess, steps)


@dataclass(frozen=True)
class Embedding(Stage):
    """The conditional diffusion model over CLIP embeddings."""

    def missing(self, restorers, identity):
        from .embedding import INFO_FILE, OWN_FOLDER, trained_for

        try:
            info = json.loads((restorers.home / OWN_FOLDER / INFO_FILE).read_text())
        except (OSError, ValueError):
            return "no embedding restorer: run `loupe train-restorer --stage embedding`"
        if not trained_for(info, identity):
            return "the embedding restorer belongs to another model: train it again"
        return None

    def apply(self, value, given):
        from .embedding import OWN_FOLDER, load_embedding_restorer

        restorers = given.restorers
        restorer = restorers.model("embedding", lambda: load_embedding_restorer(restorers.home / OWN_FOLDER,
                                                                                given.identity))
        return restorers.run(restorer.restore, value)


@dataclass(frozen=True)
class QueryExpansion(Stage):
    """αQE query expansion over the top neighbours (closed form): of the raw lookup when the
    vector is still the query's own, else of a search with the vector so far."""

    def apply(self, value, given):
        import numpy as np

        from indexer.query import SearchQuery

        from .expansion import alpha_query_expansion

        page = given.raw if value is given.raw_vector else given.library.search(value.reshape(1, -1),
                                                                                 SearchQuery(k=QE_NEIGHBOURS))
        top = [r.id for r in page.results[:QE_NEIGHBOURS]]
        if not top:
            return value
        neighbours = np.stack([given.library.vector_of(i) for i in top])
        return alpha_query_expansion(value, neighbours, neighbours @ value)


PIXEL_NEEDS = "a pixel restorer (`loupe train-restorer`, or LOUPE_RESTORE_MODEL)"
REGISTRY: tuple[Stage, ...] = (  # in the order they run
    Outpaint("outpaint", image=True, needs="a diffusers inpainting pipeline (LOUPE_OUTPAINT_MODEL)", costly=True),
    Blur("blur", image=True),
    Pixel("pixel", image=True, needs=PIXEL_NEEDS),
    Pixel("pixel-ddim", image=True, needs=PIXEL_NEEDS, costly=True, supersedes=("pixel",), multistep=True),
    Embedding("embedding", image=False, needs="an embedding restorer (`loupe train-restorer --stage embedding`)",
              costly=True),
    QueryExpansion("qe", image=False),
)
STAGES = tuple(stage.name for stage in REGISTRY)
IMAGE_STAGES = frozenset(stage.name for stage in REGISTRY if stage.image)
MODES = ("auto", "off") + STAGES
# Named on their own, these need the API token when one is set: many diffusion steps or large models.
COSTLY_STAGES = frozenset(stage.name for stage in REGISTRY if stage.costly)


def stage_named(name: str) -> Stage:
    """The registry's stage called `name`."""
    for stage in REGISTRY:
        if stage.name == name:
            return stage
    raise KeyError(name)


def parse_policy(text: str | None, device: str = "cpu") -> dict[str, tuple[str, ...]]:
    """`noise:pixel+embedding,crop:outpaint` → {condition: stages}; None: the default for the
    stage models' `device` (CUDA or not); `none`: auto runs nothing."""
    if text is None:
        return dict(DEFAULT_POLICY if str(device).startswith("cuda") else CPU_DEFAULT_POLICY)
    policy: dict[str, tuple[str, ...]] = {}
    if text.strip().lower() == "none":
        return policy
    for part in filter(None, (p.strip() for p in text.split(","))):
        condition, _, stages = part.partition(":")
        names = tuple(s.strip() for s in stages.split("+") if s.strip())
        unknown = [n for n in names if n not in STAGES]
        if condition.strip() not in CONDITIONS or unknown or not names:
            raise ConfigError(f"LOUPE_RESTORE_AUTO part {part!r} is not CONDITION:STAGE[+STAGE] with a condition "
                              f"from {', '.join(CONDITIONS)} and stages from {', '.join(STAGES)}")
        policy[condition.strip()] = names
    return policy

