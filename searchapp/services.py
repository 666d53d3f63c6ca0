"""The per-application search service: catalog, index and model, loaded lazily once and
shared by all request threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from flask import Flask, current_app

from indexer.catalog import ImageRecord, ImageStatus, JobRecord
from indexer.embedder import configured_model, resolve_device
from indexer.errors import ImageReadError, NotIndexedError
from indexer.factory import load_embedder, open_library
from indexer.images import DecodeLimits, IMAGE_SUFFIXES, content_hash, decode_image, set_decode_slots
from indexer.job_report import IndexingJobReport
from indexer.library import Library, SearchPage
from indexer.query import SearchQuery
from indexer.roots import allowed_job_paths
from indexer.thumbnails import ensure_thumbnail, remove_thumbnail
from indexer.vectorstore import faiss_build

from .capacity import Busy
from .indexing_jobs import IndexingJobs
from .settings import ServiceSettings

if TYPE_CHECKING:
    from .urls import Urls

EXTENSION = "loupe"
DECODE_WAIT_SECONDS = 30.0  # how long an upload waits for a decode slot before 503 busy
DUPLICATES_WAIT_SECONDS = 30.0  # how long a request waits for another computing the duplicates


class ModelThread:
    """One thread for every torch call of the service (loading, encoding), with a bounded queue.

    torch's intra-op OpenMP pool belongs to the thread that calls it: when request threads
    took turns with the model, their idle pools spun beside the active one and each encode
    ran about 40% slower on 2 cores (measured: 57 ms against 41 ms for a text query).

    At most `max_pending` calls wait or run at once (beyond that a call is refused at once),
    and a call that has not started within `deadline` seconds is dropped: the client gets
    503 `busy` rather than an ever-growing wait, and the thread never works for a client that
    has gone. A call already running is waited for (torch cannot be interrupted).
    """

    def __init__(self, max_pending: int = 32, deadline: float | None = 30.0):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-model")
        self.max_pending = max_pending
        self.deadline = deadline
        self._pending = 0
        self._lock = threading.Lock()

    def call(self, fn, *args, deadline=...):
        """`fn(*args)` on the model thread; `deadline` (seconds; None: wait as long as it takes)
        defaults to the thread's."""
        wait = self.deadline if deadline is ... else deadline
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy(f"the model is busy ({self._pending} requests waiting); try again shortly",
                           retry_after=self._retry_after())
            self._pending += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            if future.cancel():  # never started: dropped from the queue
                raise Busy(f"the model did not get to this request within {wait:g} s; try again shortly",
                           retry_after=self._retry_after()) from None
            return future.result()  # running: it finishes

    @property
    def pending(self) -> int:
        """Model calls waiting or running now (the queue depth `/metrics` reports)."""
        with self._lock:
            return self._pending

    def _done(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    def _retry_after(self) -> int:
        return max(1, min(30, self._pending))


class ConfinedEmbedder:
    """A ClipEmbedder whose model calls all run on the ModelThread (`prepare` is Pillow only,
    so it runs on the caller's thread)."""

    def __init__(self, embedder, thread: ModelThread, deadline=...):
        self._embedder = embedder
        self._thread = thread
        self._deadline = deadline  # `...`: the thread's own
        self.identity = embedder.identity
        self.device = embedder.device
        self.image_size = embedder.image_size
        self.dim = embedder.dim
        self.prepare = embedder.prepare

    def without_deadline(self) -> "ConfinedEmbedder":
        """The same model for bulk jobs: their calls wait their turn however long it takes."""
        return ConfinedEmbedder(self._embedder, self._thread, deadline=None)

    def encode_batch(self, pixels):
        return self._thread.call(self._embedder.encode_batch, pixels, deadline=self._deadline)

    def encode_images(self, images):
        return self.encode_batch([self.prepare(img) for img in images])

    def encode_texts(self, texts):
        return self._thread.call(self._embedder.encode_texts, texts, deadline=self._deadline)


class SearchService:
    """Everything a request needs, created on first use (never at import or app creation)."""

    def __init__(self, settings: ServiceSettings, upload_limits: DecodeLimits, model_thread: ModelThread | None = None,
                 generation_limits=None, *, urls: "Urls"):
        self.service_settings = settings
        self.settings = settings.core  # what the library and the model read
        self.urls = urls  # the app's URLs without a request: background work (generation) has none
        self.upload_limits = upload_limits
        self._init_lock = threading.Lock()
        self.model_thread = model_thread or ModelThread()
        self.generation_limits = generation_limits  # generation.jobs.GenerationLimits; None: the defaults
        self.write_lock = threading.Lock()  # one writer (add, remove, job) in this process
        self._library: Library | None = None
        self._embedder = None
        self.indexing_jobs = IndexingJobs(self)
        self._generations = None
        self._restorers = None
        self._duplicates_lock = threading.Lock()  # one computation of the duplicates groups at a time
        self._model_error: str | None = None  # why the last model load failed (readiness)
        # Called with (search kind, {step: milliseconds}) after each search (`searchapp.metrics`).
        self.observe_steps: Callable[[str, dict[str, float]], None] | None = None
        # Each indexing job this server ran, as it ends: its summary, None when it failed (metrics)
        self.observe_job: Callable[[object], None] | None = None

    # -- lazily loaded parts -----------------------------------------------------------------
    @property
    def library(self) -> Library:
        if self._library is None:
            with self._init_lock:
                if self._library is None:
                    self._library = open_library(self.settings)
        return self._library

    @property
    def loaded_parts(self) -> tuple[Library | None, object | None]:
        """(library, generation jobs) as far as something loaded them already: `/metrics` reads
        them without loading anything."""
        return self._library, self._generations

    @property
    def embedder(self) -> "ConfinedEmbedder":
        if self._embedder is None:
            with self._init_lock:
                if self._embedder is None:
                    try:
                        loaded = self.model_thread.call(load_embedder, self.settings, deadline=None)
                    except Exception as err:
                        self._model_error = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                        raise
                    self._model_error = None
                    self._embedder = ConfinedEmbedder(loaded, self.model_thread)
        return self._embedder

    @property
    def job_embedder(self) -> "ConfinedEmbedder":
        """The embedder for bulk jobs and uploads being indexed: no deadline on its calls."""
        return self.embedder.without_deadline()

    @property
    def generations(self):
        """The generation jobs (made on first use; the generator loads with the first job)."""
        if self._generations is None:
            with self._init_lock:
                if self._generations is None:
                    from .generation.backends import load_generator
                    from .generation.jobs import GenerationJobs
                    from .generation.store import GeneratedStore

                    own = self.service_settings
                    store = GeneratedStore(self.settings.home, own.generated_ttl_hours * 3600,
                                           quota_bytes=int(own.generated_quota_mb * 2**20))
                    device = resolve_device(self.settings.device)
                    self._generations = GenerationJobs(
                        store,
                        lambda: load_generator(own.generate_model, self.settings.home, device),
                        self.nearest_indexed,
                        limits=self.generation_limits,
                        picture_url=self.urls.generated,
                    )
        return self._generations

    @property
    def restorers(self):
        """The query-restoration models (each loaded by the first query that needs it)."""
        if self._restorers is None:
            with self._init_lock:
                if self._restorers is None:
                    from .restoration.pipeline import Restorers

                    self._restorers = Restorers(self.service_settings.restore, self.settings.home,
                                                resolve_device(self.settings.device), run=self.model_thread.call)
        return self._restorers

    def generator_configured(self) -> bool:
        from .generation.backends import generator_configured

        return generator_configured(self.service_settings.generate_model, self.settings.home)

    def nearest_indexed(self, images, k: int = 6) -> list[list[dict]]:
        """Each picture's `k` nearest indexed pictures (whole-picture search), as result JSON."""
        library = self.searchable_library()
        vectors = self.job_embedder.encode_images(images)  # background work: no request deadline
        return [self.urls.page_json(library.search(vector, SearchQuery(k=k)))["results"] for vector in vectors]

    def searchable_library(self) -> Library:
        """The library, bound to the model, with the newest index another process saved."""
        library = self.library
        if library.stored_identity() is None:
            raise NotIndexedError("nothing is indexed yet: run `loupe index PATH` or POST /api/jobs")
        if not self.write_lock.locked():
            with self._init_lock:
                library.refresh()  # notices a model changed by `loupe reembed`: bind_model then refuses
        library.bind_model(self.embedder.identity)
        return library

    # -- queries -------------------------------------------------------------------------------
    def search_text(self, text: str, query: SearchQuery) -> SearchPage:
        """`query`'s page of the pictures nearest to `text` (whole pictures: regions are for image queries)."""
        library = self.searchable_library()
        t0 = time.perf_counter()
        vector = self.embedder.encode_texts([text])
        t1 = time.perf_counter()
        page = library.search(vector, replace(query, regions=False, verify=None), started=t0)
        self._observe("text", {"embed": (t1 - t0) * 1000, "knn+join": (time.perf_counter() - t1) * 1000})
        return page

    def _observe(self, kind: str, steps: dict[str, float]) -> None:
        """Report a search's step times to `observe_steps` (metrics), if anything listens."""
        if self.observe_steps is not None:
            self.observe_steps(kind, steps)

    def search_terms(self, terms, query: SearchQuery, image: bytes | int | None = None) -> SearchPage:
        """`query`'s page for combined query `terms` (`indexer.combine.TermQuery`), alone or with
        a picture: uploaded bytes, or an indexed image's id (its stored vector; the image itself
        left out). Every model call (the picture, then all the terms in one batch) runs on the
        model thread; whole pictures, no restoration, no verification (`combine.combined_search`)."""
        from indexer.combine import combined_search, picture_vector

        library = self.searchable_library()
        t0 = time.perf_counter()
        vector = None
        if isinstance(image, bytes):
            vector = picture_vector(library, self.embedder, image, self.upload_limits)
        elif image is not None:
            vector = library.vector_of(image)
            query = replace(query, exclude=(*query.exclude, image))
        return combined_search(library, self.embedder, terms, query, vector, started=t0)

    def verify_options(self, verify: bool | None = None):
        """The verification settings of an image search (None: verification off); `verify`
        None follows LOUPE_VERIFY."""
        from indexer.verify import VerifyOptions

        wanted = self.settings.verify if verify is None else verify
        return VerifyOptions(candidates=self.settings.verify_candidates) if wanted else None

    def search_upload(self, data: bytes, query: SearchQuery, restore: str = "auto"):
        """Reverse lookup of an uploaded picture with query restoration `restore`
        (see `searchapp.restoration.pipeline`) and `query.verify`'s geometric verification:
        (page, RestorationReport)."""
        from .restoration.pipeline import restored_lookup

        library = self.searchable_library()
        steps: dict[str, float] = {}
        found = restored_lookup(library, self.embedder, data, query, mode=restore,
                                restorers=self.restorers if restore != "off" else None, limits=self.upload_limits,
                                timings=steps)
        self._observe("image", steps)
        return found

    def search_image_id(self, image_id: int, query: SearchQuery) -> SearchPage:
        """More like an indexed image (its stored vector), the image itself left out; verified
        (`query.verify`) with its stored local features."""
        library = self.searchable_library()
        with library.one_generation():  # the cursor read and the one written bind to one state
            return self._more_like(library, image_id, query)

    def _more_like(self, library: Library, image_id: int, query: SearchQuery) -> SearchPage:
        from indexer.lookup import rank_verified, verify_stored

        t0 = time.perf_counter()
        calibration = library.calibration()
        vector = library.vector_of(image_id)
        record = library.image(image_id)
        options = query.verify
        query = library.resume(vector, replace(query, exclude=(*query.exclude, image_id)))
        page = library.search(vector, query.candidates(), started=t0)
        report, summary = None, {"mode": "off"}
        features = library.features_of([record.duplicate_of or image_id]).get(record.duplicate_of or image_id)
        if options is not None and features is not None:
            report = verify_stored(library, features, page.results, options, calibration.inliers.inliers)
            page = replace(page, results=rank_verified(page.results, report, record.content_hash))
            summary = report.as_dict(calibration.inliers.inliers, options.candidates)
        elif options is not None:
            summary = {"mode": "on", "note": "this picture has no local features yet (run loupe index)"}
        total = query.listed(page.total)
        page = replace(page, results=query.cut(library.sorted_results(page.results, query.sort)), total=total)
        page = replace(page, next=library.next_cursor(vector, query, len(page.results), total))
        page = library.label(page, calibration.match, record.content_hash,
                             lambda: decode_image(library.read_image_bytes(image_id)).image,
                             (record.width, record.height), verified=report)
        return replace(page, took_ms=(time.perf_counter() - t0) * 1000, verify=summary)

    def folders(self) -> list[tuple[str, int, int]]:
        """(folder, pictures directly in it, pictures in it and below) for each folder holding
        indexed pictures (no model needed)."""
        library = self.library
        if library.stored_identity() is None:
            return []
        if not self.write_lock.locked():
            with self._init_lock:
                library.refresh()
        return library.folders()

    # -- writes ----------------------------------------------------------------------------------
    def add_upload(self, data: bytes, filename: str) -> int:
        """Store an uploaded picture under LOUPE_HOME/uploads and index it; returns its id.

        The picture is decoded first (a bad one never reaches the disk), then written and
        indexed under the writer lock, so a concurrent delete of the same picture cannot
        remove the file between the two."""
        from indexer.uploads import store_upload

        decoded = decode_image(data, self.upload_limits)
        suffix = Path(filename or "").suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            suffix = "." + decoded.format.lower().replace("jpeg", "jpg")
        with self.indexing_jobs.writer():
            path = store_upload(self.settings.home, data, suffix)
            self.indexing_jobs.index_locked([path])
        self.indexing_jobs.calibration.request()
        record = self.library.image_by_path(str(path))
        return record.duplicate_of or record.id

    def remove_image(self, image_id: int) -> None:
        """Remove an image from the catalog and index; an upload's own file goes too."""
        from indexer.previews import remove_previews
        from indexer.uploads import discard_upload
        from indexer.writer import apply_delta, retire_all

        with self.indexing_jobs.writer():
            library = self.library
            with library.writer():
                library.sync_store()
                with library.sessions.begin() as session:
                    record = library.record(session, image_id)
                    path, sha = record.path, record.content_hash
                    delta = retire_all(session, [record])
                apply_delta(library, delta)
                library.save_index()
                self._follow_index(library)
            remove_thumbnail(self.settings.home, sha)
            remove_previews(self.settings.home, image_id)
            discard_upload(self.settings.home, path)

    def collection_map(self, cluster: int | None, limit: int) -> dict:
        """The map of the collection (`indexer.collection_map.map_body`); KeyError: no such cluster."""
        from indexer.collection_map import map_body

        library = self.library
        return map_body(library.collection_map(), library.store.ids(), cluster, limit)

    def _follow_index(self, library: Library) -> None:
        """The kNN graph and the map after a removal (`indexer.collection_map`)."""
        from indexer.collection_map import follow_index

        follow_index(library, self._embedder)

    def start_indexing(self, paths: list[str]) -> int:
        """Start a bulk indexing job over `paths` (absolute, inside LOUPE_ALLOWED_ROOTS when set);
        returns its id once it is recorded."""
        return self.indexing_jobs.start(allowed_job_paths(paths, self.settings.allowed_roots))

    # -- generation sources ----------------------------------------------------------------------
    def upload_source(self, data: bytes, side: int):
        """An uploaded picture as a generation source: (picture, source JSON)."""
        image = decode_image(data, self.upload_limits, draft_size=side).image  # JPEGs decode straight to about `side`
        return image, {"upload_sha256": content_hash(data)}

    def indexed_source(self, image_id: int):
        """An indexed picture as a generation source: (picture, source JSON), or None when there
        is no readable image with that id."""
        record = self.library.image(image_id)
        if record is None or record.status == ImageStatus.FAILED:
            return None
        return decode_image(self.library.read_image_bytes(record.id)).image, {"image_id": record.id}

    def generated_picture(self, job_id: str, name: str) -> Path | None:
        """A generated picture's file, while its job has not expired."""
        return self.generations.store.image_path(job_id, name)

    # -- facts -----------------------------------------------------------------------------------
    def image_facts(self, image_id: int) -> dict | None:
        """An image's catalog facts as JSON (None: no such image)."""
        record = self.library.image(image_id)
        return None if record is None else catalog_facts(record)

    def served_file(self, image_id: int) -> "ServedFile | None":
        """What the file routes need of a catalogued image (None: no such image)."""
        record = self.library.image(image_id)
        return None if record is None else ServedFile.of(record)

    def open_file(self, served: "ServedFile") -> BinaryIO:
        """The image's file, if it is still the one that was indexed (`Library.open_image`)."""
        return self.library.open_image(served)

    def thumbnail(self, served: "ServedFile", read) -> Path:
        """The cached thumbnail of an image (keyed by its content), made from the bytes `read()`
        gives if needed."""
        if served.content_hash is None:
            raise ImageReadError(f"image {served.id} has no content hash")
        return ensure_thumbnail(self.settings.home, served.content_hash, read)

    def preview(self, served: "ServedFile", read) -> Path:
        """The cached bounded-size preview of an image (`indexer.previews`), made from `read()` if needed."""
        from indexer.previews import ensure_preview

        return ensure_preview(self.settings.home, served.id, served.content_hash or "unhashed", read)

    def indexed_roots(self, image_ids: list[int]) -> dict[int, list[str]]:
        """Each image's indexed roots (the folders its job indexed)."""
        return self.library.roots_of(image_ids)

    def indexing_job(self, job_id: int) -> IndexingJobReport | None:
        with self.library.sessions() as session:
            job = session.get(JobRecord, job_id)
        return None if job is None else IndexingJobReport.of(job)

    # -- the duplicates review (indexer.review) -----------------------------------------------------
    def _review(self):
        from indexer.duplicates import DuplicateOptions
        from indexer.review import DuplicatesReview

        return DuplicatesReview(self.library, DuplicateOptions(verify=self.settings.verify))

    def duplicate_groups(self, kind: str | None, offset: int, limit: int, dismissed: bool):
        """A page of the library's duplicate and burst groups (`indexer.review.GroupPage`),
        computed on the first call after the catalog changed (one computation at a time: a
        request that waits past DUPLICATES_WAIT_SECONDS gets 503 busy)."""
        from indexer.review import GroupPage

        library = self.library
        if library.stored_identity() is None:
            return GroupPage((), 0, None, {})
        if not self.write_lock.locked():
            with self._init_lock:
                library.refresh()
        if not self._duplicates_lock.acquire(timeout=DUPLICATES_WAIT_SECONDS):
            raise Busy("the duplicates are being computed; try again shortly", retry_after=10)
        try:
            return self._review().page(kind, offset, limit, dismissed)
        finally:
            self._duplicates_lock.release()

    def duplicates_action(self, action: str, group_id: str | None = None, keep: int | None = None,
                          entry_id: int | None = None) -> dict:
        """quarantine, restore (a group's or one entry's), dismiss or undismiss, under the
        writer locks; the JSON answer."""
        with self.indexing_jobs.writer():
            library = self.library
            with library.writer(), self._duplicates_lock:
                library.sync_store()
                review = self._review()
                if action == "quarantine":
                    group, entries = review.quarantine(group_id, keep)  # thumbnails are keyed by content: none goes stale
                    return {"group": group.id, "kept": keep or group.keep,
                            "quarantined": [e.as_dict() for e in entries]}
                if action == "restore":
                    restored = review.restore(entry_ids=[entry_id] if entry_id is not None else None,
                                              group_id=group_id)
                    return {"restored": [{**r.entry.as_dict(), "image_id": r.image_id} for r in restored]}
                if action == "dismiss":
                    return {"group": review.dismiss(group_id).id, "dismissed": True}
                review.undismiss(group_id)
                return {"group": group_id, "dismissed": False}

    def quarantined(self) -> list[dict]:
        """What is in the quarantine, newest first."""
        return [e.as_dict() for e in self._review().quarantined()]

    def health(self, detailed: bool = True) -> dict:
        """The service's state and its readiness (`searchapp.readiness`): `status` is `ok` when
        the database, index, model and disk checks all pass, else `degraded`; `images` is null
        when the catalog cannot be read; `detailed`: each check's `detail` (paths, errors) too.
        Cheap: nothing is loaded but the catalog and the index."""
        from .readiness import Readiness, check_database, check_disk, check_index, check_model

        database, library = check_database(lambda: self.library)
        counts = identity = None
        if library is not None:
            try:
                counts = library.counts()
                identity = library.stored_identity()
            except Exception as err:  # the catalog went away between the two queries
                failure = err
                database, library = check_database(lambda: _raise(failure))
        index_check = check_index(library, counts)
        usable = identity is not None and (index_check.ok or library.images.loaded)  # a missing file is not rebuilt here
        index = library.store.describe() if usable else {"type": None, "vectors": 0}
        index["faiss"] = faiss_build()
        model = identity.as_dict() if identity else configured_model(self.settings.model, self.settings.pretrained)
        readiness = Readiness({
            "database": database,
            "index": index_check,
            "model": check_model(self.settings, self._embedder is not None, self._model_error),
            "disk": check_disk(self.settings.home, int(self.service_settings.min_free_mb * 2**20)),
        })
        return {
            "status": readiness.status,
            "images": None if counts is None else counts["indexed"],
            "model": model,
            "index": index,
            "device": resolve_device(self.settings.device),
            "checks": readiness.as_dict(detailed),
        }


@dataclass(frozen=True)
class ServedFile:
    """A catalogued image's file as the file routes serve it."""

    id: int
    status: str
    format: str | None
    size_bytes: int
    mtime_ns: int
    path: str = field(repr=False)
    content_hash: str | None = None  # keys its thumbnail (`indexer.thumbnails`)

    @classmethod
    def of(cls, record: ImageRecord) -> "ServedFile":
        return cls(record.id, record.status, record.format, record.size_bytes, record.mtime_ns, record.path,
                   record.content_hash)


def catalog_facts(record: ImageRecord) -> dict:
    """An image's catalog row as JSON (the web service adds its URLs)."""
    return {
        "id": record.id,
        "path": record.path,
        "status": record.status,
        "width": record.width,
        "height": record.height,
        "format": record.format,
        "size_bytes": record.size_bytes,
        "content_hash": record.content_hash,
        "duplicate_of": record.duplicate_of,
        "error": record.error,
        "missing": record.missing_since is not None,
        "indexed_at": record.indexed_at.isoformat() if record.indexed_at else None,
        **metadata_facts(record),
    }


def metadata_facts(record: ImageRecord) -> dict:
    """What the library knows of a picture besides its pixels (indexer.metadata): `taken_at`
    (ISO 8601, in the picture's own UTC offset when EXIF gave one, else in UTC), where it came
    from (`taken_source`: "exif" or "file"; null until read), the offset in minutes or null,
    the camera or null, EXIF orientation, whether it records a position, its folder, and `gps`
    only when the coordinates are stored (LOUPE_KEEP_GPS)."""
    from datetime import timedelta, timezone

    from indexer.metadata import as_utc

    taken = as_utc(record.taken_at)
    if taken is not None and record.taken_offset_min is not None:
        taken = taken.astimezone(timezone(timedelta(minutes=record.taken_offset_min)))
    camera = None
    if record.camera_make or record.camera_model:
        camera = {"make": record.camera_make, "model": record.camera_model}
    facts = {
        "taken_at": taken.isoformat() if taken is not None else None,
        "taken_source": record.taken_source,
        "taken_offset_min": record.taken_offset_min,
        "camera": camera,
        "orientation": record.orientation,
        "has_gps": record.has_gps,
        "folder": record.folder,
    }
    if record.gps_lat is not None and record.gps_lon is not None:
        facts["gps"] = {"lat": record.gps_lat, "lon": record.gps_lon}
    return facts


def _raise(err: Exception):
    raise err


def init_app(app: Flask, urls: "Urls") -> None:
    """Give `app` its service (built on first use); `urls` builds the app's URLs without a request."""
    from .generation.jobs import GenerationLimits

    settings = app.config.get("LOUPE_SETTINGS") or ServiceSettings.from_env()
    limits = DecodeLimits(max_file_bytes=app.config["MAX_CONTENT_LENGTH"], max_pixels=app.config["MAX_UPLOAD_PIXELS"],
                          max_decode_bytes=app.config["MAX_UPLOAD_DECODE_BYTES"], wait_seconds=DECODE_WAIT_SECONDS)
    set_decode_slots(app.config["MAX_CONCURRENT_DECODES"])
    model_thread = ModelThread(max_pending=app.config["MODEL_QUEUE_LIMIT"], deadline=app.config["MODEL_DEADLINE_SECONDS"])
    generation = GenerationLimits(max_pending=app.config["GENERATE_QUEUE_LIMIT"],
                                  source_side=app.config["GENERATE_SOURCE_SIDE"])
    app.extensions[EXTENSION] = SearchService(settings, limits, model_thread, generation, urls=urls)


def service() -> SearchService:
    return current_app.extensions[EXTENSION]
