"""Restored reverse lookup: decode ▸ embed ▸ kNN ▸ verify ▸ detect ▸ reconstruct ▸ kNN again ▸
verify the proposals ▸ label.

The raw query is always searched (and, with verification, its top candidates verified). A
reconstruction only proposes: the reconstructed query is searched too, and what it finds is
verified against the query *as given*. A candidate only the reconstruction found rises above the
raw results as a verified copy, else it ranks below them, so a raw top result can only be
displaced by a verified copy. Without verification the raw top result keeps its place and the
rest of the two rankings are fused (`fusion`). Each result says which lookup found it; when no
stage runs, the answer is exactly the raw lookup's: the steps before and after restoration are
`indexer.lookup.ImageLookup`'s. The stages (outpaint, blur, pixel, pixel-ddim, embedding, qe)
are the registry in `stages`, in the order they run.

`restore=auto` runs, for each condition detected (damage: `noise`, `crop`; `unmatched`: no
verified copy, or without verification no result over the cut-off), the stages its policy names
(measured by bench/robustness.py; LOUPE_RESTORE_AUTO overrides it), unless the query as given
already verified, and skips, with a reason, those whose model is missing; naming a stage runs
it whatever was detected, and fails clearly when it cannot.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from indexer.errors import ConfigError
from indexer.images import DecodeLimits
from indexer.library import Calibration, Library, SearchPage
from indexer.lookup import LOOKUP_STEPS, ImageLookup
from indexer.noise import noise_levels
from indexer.query import SearchQuery

from ..settings import RestoreSettings
from .fusion import fuse
from .pixel import StageUnavailable
from .stages import MODES, REGISTRY, StageInput, parse_policy, stage_named

VERIFIED_ALREADY = "the query as given was verified a copy"
FUSION_EXTRA = 20  # each ranking is fetched this much deeper than the page, for fusion


@dataclass(frozen=True)
class Detection:
    """What the query looks like: its noise level against the collection's, whether a region of
    an indexed picture beat that picture's whole (evidence of a crop), whether the raw lookup's
    top result reached the near-duplicate cut-off, and whether verification confirmed a copy
    (None: verification was off)."""

    noise_level: float  # σ̂ of the model input, grey levels
    noise_excess: float  # beyond a typical indexed picture's, in quadrature
    noise_threshold: float  # the collection's 99th centile (or a floor)
    crop_margin: float | None  # top result's region score minus its whole-picture score
    top_score: float | None = None  # the raw lookup's best score (None: nothing indexed)
    match_cutoff: float | None = None  # the near-duplicate cut-off that score is held to
    verified: bool | None = None  # a candidate was verified a copy (None: not verified)

    @property
    def conditions(self) -> tuple[str, ...]:
        """The damage seen (`noise`, `crop`) and `unmatched`: no verified copy or, without
        verification, a top score under the cut-off."""
        found = []
        if self.noise_level > self.noise_threshold:
            found.append("noise")
        if self.crop_margin is not None and self.crop_margin > 0:
            found.append("crop")
        if self.verified is not None:
            if not self.verified:
                found.append("unmatched")
        elif self.top_score is not None and self.match_cutoff is not None and self.top_score < self.match_cutoff:
            found.append("unmatched")
        return tuple(found)

    def as_dict(self) -> dict:
        match = None
        if self.top_score is not None and self.match_cutoff is not None:
            match = {"top_score": round(self.top_score, 6), "cutoff": round(self.match_cutoff, 6)}
        return {"noise": {"level": round(self.noise_level, 3), "excess": round(self.noise_excess, 3),
                          "threshold": round(self.noise_threshold, 3)},
                "crop": None if self.crop_margin is None else {"margin": round(self.crop_margin, 6)},
                "match": match, "verified": self.verified}


@dataclass(frozen=True)
class RestorationReport:
    requested: str
    detection: Detection | None = None
    applied: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)  # stage → why it did not run
    stage_ms: dict[str, float] = field(default_factory=dict)
    ms: float = 0.0
    reconstruction: bytes | None = None  # PNG of the reconstructed model input, when pixels changed

    def as_dict(self) -> dict:
        body = {"requested": self.requested, "detected": list(self.detection.conditions) if self.detection else [],
                "applied": list(self.applied), "skipped": dict(self.skipped),
                "ms": round(self.ms, 2), "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
                "reconstruction": None}
        if self.detection is not None:
            body.update(self.detection.as_dict())
        if self.reconstruction is not None:
            body["reconstruction"] = "data:image/png;base64," + base64.b64encode(self.reconstruction).decode()
        return body


class Restorers:
    """One process's stage models, each loaded on first use and kept, and auto's policy (the
    parsed LOUPE_RESTORE_AUTO, or the default for `device`). `run(fn, *args)` runs model work
    (the service passes its model thread's `call`)."""

    def __init__(self, settings: RestoreSettings, home: Path, device: str,
                 run: Callable | None = None):
        self.settings = settings
        self.home = home
        self.device = device
        self.run = run or (lambda fn, *args: fn(*args))
        self.policy = parse_policy(None, device) if settings.auto is None else dict(settings.auto)
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}

    def model(self, name: str, load: Callable):
        """The model called `name`, loaded by `load` (through `run`) the first time."""
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self.run(load)
            return self._loaded[name]

    def missing(self, stage: str, identity: dict) -> str | None:
        """Why `stage` cannot run, found without loading anything (None: it can)."""
        return stage_named(stage).missing(self, identity)


