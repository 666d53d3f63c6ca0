"""Restored reverse lookup: decode ▸ embed ▸ kNN ▸ verify ▸ detect ▸ reconstruct ▸ kNN again ▸
verify the proposals ▸ label.

The raw query is always searched (and, with verification, its top candidates verified). A
reconstruction only proposes: the reconstructed query is searched too, and what it finds is
verified against the query *as given*. A candidate only the reconstruction found rises above the
raw results as a verified copy, else it ranks below them, so a raw top result can only be
displaced by a verified copy. Without verification the raw top result keeps its place and the
rest of the two rankings are fused (`fusion`). Each result says which lookup found it; when no
stage runs, the answer is exactly the raw lookup's. Stages, in the order they run:

    outpaint     crop ▸ full frame (a diffusers inpainting pipeline, when configured)
    blur         Gaussian blur of the model input (the trivial denoising baseline)
    pixel        diffusion purification from the timestep matching the noise, one x₀ prediction
    pixel-ddim   the same with LOUPE_RESTORE_STEPS DDIM steps
    embedding    the conditional diffusion model over CLIP embeddings
    qe           αQE query expansion over the top neighbours (closed form)

`restore=auto` runs, for each condition detected (damage: `noise`, `crop`; `unmatched`: no
verified copy, or without verification no result over the cut-off), the stages its policy names
(measured by bench/robustness.py; LOUPE_RESTORE_AUTO overrides it), unless the query as given
already verified, and skips, with a reason, those whose model is missing; naming a stage runs
it whatever was detected, and fails clearly when it cannot.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from indexer.errors import ConfigError
from indexer.images import DecodeLimits, decode_image
from indexer.library import Library, SearchPage
from indexer.lookup import CandidateVerifier, finish_page, rank_verified
from indexer.verify import VerifyOptions
from indexer.noise import noise_levels

from ..settings import RestoreSettings
from .fusion import fuse
from .stages import CONDITIONS, IMAGE_STAGES, MODES, STAGES
from .pixel import StageUnavailable

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
BLUR_RADIUS = 1.0  # at the model's input resolution
QE_NEIGHBOURS = 5
VERIFIED_ALREADY = "the query as given was verified a copy"
FUSION_EXTRA = 20  # each ranking is fetched this much deeper than the page, for fusion


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
    """One process's stage models, each loaded on first use and kept. `run(fn, *args)` runs
    model work (the service passes its model thread's `call`)."""

    def __init__(self, settings: RestoreSettings, home: Path, device: str,
                 run: Callable | None = None):
        self.settings = settings
        self.home = home
        self.device = device
        self.run = run or (lambda fn, *args: fn(*args))
        self.policy = parse_policy(settings.auto, device)
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}

    def _get(self, name: str, load: Callable):
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self.run(load)
            return self._loaded[name]

    def pixel(self):
        from .pixel import load_pixel_restorer

        return self._get("pixel", lambda: load_pixel_restorer(self.settings.pixel_model, self.home, self.device))

    def embedding(self, identity: dict):
        from .embedding import OWN_FOLDER, load_embedding_restorer

        restorer = self._get("embedding", lambda: load_embedding_restorer(self.home / OWN_FOLDER, identity))
        return restorer

    def outpainter(self):
        from .outpaint import load_outpainter

        if not self.settings.outpaint_model:
            raise StageUnavailable("no outpainting model: set LOUPE_OUTPAINT_MODEL to a diffusers inpainting pipeline")
        return self._get("outpaint", lambda: load_outpainter(self.settings.outpaint_model, self.device))

    def missing(self, stage: str, identity: dict) -> str | None:
        """Why `stage` cannot run, found without loading anything (None: it can)."""
        from .embedding import INFO_FILE, OWN_FOLDER as EMBEDDING_FOLDER
        from .pixel import OWN_FOLDER as PIXEL_FOLDER

        if stage in ("pixel", "pixel-ddim") and not self.settings.pixel_model \
                and not (self.home / PIXEL_FOLDER / "model.json").is_file():
            return "no pixel restorer: run `loupe train-restorer` or set LOUPE_RESTORE_MODEL"
        if stage == "outpaint" and not self.settings.outpaint_model:
            return "no outpainting model: set LOUPE_OUTPAINT_MODEL"
        if stage == "embedding":
            try:
                info = json.loads((self.home / EMBEDDING_FOLDER / INFO_FILE).read_text())
            except (OSError, ValueError):
                return "no embedding restorer: run `loupe train-restorer --stage embedding`"
            if info.get("model") != identity:
                return "the embedding restorer belongs to another model: train it again"
        return None


