"""A Loupe library: the SQL catalog and its FAISS indexes kept in agreement.

This is where search results' FAISS ids become catalog rows (the read side; `indexer.writer`
owns the write side): the images index is keyed by image primary keys and the regions index
by region primary keys, which this module maps back to their images. The catalog is the
source of truth; each index file is a cache of the vectors the catalog stores (see
`IndexMirror`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Sequence

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .catalog import ImageRecord, ImageStatus, IndexInfo, JobRecord, RegionRecord, utcnow
from .database import open_database
from .embedder import ModelIdentity
from .diffusion_rank import DEFAULT_DIFFUSION, diffusion_order
from .graph import GraphMirror, GraphUpdate
from .errors import FileChangedError, ModelMismatchError, NotIndexedError
from .images import DecodeLimits, decode_image
from .matching import (
    CALIBRATION_SAMPLE,
    COPY_LABELS,
    DEFAULT_CUTOFF,
    DEFAULT_INLIER_CUTOFF,
    EXACT,
    INLIER_CALIBRATION_NEIGHBOURS,
    INLIER_CALIBRATION_SAMPLE,
    NEAR_DUPLICATE,
    PIXEL_CHECK_SCORE,
    SIMILAR,
    InlierCutoff,
    MatchCutoff,
    calibrate_cutoff,
    inlier_cutoff,
    same_pixels,
)
from .mirror import IndexMirror
from .noise import DEFAULT_PROFILE, NoiseProfile
from .query import MAX_DEPTH, MAX_OFFSET, SCORE_DIGITS, SearchQuery
from .regions import Box, RegionSpec
from .settings import Settings
from .vectorstore import IdSelection, VectorStore

if TYPE_CHECKING:
    from PIL import Image

    from .map_file import CollectionMap
    from .features import LocalFeatures
    from .filters import LibraryFilter
    from .metatable import MetadataTable
    from .verify import Verification, VerifyReport

log = logging.getLogger(__name__)

# Region hits fetched per wanted result: an image's regions often fill several top places.
REGION_FANOUT = 4
SELECTIONS_KEPT = 4  # filters whose id sets (and, when small, vectors: 32 MB at most each) a library keeps
SQL_CHUNK = 1000  # ids per IN (...) list: SQLite and PostgreSQL cap the parameters of one statement


@dataclass(frozen=True)
class SearchResult:
    id: int
    path: str
    score: float
    width: int | None
    height: int | None
    region: Box | None = None  # the part of the image that matched, when a region beat the whole
    match: str | None = None  # image searches: exact, near-duplicate or similar
    content_hash: str | None = None
    found_by: str | None = None  # restored image searches: "raw", "restored" or "both"
    verification: "Verification | None" = None  # image searches: the geometric evidence, when verified

    def as_dict(self) -> dict:
        """The result's facts; the web service adds its URLs (`searchapp.urls`)."""
        body = {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, SCORE_DIGITS),
            "width": self.width,
            "height": self.height,
        }
        if self.match is not None:
            body["match"] = self.match
            body["region"] = self.region.as_list() if self.region else None
            body["verification"] = self.verification.as_dict() if self.verification else None
        if self.found_by is not None:
            body["found_by"] = self.found_by
        return body


@dataclass(frozen=True)
class SearchPage:
    results: tuple[SearchResult, ...]
    total: int
    took_ms: float
    copy_found: bool | None = None  # image searches: whether a result is the query's picture
    verify: dict | None = None  # image searches: what verification did (None: not asked)
    next: str | None = None  # the cursor of the next page (None: this is the last)

    def as_dict(self, result_json: Callable[[SearchResult], dict] = SearchResult.as_dict) -> dict:
        """The page's JSON; `result_json` serialises each result (searchapp adds URLs)."""
        body = {"results": [result_json(r) for r in self.results], "total": self.total,
                "took_ms": round(self.took_ms, 2), "next": self.next}
        if self.copy_found is not None:
            body["copy_found"] = self.copy_found
        if self.verify is not None:
            body["verify"] = self.verify
        return body


@dataclass(frozen=True)
class Calibration:
    """What calibration learnt of the index (`Library.calibrate`), read once per query."""

    match: MatchCutoff = DEFAULT_CUTOFF  # the near-duplicate score cut-off
    inliers: InlierCutoff = DEFAULT_INLIER_CUTOFF  # verification's copy cut-off
    noise: NoiseProfile = DEFAULT_PROFILE  # the indexed pictures' noise levels


