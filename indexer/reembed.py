"""Re-embedding the library with another model (`loupe reembed`): stage ▸ catch up ▸ swap.

**Stage.** Every indexed picture is read again (`indexer.reader`) and embedded with the new
model (`indexer.embed`), whole picture and regions, into staging tables beside the catalog's
own vectors (`StagedVector`, `StagedRegion`, for the model `ReembedTarget` names), one
transaction per batch. Nothing the old model's searches read is touched, and the write lock is
not held, so `loupe serve` keeps searching (and adding, with the old model) meanwhile. A
stopped run leaves its committed batches staged; the next run for the same model continues
with the pictures that have none (a run for another model discards them first).

**Catch up and swap**, holding the write lock: pictures indexed meanwhile are staged too; then
the index files are deleted, one catalog transaction copies the staged vectors over the
catalog's (images and regions), records the new model in `IndexInfo` (its calibration reset)
and empties the staging tables, and the index files are rebuilt from the catalog and saved
atomically (stamped with the model, `IndexMirror`), then recalibrated. A crash at any point
leaves one model whole: before the commit the catalog still holds the old model's vectors and
the staging is kept (rerun to finish); after it, the new one's; and a missing index file is
always rebuilt from the catalog, so no index file can mix the two.

A picture whose file cannot be read now (gone, changed, unreadable) has no vector under the
new model: the swap is refused until it is back or removed, unless `allow_unreadable`, which
turns it (and its duplicates) into a failed row that the next `loupe index` of its folder
reads again if the file returns. Failed rows stay failed; local features (which do not depend
on the model) are kept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from .atomic import fsync_folder
from .catalog import (ImageRecord, ImageStatus, IndexInfo, RegionRecord, ReembedTarget, StagedRegion,
                      StagedVector, utcnow)
from .embed import Embedded, embed_items
from .embedder import ClipEmbedder, ModelIdentity
from .errors import CancelledError, LoupeError, NotIndexedError
from .images import DecodeLimits
from .library import SQL_CHUNK, Library
from .reader import ImageFileDataset, ReadItem, read_batches
from .timing import StageClock

UNREADABLE_SHOWN = 3  # unreadable pictures named in the refusal


@dataclass(frozen=True)
class ReembedOptions:
    batch_size: int = 32
    workers: int | None = None  # decode processes (see `IndexOptions.workers`)
    decode: str = "auto"  # see `IndexOptions.decode`
    limits: DecodeLimits = DecodeLimits()
    progress: bool = True
    # Swap even when some indexed pictures cannot be read now: they become failed rows.
    allow_unreadable: bool = False
    calibrate: bool = True  # recalibrate the match cut-offs after the swap


@dataclass(frozen=True)
class Unreadable:
    """An indexed picture that could not be re-embedded, and why."""

    image_id: int
    path: str
    reason: str

    def as_dict(self) -> dict:
        return {"id": self.image_id, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class ReembedSummary:
    old_model: ModelIdentity
    new_model: ModelIdentity
    pictures: int  # indexed pictures that hold the new model's vectors after the swap
    embedded: int  # pictures this run embedded
    resumed: int  # pictures an earlier, stopped run had staged
    discarded: int  # pictures staged for another model, discarded
    unreadable: tuple[Unreadable, ...]  # pictures turned into failed rows (allow_unreadable)
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        text = (f"re-embedded {self.pictures} pictures with {self.new_model.describe()} "
                f"(was {self.old_model.describe()}): {self.embedded} embedded now, {self.resumed} resumed "
                f"in {self.seconds:.1f} s")
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable pictures are now failed"
        return text

    def as_dict(self) -> dict:
        return {"old_model": self.old_model.as_dict(), "new_model": self.new_model.as_dict(),
                "pictures": self.pictures, "embedded": self.embedded, "resumed": self.resumed,
                "discarded": self.discarded, "unreadable": [u.as_dict() for u in self.unreadable],
                "seconds": round(self.seconds, 3), "stages": self.stages}


@dataclass(frozen=True)
class _Row:
    id: int
    path: str
    content_hash: str


class Reembed:
    """One run of `loupe reembed`: the library's indexed pictures embedded with `embedder`'s
    model, staged, then swapped in (see the module's docstring)."""

    def __init__(self, library: Library, embedder: ClipEmbedder, options: ReembedOptions = ReembedOptions(),
                 cancelled: Callable[[], bool] | None = None):
        self.library = library
        self.embedder = embedder
        self.options = options
        self._cancelled = cancelled or (lambda: False)  # asked between batches
        self.clock = StageClock()
        self.embedded = 0
        self.unreadable: dict[int, Unreadable] = {}

    @property
    def target(self) -> ModelIdentity:
        return self.embedder.identity

    def run(self, progress_stream: TextIO | None = None) -> ReembedSummary:
        from .lock import reembed_lock

        started = time.perf_counter()
        old = self._check()
        with reembed_lock(self.library.settings.home):
            discarded = self._begin()
            resumed = self._staged_count()
            self._stage(self._todo(), progress_stream, "re-embedding")
            with self.library.writer():
                self._stage(self._todo(skip=set(self.unreadable)), progress_stream, "catching up")
                lost = self._lost()
                if lost and not self.options.allow_unreadable:
                    raise LoupeError(self._refusal(lost))
                pictures = swap(self.library, self.target, lost)
                if self.options.calibrate:
                    self.library.calibrate()
                from .collection_map import follow_index

                follow_index(self.library, self.embedder)  # the graph and the map, from the new vectors
        from .thumbnails import remove_legacy_thumbnails

        remove_legacy_thumbnails(self.library.settings.home)
        return ReembedSummary(old, self.target, pictures, self.embedded, resumed, discarded, tuple(lost),
                              time.perf_counter() - started, self.clock.as_dict())

    # -- before -------------------------------------------------------------------------------
    def _check(self) -> ModelIdentity:
        """The index's model; refuses an empty index and a target that is the index's model."""
        old = self.library.stored_identity()
        if old is None:
            raise NotIndexedError("nothing is indexed yet: run `loupe index PATH` with the model you want "
                                  "(LOUPE_MODEL/LOUPE_PRETRAINED); there is nothing to re-embed")
        if old.same_weights(self.target):
            raise LoupeError(f"the index already uses {old.describe()}: set LOUPE_MODEL/LOUPE_PRETRAINED "
                             "(or --model/--pretrained) to the model to re-embed the library with")
        return old

    def _begin(self) -> int:
        """Record the target model; staged vectors of another target are discarded (their
        count is returned)."""
        target = self.target
        with self.library.sessions.begin() as session:
            row = session.get(ReembedTarget, 1)
            discarded = 0
            if row is not None and not _identity_of(row).same_weights(target):
                discarded = session.scalar(select(func.count()).select_from(StagedVector)) or 0
                _clear_staging(session)
                row = None
            if row is None:
                session.add(ReembedTarget(id=1, architecture=target.architecture, pretrained=target.pretrained,
                                          checkpoint_sha256=target.checkpoint_sha256, embed_dim=target.embed_dim))
        return int(discarded)

    def _staged_count(self) -> int:
        with self.library.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(StagedVector)) or 0)

    def _todo(self, skip: set[int] = frozenset()) -> list[_Row]:
        """The indexed pictures with no staged vector yet, by id (`skip` left out)."""
        staged = select(StagedVector.image_id)
        with self.library.sessions() as session:
            rows = session.execute(
                select(ImageRecord.id, ImageRecord.path, ImageRecord.content_hash)
                .where(ImageRecord.status == ImageStatus.INDEXED, ImageRecord.id.not_in(staged))
                .order_by(ImageRecord.id)
            ).all()
        return [_Row(r.id, r.path, r.content_hash) for r in rows if r.id not in skip]

    # -- staging ------------------------------------------------------------------------------
    def _stage(self, todo: list[_Row], progress_stream: TextIO | None, label: str) -> None:
        """Read, embed and stage `todo`, one transaction per batch."""
        if not todo:
            return
        from tqdm import tqdm

        options = self.options
        dataset = ImageFileDataset([row.path for row in todo], self.embedder.prepare, options.limits,
                                   self.embedder.image_size, regions=self.library.region_spec, features=False)
        by_path = {row.path: row for row in todo}
        batches = read_batches(dataset, options.batch_size, self.embedder.device, options.decode, options.workers)
        bar = tqdm(total=len(todo), unit="img", desc=label, file=progress_stream or sys.stderr,
                   disable=not options.progress, dynamic_ncols=True)
        with bar:
            for batch in self.clock.each("read", batches):
                pairs = self._usable(batch, by_path, dataset)
                with self.clock.stage("embed"):
                    vectors = embed_items(self.embedder, [item for _, item in pairs], options.batch_size)
                with self.clock.stage("write"):
                    self._write(pairs, vectors)
                bar.update(len(batch))
                if self._cancelled():
                    raise CancelledError("cancelled on request; the pictures staged so far are kept: "
                                         "rerun `loupe reembed` to continue")

    def _usable(self, batch: Sequence[ReadItem], by_path: dict[str, _Row],
                dataset: ImageFileDataset) -> list[tuple[_Row, ReadItem]]:
        """Each batch item whose bytes are still the row's, else the same bytes read from one of
        the row's duplicates; the rest are noted as unreadable."""
        found = []
        for item in batch:
            row = by_path[item.path]
            if _holds(item, row):
                found.append((row, item))
                self.unreadable.pop(row.id, None)
                continue
            reason = item.error or "the file changed since it was indexed"
            copy = next((other for other in map(dataset.read, self._copies(row)) if _holds(other, row)), None)
            if copy is not None:
                found.append((row, copy))
                self.unreadable.pop(row.id, None)
            else:
                self.unreadable[row.id] = Unreadable(row.id, row.path, reason)
        return found

    def _copies(self, row: _Row) -> list[str]:
        """The paths of `row`'s duplicates (the same bytes elsewhere)."""
        with self.library.sessions() as session:
            return list(session.scalars(select(ImageRecord.path).where(ImageRecord.duplicate_of == row.id)
                                        .order_by(ImageRecord.id)))

    def _write(self, pairs: list[tuple[_Row, ReadItem]], vectors: dict[str, Embedded]) -> None:
        """Stage one batch's vectors in one transaction (pictures removed meanwhile skipped)."""
        if not pairs:
            return
        with self.library.sessions.begin() as session:
            ids = [row.id for row, _ in pairs]
            alive = set(session.scalars(select(ImageRecord.id).where(
                ImageRecord.id.in_(ids), ImageRecord.status == ImageStatus.INDEXED)))
            for row, item in pairs:
                if row.id not in alive or session.get(StagedVector, row.id) is not None:
                    continue
                embedded = vectors[item.sha256]
                noise = float(embedded.noise) if np.isfinite(embedded.noise) else None
                session.add(StagedVector(image_id=row.id, embedding=_blob(embedded.whole), noise_level=noise))
                session.add_all(StagedRegion(image_id=row.id, x=box.x, y=box.y, w=box.w, h=box.h,
                                             embedding=_blob(vector))
                                for box, vector in zip(item.regions, embedded.regions))
                self.embedded += 1

    # -- the swap -------------------------------------------------------------------------------
    def _lost(self) -> list[Unreadable]:
        """Indexed pictures still without a staged vector (the write lock is held: no more come)."""
        rows = self._todo()
        return [self.unreadable.get(row.id) or Unreadable(row.id, row.path, "not read") for row in rows]

    def _refusal(self, lost: list[Unreadable]) -> str:
        named = "; ".join(f"{u.path}: {u.reason}" for u in lost[:UNREADABLE_SHOWN])
        more = f" and {len(lost) - UNREADABLE_SHOWN} more" if len(lost) > UNREADABLE_SHOWN else ""
        return (f"{len(lost)} indexed pictures could not be read for re-embedding ({named}{more}); nothing "
                "was swapped and the pictures staged so far are kept. Bring the files back and rerun, remove "
                "them (`loupe remove --missing`, `loupe remove PATH`), or rerun with --allow-unreadable to "
                "swap without them (they become failed)")