def restored_lookup(library: Library, embedder, data: bytes, query: SearchQuery, mode: str = "auto",
                    restorers: Restorers | None = None, limits: DecodeLimits = DecodeLimits(),
                    timings: dict[str, float] | None = None) -> tuple[SearchPage, RestorationReport]:
    """`query`'s page of the reverse lookup of the picture in `data` with restoration `mode`
    (auto, off or a stage) and, with `query.verify`, geometric verification of the top
    candidates; the page (as `indexer.lookup.reverse_lookup` gives it when nothing runs) and
    the report.

    A reconstruction only proposes candidates. With verification, they are verified against the
    query as given, and one rises above the raw results only as a verified copy; `auto` does not
    reconstruct a query that already verified. Without verification, the raw top result keeps
    its place and the rest are fused (`fusion.fuse`)."""
    if mode not in MODES:
        raise ConfigError(f"restore must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "off" and restorers is None:
        raise ConfigError("restoration needs the stage models (Restorers)")
    with library.one_generation():  # the cursor read and the one written bind to one state
        lookup = ImageLookup.embed(library, embedder, data, query, limits, timings)
        raw = lookup.search(extra=FUSION_EXTRA)
        lookup.verify()
        report = RestorationReport(mode)
        if mode != "off":
            report = _restore(lookup, raw, mode, restorers)
        page = lookup.page()
    restoring = sum(v for name, v in lookup.clock.times.items() if name not in LOOKUP_STEPS)
    return page, replace(report, ms=restoring)


def _restore(lookup: ImageLookup, raw: SearchPage, mode: str, restorers: Restorers) -> RestorationReport:
    """Detect ▸ choose ▸ reconstruct ▸ search the reconstruction ▸ propose (or fuse) what it
    found into `lookup`'s pool; what was detected and done."""
    library, clock, verifier = lookup.library, lookup.clock, lookup.verifier
    detection = _detect(lookup.calibration, library, lookup.pixels, lookup.vector, raw, lookup.query.regions,
                        verified=None if verifier is None else verifier.verdict)
    identity = library.stored_identity().as_dict()
    stages, skipped = _choose(mode, detection, restorers, identity)
    clock.lap("detect")
    report = RestorationReport(mode, detection, skipped=skipped)
    if not stages:
        return report
    given = StageInput(restorers, library, lookup.embedder, lookup.decoded.image, detection, identity, raw,
                       lookup.vector.reshape(-1))
    try:
        vector, reconstruction = _reconstruct(stages, lookup.pixels, given, clock)
    except StageUnavailable as err:
        if mode != "auto":
            raise
        # A configured model that fails to load: auto answers with the raw lookup.
        return replace(report, skipped={**skipped, **{stage: str(err) for stage in stages}})
    restored = lookup.search_vector(vector, extra=FUSION_EXTRA)
    if verifier is not None:
        verifier.propose(restored.results, "restored")
        lookup.results = tuple(labelled_by_source(library, verifier.pool, verifier.sources, lookup.vector))
    else:
        lookup.results = tuple(fuse(raw.results, restored.results))
    clock.lap("knn (restored)+fuse")
    return replace(report, applied=stages, reconstruction=reconstruction,
                   stage_ms={s: clock.times[s] for s in stages})


def labelled_by_source(library: Library, pool, sources: dict[int, set[str]], raw_vector: np.ndarray) -> list:
    """The verifier's pool, each result saying which lookup found it: `raw` (the query as given,
    or its mirror image), `restored` (only the reconstruction) or `both`. A result only the
    reconstruction found is scored against the query as given (its whole picture), so that its
    score, and a label resting on the score cut-off, never come from the reconstruction."""
    only_restored = [r.id for r in pool if sources.get(r.id) == {"restored"}]
    rescored: dict[int, float] = {}
    if only_restored:
        try:
            vectors = library.stored_vectors_of(only_restored)
        except (KeyError, ValueError):  # removed meanwhile: keep what the lookup said
            vectors = None
        if vectors is not None:
            rescored = dict(zip(only_restored, (vectors @ raw_vector.reshape(-1)).tolist()))
    labelled = []
    for result in pool:
        found = sources.get(result.id, set())
        restored, raw = "restored" in found, bool(found - {"restored"})
        label = "both" if raw and restored else ("restored" if restored else "raw")
        score = rescored.get(result.id, result.score)
        labelled.append(replace(result, found_by=label, score=float(score),
                                region=None if result.id in rescored else result.region))
    return labelled


def _detect(calibration: Calibration, library: Library, pixels: np.ndarray, raw_vector: np.ndarray,
            raw: SearchPage, regions: bool, verified: bool | None = None) -> Detection:
    level = float(noise_levels([pixels])[0])
    profile = calibration.noise
    margin = top_score = cutoff = None
    if raw.results:
        top = raw.results[0]
        top_score = top.score
        cutoff = calibration.match.region if top.region is not None else calibration.match.whole
        if regions:
            margin = 0.0
            if top.region is not None:  # a region won: by how much it beat the same picture's whole
                margin = top.score - float(np.dot(library.vector_of(top.id), raw_vector.reshape(-1)))
    return Detection(level, profile.excess(level), profile.threshold(), margin, top_score, cutoff, verified)


def _choose(mode: str, detection: Detection, restorers: Restorers, identity: dict) -> tuple[tuple[str, ...], dict]:
    """The stages to run, in running order, and those skipped with their reasons."""
    if mode != "auto":
        reason = restorers.missing(mode, identity)
        if reason is not None:
            raise StageUnavailable(f"restore={mode}: {reason}")
        return (mode,), {}
    wanted = {stage for condition in detection.conditions for stage in restorers.policy.get(condition, ())}
    if detection.verified:  # the query as given is already a confirmed copy: nothing to gain, only latency
        return (), {stage: VERIFIED_ALREADY for stage in wanted}
    for name in list(wanted):
        wanted.difference_update(stage_named(name).supersedes)
    skipped = {stage: reason for stage in wanted if (reason := restorers.missing(stage, identity))}
    return tuple(s.name for s in REGISTRY if s.name in wanted and s.name not in skipped), skipped


def _reconstruct(stages: tuple[str, ...], pixels: np.ndarray, given: StageInput,
                 clock) -> tuple[np.ndarray, bytes | None]:
    """The reconstructed query vector, and a PNG of the reconstructed model input when the
    image stages changed it."""
    chosen = [stage_named(name) for name in stages]
    current = pixels
    for stage in (s for s in chosen if s.image):
        current = stage.apply(current, given)
        clock.lap(stage.name)
    vector, png = given.raw_vector, None
    if current is not pixels:
        vector = given.embedder.encode_batch([current]).reshape(-1)
        buffer = io.BytesIO()
        Image.fromarray(current).save(buffer, "PNG")
        png = buffer.getvalue()
        clock.lap("embed (restored)")
    for stage in (s for s in chosen if not s.image):
        vector = stage.apply(vector, given)
        clock.lap(stage.name)
    return vector.reshape(1, -1).astype(np.float32), png