def restored_lookup(library: Library, embedder, data: bytes, k: int, offset: int = 0, regions: bool = True,
                    limits: DecodeLimits = DecodeLimits(), mode: str = "auto", restorers: Restorers | None = None,
                    timings: dict[str, float] | None = None,
                    verify: VerifyOptions | None = None) -> tuple[SearchPage, RestorationReport]:
    """Reverse lookup of the picture in `data` with restoration `mode` (auto, off or a stage)
    and, with `verify`, geometric verification of the top candidates; the page (as
    `indexer.lookup.reverse_lookup` gives it when nothing runs) and the report.

    A reconstruction only proposes candidates. With verification, they are verified against the
    query as given, and one rises above the raw results only as a verified copy; `auto` does not
    reconstruct a query that already verified. Without verification, the raw top result keeps
    its place and the rest are fused (`fusion.fuse`)."""
    if mode not in MODES:
        raise ConfigError(f"restore must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "off" and restorers is None:
        raise ConfigError("restoration needs the stage models (Restorers)")
    clock = _Clock(timings)
    decoded = decode_image(data, limits, draft_size=library.draft_size(embedder.image_size))
    clock.lap("decode")
    pixels = embedder.prepare(decoded.image)
    raw_vector = embedder.encode_batch([pixels])
    clock.lap("embed")
    depth = k + offset + FUSION_EXTRA
    if verify is not None:
        depth = max(depth, verify.candidates)
    raw = library.search(raw_vector, depth, 0, regions=regions)
    clock.lap("knn+join")
    verifier, results = None, raw.results
    if verify is not None:
        verifier = CandidateVerifier(library, decoded, verify)
        verifier.verify_lookup(raw.results, embedder, regions)
        results = tuple(verifier.pool)  # the raw results, then what the mirrored query found
        clock.lap("verify")
    report = RestorationReport(mode)
    if mode != "off":
        detection = _detect(library, pixels, raw_vector, raw, regions,
                            verified=None if verifier is None else verifier.verdict)
        identity = library.stored_identity().as_dict()
        stages, skipped = _choose(mode, detection, restorers, identity)
        clock.lap("detect")
        report = RestorationReport(mode, detection, skipped=skipped)
        if stages:
            try:
                vector, reconstruction = _reconstruct(stages, library, embedder, restorers, decoded.image, pixels,
                                                      raw_vector, raw, detection, identity, clock)
            except StageUnavailable as err:
                if mode != "auto":
                    raise
                # A configured model that fails to load: auto answers with the raw lookup.
                report = replace(report, skipped={**skipped, **{stage: str(err) for stage in stages}})
            else:
                restored = library.search(vector, depth, 0, regions=regions)
                if verifier is not None:
                    verifier.propose(restored.results, "restored")
                    results = tuple(labelled_by_source(library, verifier.pool, verifier.sources, raw_vector))
                else:
                    results = tuple(fuse(raw.results, restored.results))
                clock.lap("knn (restored)+fuse")
                report = replace(report, applied=stages, reconstruction=reconstruction,
                                 stage_ms={s: clock.times[s] for s in stages})
    verified = None
    if verifier is not None:
        results, verified = rank_verified(results, verifier.report, decoded.sha256), verifier.report
        clock.lap("rank")
    page = SearchPage(tuple(results[offset : offset + k]), total=raw.total, took_ms=0.0)
    page = finish_page(library, page, decoded, data, limits, verified, verify)
    clock.lap("label")
    restoring = sum(v for name, v in clock.times.items()
                    if name not in ("decode", "embed", "knn+join", "verify", "rank", "label"))
    return replace(page, took_ms=clock.total()), replace(report, ms=restoring)


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


class _Clock:
    def __init__(self, timings: dict[str, float] | None):
        self.times = timings if timings is not None else {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = (now - self.last) * 1000
        self.last = now

    def total(self) -> float:
        return (time.perf_counter() - self.start) * 1000


def _detect(library: Library, pixels: np.ndarray, raw_vector: np.ndarray, raw: SearchPage, regions: bool,
            verified: bool | None = None) -> Detection:
    level = float(noise_levels([pixels])[0])
    profile = library.noise_profile()
    margin = top_score = cutoff = None
    if raw.results:
        top = raw.results[0]
        match_cutoff = library.match_cutoff()
        top_score = top.score
        cutoff = match_cutoff.region if top.region is not None else match_cutoff.whole
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
    if "pixel-ddim" in wanted:
        wanted.discard("pixel")
    skipped = {stage: reason for stage in wanted if (reason := restorers.missing(stage, identity))}
    return tuple(s for s in STAGES if s in wanted and s not in skipped), skipped


def _reconstruct(stages, library, embedder, restorers: Restorers, image, pixels, raw_vector, raw: SearchPage,
                 detection: Detection, identity: dict, clock: _Clock) -> tuple[np.ndarray, bytes | None]:
    """The reconstructed query vector, and a PNG of the reconstructed model input when the
    image stages changed it."""
    current = pixels
    for stage in (s for s in stages if s in IMAGE_STAGES):
        if stage == "outpaint":
            current = embedder.prepare(restorers.run(restorers.outpainter().outpaint, image))
        elif stage == "blur":
            current = np.asarray(Image.fromarray(current).filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))
        else:
            steps = 1 if stage == "pixel" else restorers.settings.steps
            current = restorers.run(restorers.pixel().purify, current, detection.noise_excess, steps)
        clock.lap(stage)
    raw_flat = raw_vector.reshape(-1)
    vector, png = raw_flat, None
    if current is not pixels:
        vector = embedder.encode_batch([current]).reshape(-1)
        buffer = io.BytesIO()
        Image.fromarray(current).save(buffer, "PNG")
        png = buffer.getvalue()
        clock.lap("embed (restored)")
    for stage in (s for s in stages if s not in IMAGE_STAGES):
        if stage == "embedding":
            vector = restorers.run(restorers.embedding(identity).restore, vector)
        else:
            vector = _expand(library, vector, raw if vector is raw_flat else None)
        clock.lap(stage)
    return vector.reshape(1, -1).astype(np.float32), png


def _expand(library: Library, vector: np.ndarray, page: SearchPage | None) -> np.ndarray:
    from .expansion import alpha_query_expansion

    if page is None:
        page = library.search(vector.reshape(1, -1), QE_NEIGHBOURS, 0)
    top = [r.id for r in page.results[:QE_NEIGHBOURS]]
    if not top:
        return vector
    neighbours = np.stack([library.vector_of(i) for i in top])
    return alpha_query_expansion(vector, neighbours, neighbours @ vector)
