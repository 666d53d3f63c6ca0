"""The per-application search service: catalog, index and model, loaded lazily once and
shared by all request threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from flask import Flask, current_app

from indexer.catalog import ImageRecord, ImageStatus, JobRecord
from indexer.embedder import configured_model, resolve_device
from indexer.errors import NotIndexedError
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

    # -- lazily loaded parts -----------------------------------------------------------------
    @property
    def library(self) -> Library:
        if self._library is None:
            with self._init_lock:
                if self._library is None:
                    self._library = open_library(self.settings)
        return self._library

    @property
    def embedder(self) -> "ConfinedEmbedder":
        if self._embedder is None:
            with self._init_lock:
                if self._embedder is None:
                    loaded = self.model_thread.call(load_embedder, self.settings, deadline=None)
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
        library.bind_model(self.embedder.identity)
        if not self.write_lock.locked():
            with self._init_lock:
                library.refresh()
        return library

    # -- queries -------------------------------------------------------------------------------
    def search_text(self, text: str, query: SearchQuery) -> SearchPage:
        """`query`'s page of the pictures nearest to `text` (whole pictures: regions are for image queries)."""
        library = self.searchable_library()
        t0 = time.perf_counter()
        vector = self.embedder.encode_texts([text])
        return library.search(vector, replace(query, regions=False, verify=None), started=t0)

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
        return restored_lookup(library, self.embedder, data, query, mode=restore,
                               restorers=self.restorers if restore != "off" else None, limits=self.upload_limits)

    def search_image_id(self, image_id: int, query: SearchQuery) -> SearchPage:
        """More like an indexed image (its stored vector), the image itself left out; verified
        (`query.verify`) with its stored local features."""
        from indexer.lookup import rank_verified, verify_stored

        library = self.searchable_library()
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
        from indexer.uploads import discard_upload
        from indexer.writer import apply_delta, retire_all

        with self.indexing_jobs.writer():
            library = self.library
            with library.writer():
                library.sync_store()
                with library.sessions.begin() as session:
                    record = library.record(session, image_id)
                    path = record.path
                    delta = retire_all(session, [record])
                apply_delta(library, delta)
                library.save_index()
            remove_thumbnail(self.settings.home, image_id)
            discard_upload(self.settings.home, path)

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

    def thumbnail(self, image_id: int, read) -> Path:
        """The cached thumbnail of an image, made from the bytes `read()` gives if needed."""
        return ensure_thumbnail(self.settings.home, image_id, read)

    def indexed_roots(self, image_ids: list[int]) -> dict[int, list[str]]:
        """Each image's indexed roots (the folders its job indexed)."""
        return self.library.roots_of(image_ids)

    def indexing_job(self, job_id: int) -> IndexingJobReport | None:
        with self.library.sessions() as session:
            job = session.get(JobRecord, job_id)
        return None if job is None else IndexingJobReport.of(job)

    def health(self) -> dict:
        library = self.library
        identity = library.stored_identity()
        index = library.store.describe() if identity is not None else {"type": None, "vectors": 0}
        index["faiss"] = faiss_build()
        model = identity.as_dict() if identity else configured_model(self.settings.model, self.settings.pretrained)
        return {
            "status": "ok",
            "images": library.counts()["indexed"],
            "model": model,
            "index": index,
            "device": resolve_device(self.settings.device),
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

    @classmethod
    def of(cls, record: ImageRecord) -> "ServedFile":
        return cls(record.id, record.status, record.format, record.size_bytes, record.mtime_ns, record.path)


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