def swap(library: Library, target: ModelIdentity, lost: Sequence[Unreadable] = ()) -> int:
    """Make the staged vectors the catalog's (see the module's docstring); `lost` pictures
    become failed rows. Callers hold the write lock and have staged every other indexed
    picture. Returns the number of indexed pictures."""
    from .collection_map import map_path

    settings = library.settings
    # The kNN graph and the map were computed from the old model's vectors: dropped with the
    # index files (searches re-rank without a graph until `follow_index` rebuilds it).
    _drop_index_files([settings.index_path, settings.regions_path, library.graph.path, map_path(library)])
    with library.sessions.begin() as session:
        pictures = _commit_swap(session, target, lost)
    library.forget()
    _rebuild_indexes(library)
    return pictures


def _drop_index_files(paths: Sequence[Path]) -> None:
    """Delete the old model's index files before the catalog changes: whatever happens next,
    the index is rebuilt from the catalog, so it can never hold the other model's vectors."""
    for path in paths:
        path.unlink(missing_ok=True)
    fsync_folder(paths[0].parent)


def _commit_swap(session, target: ModelIdentity, lost: Sequence[Unreadable]) -> int:
    """The swap's one catalog transaction (the caller commits it)."""
    _fail_lost(session, target, [u.image_id for u in lost])
    indexed = ImageRecord.status == ImageStatus.INDEXED
    staged = select(StagedVector).where(StagedVector.image_id == ImageRecord.id)
    session.execute(update(ImageRecord).where(indexed).values(
        embedding=staged.with_only_columns(StagedVector.embedding).scalar_subquery(),
        noise_level=staged.with_only_columns(StagedVector.noise_level).scalar_subquery(),
    ).execution_options(synchronize_session=False))
    session.execute(delete(RegionRecord))
    columns = ("image_id", "x", "y", "w", "h", "embedding")
    session.execute(insert(RegionRecord).from_select(
        columns,
        select(*(getattr(StagedRegion, c) for c in columns))
        .where(StagedRegion.image_id.in_(select(ImageRecord.id).where(indexed)))
        .order_by(StagedRegion.id),
    ))
    info = session.get(IndexInfo, 1)
    info.architecture, info.pretrained = target.architecture, target.pretrained
    info.checkpoint_sha256, info.embed_dim = target.checkpoint_sha256, target.embed_dim
    for name in ("whole_cutoff", "region_cutoff", "cutoff_basis", "calibrated_images", "noise_median",
                 "noise_high", "inlier_cutoff", "inlier_basis"):
        setattr(info, name, None)
    info.created_at = utcnow()
    _clear_staging(session)
    session.flush()
    return int(session.scalar(select(func.count()).select_from(ImageRecord).where(indexed)) or 0)