class Library:
    """The catalog and vector indexes under one `Settings`."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings = settings
        self.sessions = sessions
        self._identity: ModelIdentity | None = None
        self.images = IndexMirror(settings.index_path, sessions, ImageRecord.id, ImageRecord.embedding,
                                  where=ImageRecord.status == ImageStatus.INDEXED, dim=self._dim,
                                  mmap=settings.index_mmap, stamp=self._stamp)
        self.regions = IndexMirror(settings.regions_path, sessions, RegionRecord.id, RegionRecord.embedding,
                                   dim=self._dim, mmap=settings.index_mmap, stamp=self._stamp)
        self.graph = GraphMirror(settings.index_path.with_name("graph.npz"))  # the kNN graph (indexer.graph)
        self.diffusion = DEFAULT_DIFFUSION  # rerank=diffusion's parameters (indexer.diffusion_rank)
        self._tables: dict[str, tuple] = {}  # "images"/"regions" → (generation, table) (see `table`)
        self._map: tuple[int, "CollectionMap | None"] | None = None  # (file stamp, map) (`collection_map`)
        self._pinned = threading.local()  # .generation: this thread's search's (see `one_generation`)
        self._selections: dict[tuple, IdSelection] = {}  # (generation, filter, map stamp) → ids (`selection`)
        self._region_selections: dict[int, tuple[IdSelection, IdSelection]] = {}  # id(images) → (images, regions)

    @classmethod
    def open(cls, settings: Settings) -> "Library":
        return cls(settings, open_database(settings))

    def close(self) -> None:
        self.sessions.kw["bind"].dispose()

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the write locks: this data folder's, and the catalog's on PostgreSQL."""
        from .lock import catalog_lock, write_lock

        with write_lock(self.settings.home), catalog_lock(self.sessions.kw["bind"]):
            self.check_model_unchanged()
            yield

    @property
    def region_spec(self) -> RegionSpec:
        return self.settings.regions

    def draft_size(self, input_size: int) -> int:
        """The JPEG draft size pictures are decoded at, indexed and queried alike: enough for
        the smallest region at the model's `input_size` and for the local features."""
        from .features import decode_side

        return decode_side(self.region_spec.draft_size(input_size))

    # -- model identity -------------------------------------------------------------------
    def stored_identity(self) -> ModelIdentity | None:
        """The index's model (read once it exists: it never changes afterwards)."""
        if self._identity is None:
            with self.sessions() as session:
                info = session.get(IndexInfo, 1)
            if info is not None:
                self._identity = ModelIdentity(info.architecture, info.pretrained, info.checkpoint_sha256, info.embed_dim)
        return self._identity

    def bind_model(self, identity: ModelIdentity) -> None:
        """Check that `identity` is the index's model, recording it if the index has none yet."""
        stored = self.stored_identity()
        if stored is None:
            with self.sessions.begin() as session:
                if session.get(IndexInfo, 1) is None:
                    session.add(
                        IndexInfo(
                            id=1,
                            architecture=identity.architecture,
                            pretrained=identity.pretrained,
                            checkpoint_sha256=identity.checkpoint_sha256,
                            embed_dim=identity.embed_dim,
                        )
                    )
            stored = self.stored_identity()
        if not stored.same_weights(identity):
            raise ModelMismatchError(
                f"this index was built with {stored.describe()} but the configured model is "
                f"{identity.describe()}: set LOUPE_MODEL/LOUPE_PRETRAINED to match the index, "
                "run `loupe reembed` to re-embed the library with the configured model, "
                "or use another LOUPE_HOME (or database) for the new model"
            )

    def _catalog_identity(self) -> ModelIdentity | None:
        """The model the catalog records now (not the one this object read first)."""
        with self.sessions() as session:
            info = session.get(IndexInfo, 1)
        return None if info is None else ModelIdentity(info.architecture, info.pretrained,
                                                        info.checkpoint_sha256, info.embed_dim)

    def model_changed(self) -> bool:
        """Whether another process changed the index's model (`loupe reembed`) since this object
        read it; if so, forget what was read, so the next use reads the new model's index."""
        if self._identity is None:
            return False
        now = self._catalog_identity()
        if now is not None and now.same_weights(self._identity) and now.embed_dim == self._identity.embed_dim:
            return False
        self.forget()
        return True

    def check_model_unchanged(self) -> None:
        """Refuse to go on when the index's model changed since this object read it: a process
        still running the old model must not add its vectors to the new model's index."""
        before = self._identity
        if self.model_changed():
            now = self.stored_identity()
            raise ModelMismatchError(
                f"the index was re-embedded with {now.describe() if now else 'another model'} while this "
                f"process ran {before.describe()}: restart it with LOUPE_MODEL/LOUPE_PRETRAINED set to the "
                "index's model"
            )

    def forget(self) -> None:
        """Drop what this object read of the index (its model, the loaded vector indexes); the
        next use reads them again."""
        self._identity = None
        self.images.forget()
        self.regions.forget()

    def _stamp(self) -> str | None:
        """The index's model as one line, written beside each index file (`IndexMirror`)."""
        identity = self.stored_identity()
        if identity is None:
            return None
        return f"{identity.architecture}|{identity.pretrained}|{identity.checkpoint_sha256 or ''}|{identity.embed_dim}"

    def _dim(self) -> int | None:
        identity = self.stored_identity()
        return identity.embed_dim if identity else None

    # -- the vector indexes -----------------------------------------------------------------
    @property
    def store(self) -> VectorStore:
        """The images index (whole-picture vectors), loaded and reconciled on first use."""
        return self.images.store

    def refresh(self) -> bool:
        """Reload the indexes another process saved since (e.g. a finished bulk job); True
        if one reloaded. Each new index is ready before it replaces the old one. When the
        index's model changed (`loupe reembed`), everything is forgotten and read again on next
        use, so that `bind_model` then refuses a process that still runs the old model."""
        if self.model_changed():
            return True
        images = self.images.refresh()
        regions = self.regions.refresh()
        return images or regions

    def sync_store(self) -> VectorStore:
        """Reconcile both indexes with the catalog, switch their types if their sizes call
        for others, and save them. Callers hold the write lock."""
        self.regions.sync()
        return self.images.sync()

    def save_index(self) -> None:
        self.regions.save()
        self.images.save()

    # -- queries ------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, query: SearchQuery, started: float | None = None) -> SearchPage:
        """`query`'s page of the images nearest to one query `vector`, joined to the catalog.

        With `query.regions`, an image scores the best of its whole vector and its regions'
        (each lowered by the region penalty), and a result found by a region says which one.
        Images in `query.exclude` are left out, and with `query.min_score` those scoring below
        it, before paging; `total` is then how many reach it (counted down to MAX_DEPTH).
        """
        with self.one_generation():
            return self._search(vector, query, started if started is not None else time.perf_counter())

    def _search(self, vector: np.ndarray, query: SearchQuery, t0: float) -> SearchPage:
        query = self.resume(vector, query)
        brought: set[int] = set()  # results the diffusion brought into the page
        if query.rerank == "diffusion" and query.by_relevance:
            ranked, total, brought = self._diffused(vector, query)
        else:
            ranked, total = self._ranked(vector, query)
        ranked = ranked[query.offset : query.offset + query.k]
        ids = [image_id for image_id, _, _ in ranked]
        with self.sessions() as session:
            rows = {
                r.id: r
                for r in session.execute(
                    select(ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height,
                           ImageRecord.content_hash).where(ImageRecord.id.in_(ids))
                ).all()
            }
        results = tuple(
            SearchResult(image_id, rows[image_id].path, score, rows[image_id].width, rows[image_id].height,
                         region=box, content_hash=rows[image_id].content_hash,
                         found_by="diffusion" if image_id in brought else None)
            for image_id, score, box in ranked
            if image_id in rows
        )
        return SearchPage(results, total=total, took_ms=(time.perf_counter() - t0) * 1000,
                          next=self.next_cursor(vector, query, len(results), total))

    def _ranked(self, vector: np.ndarray, query: SearchQuery) -> tuple[list[tuple[int, float, Box | None]], int]:
        """The ranked results down to `query`'s page and how many results there are: the images
        not excluded or, with min_score, those reaching it (the ranking deepens until every one
        reaching it is found, or MAX_DEPTH)."""
        exclude = set(query.exclude)
        selection = self.selection(query.filters)
        if not query.by_relevance:
            ranked = self.sorted_by(self._pool(vector, query, exclude, selection), query.sort, lambda item: item[0])
            return ranked, len(ranked)
        if query.min_score is None:
            count = len(self.store) if selection is None else len(selection)
            hidden = len(exclude) if selection is None else int(np.isin(list(exclude), selection.ids).sum())
            return self._rank(vector, query.depth, query.regions, exclude, selection=selection), max(count - hidden, 0)
        best = self._admitted(vector, query, query.depth, exclude, selection)
        return _ordered(best, query.depth), len(best)

    def _diffused(self, vector: np.ndarray, query: SearchQuery) -> tuple[list[tuple[int, float, Box | None]], int, set[int]]:
        """The ranking re-ordered by diffusion over the graph (`indexer.diffusion_rank`): the
        direct ranking's top `truncation` candidates are re-ranked, copies (scoring at least the
        near-duplicate cut-off) staying first; also the ids the direct ranking had not placed
        within the page's depth. Without a graph, the direct ranking."""
        params = self.diffusion
        pool, total = self._ranked(vector, replace(query, k=max(query.depth, params.truncation), offset=0))
        graph = self.graph.graph
        if graph is None or len(pool) < 2:
            return pool[: query.depth], total, set()
        ids = np.array([image_id for image_id, _, _ in pool], np.int64)
        direct = np.array([score for _, score, _ in pool], np.float64)
        order = diffusion_order(graph, ids, direct, pin_score=self.calibration().match.whole, params=params)
        ranked = [pool[i] for i in order[: query.depth]]
        direct_top = {image_id for image_id, _, _ in pool[: query.depth]}
        return ranked, total, {image_id for image_id, _, _ in ranked if image_id not in direct_top}

    def update_graph(self) -> GraphUpdate:
        """Bring the kNN graph to the images index (after a job or a removal) and save it."""
        store = self.store
        return self.graph.update(store.ids(), lambda: store.neighbours,
                                 lambda ids: self.stored_vectors_of(np.asarray(ids).tolist()))

    def _admitted(self, vector: np.ndarray, query: SearchQuery, depth: int, exclude: set[int],
                  selection: IdSelection | None) -> dict[int, tuple[float, Box | None]]:
        """Every result reaching `query.min_score` (fetching deeper from `depth` until all are
        found, or MAX_DEPTH)."""
        while True:
            best, complete = self._best(vector, depth, query.regions, exclude, admits=query.admits,
                                        selection=selection)
            if complete or depth >= MAX_DEPTH:
                return best
            depth = min(depth * 2, MAX_DEPTH)

    def _pool(self, vector: np.ndarray, query: SearchQuery, exclude: set[int],
              selection: IdSelection | None) -> list[tuple[int, float, Box | None]]:
        """A sorted listing's pool, by relevance: the `query.pool_depth` most relevant matches,
        or with min_score every match reaching it."""
        if query.min_score is None:
            return self._rank(vector, query.pool_depth, query.regions, exclude, selection=selection)
        return _ordered(self._admitted(vector, query, query.depth, exclude, selection), query.pool_depth)

    def _rank(self, query: np.ndarray, want: int, regions: bool, exclude: set[int],
              whole: bool = True, selection: IdSelection | None = None) -> list[tuple[int, float, Box | None]]:
        """(image id, score, matching region or None), best first, at most `want` of them;
        `whole=False` ranks by regions alone; `selection`: among those images only."""
        return _ordered(self._best(query, want, regions, exclude, whole, selection=selection)[0], want)

    def _best(self, query: np.ndarray, want: int, regions: bool, exclude: set[int], whole: bool = True,
              admits: Callable[[float], bool] | None = None,
              selection: IdSelection | None = None) -> tuple[dict[int, tuple[float, Box | None]], bool]:
        """Each image's best score (and region) among the hits fetched for `want` results, those
        `admits` refuses left out; and whether that is every image it admits (False: fetching
        deeper may find more). With `selection`, only its images are searched (FAISS skips
        the others: `vectorstore.search_selected`), their regions included."""
        fetch = want + len(exclude)
        best: dict[int, tuple[float, Box | None]] = {}
        complete = True
        if whole:
            hits = self.store.search(query, fetch, selection)[0]
            complete = _exhausted(hits, fetch, admits, 0.0)
            best = {hit.id: (hit.score, None) for hit in hits
                    if hit.id not in exclude and (admits is None or admits(hit.score))}
        region_store = self.regions.store if regions else None
        if region_store is not None and len(region_store):
            penalty = self.region_spec.penalty
            hidden = self._region_count(exclude)  # excluded images' own regions can fill the top places
            asked = fetch * REGION_FANOUT + hidden
            hits = region_store.search(query, asked, self.region_selection(selection))[0]
            complete = complete and _exhausted(hits, asked, admits, penalty)
            owners = self._region_owners([hit.id for hit in hits])
            for hit in hits:
                owner = owners.get(hit.id)
                if owner is None or owner[0] in exclude:
                    continue
                score = hit.score - penalty
                if admits is not None and not admits(score):
                    continue
                if score > best.get(owner[0], (-np.inf, None))[0]:
                    best[owner[0]] = (score, owner[1])
        return best, complete

    def _region_count(self, image_ids: set[int]) -> int:
        ids = list(image_ids)
        total = 0
        with self.sessions() as session:
            for start in range(0, len(ids), SQL_CHUNK):
                total += int(session.scalar(select(func.count()).select_from(RegionRecord).where(
                    RegionRecord.image_id.in_(ids[start : start + SQL_CHUNK]))))
        return total

    def _region_owners(self, region_ids: Sequence[int]) -> dict[int, tuple[int, Box]]:
        """Each region's image and box; asked in chunks (a deep page asks for tens of thousands)."""
        ids = list(region_ids)
        owners: dict[int, tuple[int, Box]] = {}
        with self.sessions() as session:
            for start in range(0, len(ids), SQL_CHUNK):
                rows = session.execute(
                    select(RegionRecord.id, RegionRecord.image_id, RegionRecord.x, RegionRecord.y, RegionRecord.w,
                           RegionRecord.h).where(RegionRecord.id.in_(ids[start : start + SQL_CHUNK]))
                ).all()
                owners.update({r.id: (r.image_id, Box(r.x, r.y, r.w, r.h)) for r in rows})
        return owners

    # -- filters, sort orders and cursors -----------------------------------------------------
    def generation(self) -> str:
        """A token that changes whenever what a search sees may have changed: either index
        (reloaded, saved or written to) or the catalog's latest job (a job that only
        backfilled metadata changes no vector). Cursors and the metadata table are bound to it.
        Inside `one_generation`, the token this thread's search started from."""
        pinned = getattr(self._pinned, "generation", None)
        return pinned if pinned is not None else self._read_generation()

    @contextmanager
    def one_generation(self) -> Iterator[str]:
        """Within it, this thread reads `generation()` once: a search's cursor, filter selection
        and metadata table all bind to the state it started from, and the catalog is asked once
        instead of once per step. Nested uses keep the outer one's."""
        held = getattr(self._pinned, "generation", None)
        if held is not None:
            yield held
            return
        self._pinned.generation = self._read_generation()
        try:
            yield self._pinned.generation
        finally:
            self._pinned.generation = None

    def _read_generation(self) -> str:
        with self.sessions() as session:
            job = session.execute(select(JobRecord.id, JobRecord.state, JobRecord.finished_at)
                                  .order_by(JobRecord.id.desc()).limit(1)).first()
        parts = (self.images.generation(), self.regions.generation(), tuple(job) if job else None)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def table(self, generation: str | None = None) -> "MetadataTable":
        """The indexed pictures' metadata as columns (`indexer.metatable`), loaded from the
        catalog once per index generation."""
        from .metatable import MetadataTable

        return self._cached("images", generation, MetadataTable.load)

    def _region_table(self, generation: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(region ids, their images' ids), loaded once per index generation."""
        def load(session):
            rows = session.execute(select(RegionRecord.id, RegionRecord.image_id)).all()
            pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
            return pairs[:, 0], pairs[:, 1]

        return self._cached("regions", generation, load)

    def _cached(self, name: str, generation: str | None, load: Callable):
        generation = generation or self.generation()
        held = self._tables.get(name)
        if held is None or held[0] != generation:
            with self.sessions() as session:
                held = (generation, load(session))
            self._tables[name] = held
        return held[1]

    def selection(self, filters: "LibraryFilter") -> IdSelection | None:
        """The ids of the indexed pictures passing `filters` (None: no filter, every picture);
        the last few are kept for the generation (the next page, or the next query with the same
        filters, reuses them)."""
        if not filters.active:
            return None
        generation = self.generation()
        in_map = filters.cluster is not None and self.collection_map() is not None
        key = (generation, filters.key(), self._map[0] if in_map else None)  # a new map: new members
        held = self._selections.get(key)
        if held is None:
            ids = self.table(generation).select(filters)
            if filters.cluster is not None:  # KeyError when the map has no such cluster
                ids = np.intersect1d(ids, self.cluster_members(filters.cluster), assume_unique=True)
            held = IdSelection.of(ids)
            self._selections = {k: v for k, v in self._selections.items() if k[0] == generation}
            while len(self._selections) >= SELECTIONS_KEPT:
                self._selections.pop(next(iter(self._selections)))
            self._selections[key] = held
        return held

    def collection_map(self) -> "CollectionMap | None":
        """The collection's map as saved (`indexer.collection_map`; None before one is made),
        read again when its file changes."""
        from .map_file import CollectionMap, map_file

        path = map_file(self.settings.index_path)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        held = self._map
        if held is None or held[0] != stamp:
            held = self._map = (stamp, CollectionMap.load(path))
        return held[1]

    def cluster_members(self, cluster: int) -> np.ndarray:
        """The ids in map cluster `cluster` (ascending); KeyError: the map has no such cluster."""
        found = self.collection_map()
        if found is None or not 0 <= cluster < len(found.clusters):
            raise KeyError(cluster)
        return np.sort(found.members(cluster))

    def region_selection(self, images: IdSelection | None) -> IdSelection | None:
        """The regions of the pictures in `images` (None: every region)."""
        if images is None:
            return None
        held = self._region_selections.get(id(images))
        if held is not None and held[0] is images:
            return held[1]
        region_ids, owners = self._region_table()
        member = np.unpackbits(images.bitmap, bitorder="little").astype(bool)
        inside = owners < len(member)
        keep = np.zeros(len(owners), dtype=bool)
        keep[inside] = member[owners[inside]]
        regions = IdSelection.of(region_ids[keep])
        while len(self._region_selections) >= SELECTIONS_KEPT:
            self._region_selections.pop(next(iter(self._region_selections)))
        self._region_selections[id(images)] = (images, regions)
        return regions

    def sorted_by(self, items: Sequence, sort: str, id_of: Callable[[object], int]) -> list:
        """`items` (best first) listed by `sort` (see `MetadataTable.order`); relevance keeps them."""
        items = list(items)
        if sort == "relevance" or not items:
            return items
        return [items[i] for i in self.table().order([id_of(item) for item in items], sort)]

    def sorted_results(self, results: Sequence[SearchResult], sort: str) -> tuple[SearchResult, ...]:
        return tuple(self.sorted_by(results, sort, lambda r: r.id))

    def resume(self, vector: np.ndarray, query: SearchQuery) -> SearchQuery:
        """`query` with its cursor turned into the offset it stands for (`indexer.cursor`); a
        cursor of another search, or of the index before it changed, raises CursorError."""
        from .cursor import CursorError, decode

        if query.cursor is None:
            return query
        position = decode(query.cursor, self._binding(vector, query))
        if position > MAX_OFFSET:
            raise CursorError(f"cursor points past the deepest page ({MAX_OFFSET} results)")
        return replace(query, offset=position, cursor=None)

    def next_cursor(self, vector: np.ndarray, query: SearchQuery, shown: int, total: int) -> str | None:
        """The cursor of the page after `query`'s (which showed `shown` of `total`), or None."""
        from .cursor import encode

        after = query.offset + shown
        if shown == 0 or after >= total or after > MAX_OFFSET:
            return None
        return encode(after, self._binding(vector, query))

    def _binding(self, vector: np.ndarray, query: SearchQuery) -> str:
        from .cursor import binding

        return binding(vector, query.fingerprint(), self.generation())

    def folders(self) -> list[tuple[str, int, int]]:
        """(folder, pictures directly in it, pictures in it and below) for each folder holding
        indexed pictures, by path."""
        return self.table().folder_counts()

    def label(self, page: SearchPage, cutoff: MatchCutoff, query_sha256: str | None,
              query_pixels: Callable[[], "Image.Image"] | None = None,
              query_size: tuple[int, int] | None = None,
              verified: "VerifyReport | None" = None) -> SearchPage:
        """`page` with each result's match label (held to the near-duplicate `cutoff`) and whether
        a copy of the query was found.

        `query_pixels` gives the query's fully decoded picture (of `query_size`); it is called
        only when a result of that size scores high enough to be worth a pixel-by-pixel
        comparison. With `verified` (verification on), a result is `near-duplicate` only when
        it verified; a pair verification cannot judge (no features stored yet, or too few
        keypoints on either side) falls back to the score cut-off.
        """
        labelled = []
        for result in page.results:
            exact = query_sha256 is not None and result.content_hash == query_sha256
            if (not exact and query_pixels is not None and result.score >= PIXEL_CHECK_SCORE
                    and query_size == (result.width, result.height)):
                exact = same_pixels(query_pixels, functools.partial(self.read_image_bytes, result.id), _full_decode)
            region = result.region is not None
            if verified is None or result.id in verified.unverifiable:
                match = cutoff.label(result.score, exact, region=region)
            else:
                match = EXACT if exact else NEAR_DUPLICATE if result.id in verified.results else SIMILAR
            evidence = verified.results.get(result.id) if verified is not None else None
            labelled.append(replace(result, match=match, verification=evidence))
        copy_found = any(r.match in COPY_LABELS for r in labelled)
        return replace(page, results=tuple(labelled), copy_found=copy_found)

    def features_of(self, ids: Sequence[int]) -> dict[int, "LocalFeatures | None"]:
        """The stored local features of images `ids` (None: not computed yet, or unreadable)."""
        from .features import decode

        found: dict[int, LocalFeatures | None] = {}
        ids = list(ids)
        with self.sessions() as session:
            for start in range(0, len(ids), SQL_CHUNK):
                rows = session.execute(select(ImageRecord.id, ImageRecord.local_features)
                                       .where(ImageRecord.id.in_(ids[start : start + SQL_CHUNK]))).all()
                for row in rows:
                    try:
                        found[row.id] = decode(row.local_features) if row.local_features is not None else None
                    except ValueError:
                        log.warning("image %s has unreadable local features; it is not verified", row.id)
                        found[row.id] = None
        return found

    # -- match calibration ----------------------------------------------------------------------
    def calibration(self) -> Calibration:
        """The index's calibration as of now, read in one go (each query reads it once): the
        near-duplicate and inlier cut-offs and the noise profile, the defaults for any part
        not calibrated yet."""
        with self.sessions() as session:
            info = session.get(IndexInfo, 1)
        if info is None:
            return Calibration()
        match = DEFAULT_CUTOFF if info.whole_cutoff is None else MatchCutoff(
            info.whole_cutoff, info.region_cutoff or DEFAULT_CUTOFF.region, info.cutoff_basis or "")
        inliers = DEFAULT_INLIER_CUTOFF if info.inlier_cutoff is None else InlierCutoff(
            info.inlier_cutoff, info.inlier_basis or "")
        noise = DEFAULT_PROFILE if info.noise_median is None else NoiseProfile(
            info.noise_median, info.noise_high, len(self.store))
        return Calibration(match, inliers, noise)

    def needs_calibration(self, growth: float = 0.1) -> bool:
        """Whether the cut-offs are missing or the index changed size by more than `growth`
        since they were calibrated (calibrating costs a search per sampled image, so small
        additions, such as single uploads, do not each pay for it)."""
        with self.sessions() as session:
            info = session.get(IndexInfo, 1)
        if info is None or info.whole_cutoff is None or not info.calibrated_images:
            return True
        return abs(len(self.store) - info.calibrated_images) > growth * info.calibrated_images

    def calibrate(self, sample: int = CALIBRATION_SAMPLE, seed: int = 0) -> MatchCutoff:
        """Choose the near-duplicate cut-off from leave-one-out searches of a seeded sample of
        indexed images (regions included) and store it with the index."""
        ids = np.sort(self.store.ids())
        if len(ids) > sample:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=sample, replace=False))
        vectors = dict(zip(ids.tolist(), self.stored_vectors_of(ids.tolist())))
        whole_tops, region_tops = [], []
        for image_id, vector in vectors.items():
            best_whole = self._rank(vector, 1, regions=False, exclude={image_id})
            best_region = self._rank(vector, 1, regions=True, exclude={image_id}, whole=False)
            if best_whole:
                whole_tops.append(best_whole[0][1])
            if best_region:
                region_tops.append(best_region[0][1])
        cutoff = calibrate_cutoff(np.array(whole_tops), np.array(region_tops))
        calibrated = cutoff is not DEFAULT_CUTOFF
        inliers = self._calibrate_inliers(vectors, seed)
        with self.sessions.begin() as session:
            info = session.get(IndexInfo, 1)
            if info is not None:
                levels = session.scalars(select(ImageRecord.noise_level).where(
                    ImageRecord.status == ImageStatus.INDEXED, ImageRecord.noise_level.is_not(None))).all()
                profile = NoiseProfile.of(levels)
                info.noise_median = profile.median if profile.pictures else None
                info.noise_high = profile.high if profile.pictures else None
                info.whole_cutoff = cutoff.whole if calibrated else None
                info.region_cutoff = cutoff.region if calibrated else None
                info.cutoff_basis = cutoff.basis if calibrated else None
                info.calibrated_images = len(self.store) if calibrated else None
                calibrated_inliers = inliers is not DEFAULT_INLIER_CUTOFF
                info.inlier_cutoff = inliers.inliers if calibrated_inliers else None
                info.inlier_basis = inliers.basis if calibrated_inliers else None
        return cutoff

    def _calibrate_inliers(self, vectors: dict[int, np.ndarray], seed: int) -> InlierCutoff:
        """The inlier cut-off from a sample of the pictures in `vectors`, each verified (its
        stored features as the query) against its nearest other pictures."""
        from .verify import verify_pair

        ids = sorted(vectors)
        if len(ids) > INLIER_CALIBRATION_SAMPLE:
            ids = sorted(np.random.default_rng(seed).choice(ids, size=INLIER_CALIBRATION_SAMPLE, replace=False).tolist())
        tops = []
        for image_id in ids:
            neighbours = [i for i, _, _ in self._rank(vectors[image_id], INLIER_CALIBRATION_NEIGHBOURS,
                                                       regions=True, exclude={image_id})]
            stored = self.features_of([image_id, *neighbours])
            query = stored.get(image_id)
            if query is None or not neighbours:
                continue
            best = 0
            for other in neighbours:
                if stored.get(other) is not None:
                    found = verify_pair(query, stored[other])
                    best = max(best, found.inliers if found else 0)
            tops.append(best)
        return inlier_cutoff(np.array(tops))

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            by_status = dict(
                session.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all()
            )
            missing = session.scalar(select(func.count()).where(ImageRecord.missing_since.is_not(None)))
        counts = {status.value: int(by_status.get(status.value, 0)) for status in ImageStatus}
        counts["missing"] = int(missing or 0)
        return counts

    def recent_failures(self, limit: int = 5) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.execute(
                select(ImageRecord.path, ImageRecord.error)
                .where(ImageRecord.status == ImageStatus.FAILED)
                .order_by(ImageRecord.id.desc())
                .limit(limit)
            ).all()
        return [(r.path, r.error or "") for r in rows]

    def last_job(self) -> JobRecord | None:
        with self.sessions() as session:
            return session.scalars(select(JobRecord).order_by(JobRecord.id.desc()).limit(1)).first()

    def image(self, id_: int) -> ImageRecord | None:
        with self.sessions() as session:
            return session.get(ImageRecord, id_)

    def indexed_paths(self) -> list[str]:
        """The files of every indexed picture whose file is still there, by id."""
        return [path for _, path in self.indexed_pictures()]

    def indexed_pictures(self) -> list[tuple[int, str]]:
        """(id, path) of every indexed picture whose file is still there, by id."""
        with self.sessions() as session:
            return [(row.id, row.path) for row in session.execute(
                select(ImageRecord.id, ImageRecord.path)
                .where(ImageRecord.status == ImageStatus.INDEXED, ImageRecord.missing_since.is_(None))
                .order_by(ImageRecord.id)
            )]

    def stored_vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored whole-picture vectors of `ids`, in that order."""
        found: dict[int, np.ndarray] = {}
        for chunk_ids, chunk_vectors in self.images.stored_vectors(list(ids)):
            found.update(zip(chunk_ids.tolist(), chunk_vectors))
        return np.stack([found[i] for i in ids]) if ids else np.zeros((0, self._dim() or 0), np.float32)

    def near_pairs(self, min_score: float, max_neighbours: int, nprobe: int | None = None,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of indexed pictures whose whole-picture vectors score at least `min_score`,
        each picture keeping its `max_neighbours` best: a range search capped at that many
        neighbours (FAISS k-nearest-neighbour search of each stored vector against the images
        index, cut at `min_score`), so that a dense region of the collection cannot make it
        quadratic. Returns (first ids, second ids, scores), first < second, each pair once.
        `nprobe` overrides an inverted file's probes for this search."""
        store = self.store
        firsts, seconds, scores = [], [], []
        for ids, vectors in self.images.stored_vectors():
            for at in range(0, len(ids), chunk):
                part = ids[at : at + chunk]
                found_scores, found_ids = store.neighbours(vectors[at : at + chunk], max_neighbours + 1, nprobe)
                keep = (found_ids >= 0) & (found_ids != part[:, None]) & (found_scores >= min_score)
                rows = np.broadcast_to(part[:, None], found_ids.shape)[keep]
                firsts.append(np.minimum(rows, found_ids[keep]))
                seconds.append(np.maximum(rows, found_ids[keep]))
                scores.append(found_scores[keep])
        if not firsts:
            empty = np.zeros(0, np.int64)
            return empty, empty.copy(), np.zeros(0, np.float32)
        a, b, s = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores).astype(np.float32)
        order = np.lexsort((-s, b, a))
        a, b, s = a[order], b[order], s[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return a[first], b[first], s[first]

    # -- the catalogued files ---------------------------------------------------------------------
    def roots_of(self, image_ids: Sequence[int]) -> dict[int, list[str]]:
        """Each image's indexed roots: the roots of the job that catalogued it ([] if unknown)."""
        found: dict[int, list[str]] = {}
        jobs: dict[int, list[str]] = {}
        with self.sessions() as session:
            for start in range(0, len(image_ids), SQL_CHUNK):
                chunk = list(image_ids[start : start + SQL_CHUNK])
                rows = session.execute(
                    select(ImageRecord.id, ImageRecord.job_id, JobRecord.roots)
                    .join(JobRecord, JobRecord.id == ImageRecord.job_id, isouter=True)
                    .where(ImageRecord.id.in_(chunk))
                ).all()
                for row in rows:
                    if row.job_id is not None and row.job_id not in jobs:
                        jobs[row.job_id] = _json_list(row.roots)
                    found[row.id] = jobs.get(row.job_id, [])
        return found

    def open_image(self, record: ImageRecord) -> BinaryIO:
        """The catalogued file of `record`, opened only if it is still the file that was indexed
        (`indexer.safeopen`); a file that changed gets its row flagged missing, so the next job
        re-reads it and `loupe remove --missing` can drop it."""
        from .safeopen import open_catalogued

        job_roots = self.roots_of([record.id]).get(record.id, [])
        roots = [Path(r) for r in job_roots] + list(self.settings.allowed_roots) if job_roots else []
        try:
            return open_catalogued(record.path, record.size_bytes, record.mtime_ns, roots)
        except FileChangedError:
            self.flag_missing(record.id)
            raise

    def read_image_bytes(self, image_id: int, limits: DecodeLimits = DecodeLimits()) -> bytes:
        """The bytes of an image's catalogued file (see `open_image`)."""
        from .images import read_open_file

        record = self.image(image_id)
        if record is None:
            raise NotIndexedError(f"no image with id {image_id}")
        with self.open_image(record) as fh:
            return read_open_file(fh, limits).data

    def flag_missing(self, image_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(update(ImageRecord).where(ImageRecord.id == image_id, ImageRecord.missing_since.is_(None))
                            .values(missing_since=utcnow()))

    def image_by_path(self, path: str) -> ImageRecord | None:
        with self.sessions() as session:
            return session.scalars(select(ImageRecord).where(ImageRecord.path == path)).first()

    @staticmethod
    def record(session: Session, id_: int) -> ImageRecord:
        record = session.get(ImageRecord, id_)
        if record is None:
            raise NotIndexedError(f"no image with id {id_}")
        return record

    def vector_of(self, id_: int) -> np.ndarray:
        """The stored vector of an image (a duplicate's is its original's)."""
        with self.sessions() as session:
            record = self.record(session, id_)
            if record.status == ImageStatus.DUPLICATE and record.duplicate_of is not None:
                record = self.record(session, record.duplicate_of)
            if record.embedding is None:
                raise NotIndexedError(f"image {id_} has no vector ({record.status}: {record.error or 'not embedded'})")
            return record.vector()


def _ordered(best: dict[int, tuple[float, Box | None]], want: int) -> list[tuple[int, float, Box | None]]:
    """The best `want` of `best`, by score then id."""
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:want]
    return [(image_id, score, box) for image_id, (score, box) in ranked]


def _exhausted(hits: Sequence, asked: int, admits: Callable[[float], bool] | None, penalty: float) -> bool:
    """Whether `hits` (best first, `asked` for) hold every hit `admits` would take: the index ran
    out, or the last one (lowered by `penalty`) is already refused."""
    if len(hits) < asked:
        return True
    return admits is not None and bool(hits) and not admits(hits[-1].score - penalty)


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _full_decode(data: bytes) -> "Image.Image":
    return decode_image(data, DecodeLimits()).image