def _fail_lost(session, target: ModelIdentity, ids: Sequence[int]) -> None:
    """Turn pictures that have no vector under `target` (and their duplicates) into failed rows.
    Their mtime is cleared, so the next `loupe index` of their folder reads the file again if it
    comes back, as a change."""
    error = f"not re-embedded with {target.describe()}: the file could not be read; index its folder again"
    for start in range(0, len(ids), SQL_CHUNK):
        chunk = list(ids[start : start + SQL_CHUNK])
        rows = (ImageRecord.id.in_(chunk)) | (ImageRecord.duplicate_of.in_(chunk))
        session.execute(update(ImageRecord).where(rows).values(
            status=ImageStatus.FAILED, error=error, embedding=None, noise_level=None, duplicate_of=None,
            mtime_ns=0,
        ).execution_options(synchronize_session=False))


def _rebuild_indexes(library: Library) -> None:
    """The new model's index files, built from the catalog and saved atomically."""
    library.sync_store()


def discard(library: Library) -> int:
    """Drop a stopped re-embed's staging (`loupe reembed --discard`); returns the pictures it held."""
    from .lock import reembed_lock

    with reembed_lock(library.settings.home), library.sessions.begin() as session:
        count = int(session.scalar(select(func.count()).select_from(StagedVector)) or 0)
        _clear_staging(session)
    return count


def staged_progress(library: Library) -> dict | None:
    """The staged re-embed, if any: its model and how many indexed pictures it holds so far."""
    with library.sessions() as session:
        row = session.get(ReembedTarget, 1)
        if row is None:
            return None
        staged = session.scalar(select(func.count()).select_from(StagedVector)) or 0
    return {"model": _identity_of(row).as_dict(), "staged": int(staged),
            "started_at": row.started_at.isoformat() if row.started_at else None}


def _clear_staging(session) -> None:
    session.execute(delete(StagedRegion))
    session.execute(delete(StagedVector))
    session.execute(delete(ReembedTarget))


def _identity_of(row: ReembedTarget) -> ModelIdentity:
    return ModelIdentity(row.architecture, row.pretrained, row.checkpoint_sha256, row.embed_dim)


def _holds(item: ReadItem, row: _Row) -> bool:
    """Whether a read item has the bytes the row was indexed from."""
    return item.error is None and item.sha256 == row.content_hash


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
