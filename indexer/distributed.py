"""Bulk indexing on a Ray cluster (`loupe index --ray`).

The local job's stages, spread out with Ray Data:

    read (decode tasks, any CPU) ▸ embed (an actor pool holding the model: one actor per GPU,
    or per group of CPUs) ▸ write (the driver)

`RayIngest` plugs these stages into an `IndexJob`, which plans, writes and times as for a local
run. Results stream back to the driver in file order. Every `part_size` files, the driver
writes them to a part file under `LOUPE_HOME/shards/` (atomically), merges the part into the
catalog and FAISS with the job's writer (same batches, so the same ids as a local run), and
deletes it. A driver that dies between writing and merging leaves the part file behind; the
next run merges it without embedding its files again. Files already merged are skipped by the
ordinary incremental plan. (Part files are not the index shards of `indexer.ondisk`.)

Workers need Loupe installed and the image paths readable at the same absolute paths (a shared
filesystem), as `docs/scaling.md` explains.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .embedder import ClipEmbedder, ModelIdentity, ModelSpec, Preparer
from .errors import ConfigError, LoupeError
from .images import DecodeLimits
from .atomic import atomic_write
from .embed import Embedded, embed_pictures
from .jobs import IndexJob
from .reader import ImageFileDataset, ReadItem
from .library import Library
from .metadata import PictureMetadata
from .regions import Box, RegionSpec

log = logging.getLogger(__name__)

# Part files: the driver's record of a run of embedded files between the Ray pipeline and the
# catalog. The folder keeps its old name, so parts left by a run interrupted before the rename
# are still merged.
PARTS_FOLDER = "shards"
PART_FORMAT = 1


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. `address`: `auto` joins the running cluster (`RAY_ADDRESS`
    or this machine's head) and starts a local Ray when there is none; anything else is a
    Ray address (`ray://host:10001`, `host:6379`)."""

    address: str = "auto"
    embedders: int | None = None  # model actors; None: one per GPU, else one per `cpus_per_embedder`
    cpus_per_embedder: int | None = None  # None: all CPUs but one (decoding needs a slot), at most 8
    part_size: int = 1024  # files per part file written by the driver


# -- what travels to the workers -------------------------------------------------------------
@dataclass(frozen=True)
class EmbedderRecipe:
    """How a worker builds the driver's embedder: the model spec, the weights folder, and the
    architecture's config when it was registered at runtime (`open_clip.add_model_config`)."""

    spec: ModelSpec
    models_dir: str
    architecture_config: dict | None
    expected: ModelIdentity

    @classmethod
    def of(cls, embedder: ClipEmbedder, device: str) -> "EmbedderRecipe":
        """The recipe of `embedder`, as `create_embedder` made it (a checkpoint path, or the
        models folder holding the weights, must be readable at the same path on every node)."""
        import open_clip

        if embedder.source is None:
            raise ConfigError("this embedder was not made by create_embedder: Ray workers cannot rebuild it")
        spec, models_dir = embedder.source
        name = spec.architecture
        builtin = Path(open_clip.factory.__file__).parent / "model_configs" / f"{name}.json"
        config = None if builtin.is_file() else open_clip.get_model_config(name)
        pretrained = spec.pretrained
        if embedder.identity.pretrained == "file":
            pretrained = str(Path(pretrained).expanduser().absolute())
        return cls(ModelSpec(name, pretrained, device), str(Path(models_dir).absolute()), config, embedder.identity)

    def build(self) -> ClipEmbedder:
        """The embedder, refusing weights that differ from the driver's."""
        from .embedder import create_embedder

        if self.architecture_config is not None:
            _register_architecture(self.spec.architecture, self.architecture_config)
        embedder = create_embedder(self.spec, Path(self.models_dir))
        if not embedder.identity.same_weights(self.expected):
            raise ConfigError(
                f"a Ray worker loaded {embedder.identity.describe()}, not the driver's "
                f"{self.expected.describe()}: give every node the same weights"
            )
        return embedder


def _register_architecture(name: str, config: dict) -> None:
    import open_clip

    if name in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory(prefix="loupe-arch-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


@dataclass(frozen=True)
class ReaderSettings:
    """What the decode tasks need: Pillow-only preparation, limits, region geometry."""

    prepare: Preparer
    limits: DecodeLimits
    input_size: int
    regions: RegionSpec
    keep_gps: bool = False  # LOUPE_KEEP_GPS, as the driver read it


# -- the stages (run on workers) ---------------------------------------------------------------
def read_stage(batch: dict, reader: ReaderSettings) -> dict:
    """Decode a batch of paths into columns: catalog facts, model pixels, region crops."""
    dataset = ImageFileDataset(list(batch["path"]), reader.prepare, reader.limits, reader.input_size, reader.regions,
                               keep_gps=reader.keep_gps)
    items = [dataset[i] for i in range(len(dataset))]
    width, height = reader.prepare.input_size
    blank = np.zeros((height, width, 3), dtype=np.uint8)
    return {
        **_fact_columns(items),
        "pixels": np.stack([blank if item.pixels is None else item.pixels for item in items]),
        "region_pixels": _ragged([
            item.region_pixels if item.region_pixels is not None else np.zeros((0, height, width, 3), np.uint8)
            for item in items
        ]),
    }


class EmbedStage:
    """The model actor: builds the embedder once, then embeds batches of decoded rows."""

    def __init__(self, recipe: EmbedderRecipe, batch_size: int):
        import torch

        threads = _assigned_cpus()
        if threads:
            torch.set_num_threads(threads)
        self.embedder = recipe.build()
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        ok = [i for i, error in enumerate(batch["error"]) if not error]
        embedded = embed_pictures(self.embedder, [batch["pixels"][i] for i in ok],
                                  [batch["region_pixels"][i] for i in ok], self.batch_size)
        dim = self.embedder.dim
        whole = np.zeros((len(batch["path"]), dim), np.float32)
        regions = [np.zeros((0, dim), np.float32) for _ in batch["path"]]
        noise = np.full(len(batch["path"]), np.nan, np.float32)
        for i, vectors in zip(ok, embedded):
            whole[i], regions[i], noise[i] = vectors.whole, vectors.regions, vectors.noise
        out = {name: batch[name] for name in FACT_COLUMNS}
        out["vector"] = whole
        out["region_vectors"] = _ragged(regions)
        out["noise"] = noise
        return out


def _assigned_cpus() -> int:
    import ray

    try:
        return int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # not inside a Ray worker
        return 0


FACT_COLUMNS = ("path", "size", "mtime_ns", "sha256", "width", "height", "format", "error", "boxes", "features",
                "metadata")


def _fact_columns(items: list[ReadItem]) -> dict:
    return {
        "path": np.array([item.path for item in items], dtype=object),
        "size": np.array([item.size for item in items], dtype=np.int64),
        "mtime_ns": np.array([item.mtime_ns for item in items], dtype=np.int64),
        "sha256": np.array([item.sha256 or "" for item in items], dtype=object),
        "width": np.array([item.width or 0 for item in items], dtype=np.int64),
        "height": np.array([item.height or 0 for item in items], dtype=np.int64),
        "format": np.array([item.format or "" for item in items], dtype=object),
        "error": np.array([item.error or "" for item in items], dtype=object),
        "boxes": _ragged([np.array([[b.x, b.y, b.w, b.h] for b in item.regions], np.int64).reshape(-1, 4)
                          for item in items]),
        "features": np.array([item.features or b"" for item in items], dtype=object),
        # indexer.metadata as JSON text ("" when none): a flat column Ray can carry
        "metadata": np.array([json.dumps(item.metadata.as_dict()) if item.metadata else "" for item in items],
                             dtype=object),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of arrays whose first dimension differs row by row."""
    column = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        column[i] = array
    return column


# -- part files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """A run of embedded files as the writer needs them: ReadItems without pixels, vectors by hash."""

    items: list[ReadItem]
    vectors: dict[str, Embedded]


def part_from_rows(rows: list[dict]) -> Part:
    """The Ray pipeline's result rows as a part."""
    items, vectors = [], {}
    for row in rows:
        boxes = tuple(Box(*map(int, b)) for b in np.asarray(row["boxes"]).reshape(-1, 4))
        item = ReadItem(
            path=str(row["path"]), size=int(row["size"]), mtime_ns=int(row["mtime_ns"]),
            sha256=row["sha256"] or None, width=int(row["width"]) or None, height=int(row["height"]) or None,
            format=row["format"] or None, error=row["error"] or None, regions=boxes if not row["error"] else (),
            features=bytes(row["features"]) or None if "features" in row else None,
            metadata=PictureMetadata.from_dict(json.loads(row["metadata"])) if row.get("metadata") else None,
        )
        items.append(item)
        if item.error is None:
            vectors.setdefault(item.sha256, Embedded(
                np.asarray(row["vector"], np.float32), np.asarray(row["region_vectors"], np.float32).reshape(len(boxes), len(row["vector"])),
                float(row["noise"]),
            ))
    return Part(items, vectors)


def write_part(path: Path, part: Part, identity: ModelIdentity, regions: RegionSpec) -> None:
    """Save `part` atomically (`indexer.atomic`)."""
    skip = ("pixels", "region_pixels", "regions", "features", "metadata")
    facts = [{**{k: v for k, v in asdict(item).items() if k not in skip},
              "regions": [[b.x, b.y, b.w, b.h] for b in item.regions],
              "features": base64.b64encode(item.features).decode() if item.features else None,
              "metadata": item.metadata.as_dict() if item.metadata else None}
             for item in part.items]
    hashes = sorted(part.vectors)
    whole = np.stack([part.vectors[h].whole for h in hashes]) if hashes else np.zeros((0, identity.embed_dim), np.float32)
    counts = np.array([len(part.vectors[h].regions) for h in hashes], np.int64)
    region = (np.concatenate([part.vectors[h].regions for h in hashes]) if counts.sum()
              else np.zeros((0, identity.embed_dim), np.float32))
    noise = np.array([part.vectors[h].noise for h in hashes], np.float32)
    header = {"format": PART_FORMAT, "model": identity.as_dict(), "regions": list(regions.scales),
              "files": facts, "hashes": hashes}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), np.uint8), whole=whole,
             region_counts=counts, region=region, noise=noise)
    atomic_write(path, buffer.getvalue())


def read_part(path: Path, identity: ModelIdentity, regions: RegionSpec) -> Part | None:
    """A part file written for this model and region setting, or None (unreadable or stale)."""
    try:
        with np.load(path) as data:
            header = json.loads(bytes(data["header"]).decode())
            whole, counts, region = data["whole"], data["region_counts"], data["region"]
            noise = data["noise"] if "noise" in data.files else np.full(len(whole), np.nan, np.float32)
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable part file %s: %s", path, err)
        return None
    stored = ModelIdentity.from_dict(header.get("model"))
    if (header.get("format") != PART_FORMAT or stored is None or not stored.same_weights(identity)
            or header["regions"] != list(regions.scales)):
        return None
    vectors, at = {}, 0
    for i, sha in enumerate(header["hashes"]):
        vectors[sha] = Embedded(whole[i], region[at : at + counts[i]], float(noise[i]))
        at += counts[i]
    items = [ReadItem(**{**facts, "regions": tuple(Box(*b) for b in facts["regions"]),
                         "features": base64.b64decode(facts["features"]) if facts.get("features") else None,
                         # parts written before metadata was recorded have none: backfilled later
                         "metadata": PictureMetadata.from_dict(facts.get("metadata"))})
             for facts in header["files"]]
    return Part(items, vectors)


# -- the job -----------------------------------------------------------------------------------------
class RayIngest:
    """`IndexJob`'s ingest on Ray: reading and embedding run on the cluster, writing stays in
    the job (its writer, in the local job's batches). Waiting for the cluster's rows counts as
    the job's embed stage, and reading part files as its read stage."""

    def __init__(self, ray_options: RayOptions = RayOptions()):
        self.ray_options = ray_options
        self.recovered_files = 0  # files merged from part files a previous run left behind
        self.landed = 0  # files of this run's pipeline merged so far

    def run(self, todo: list[str], job: IndexJob) -> None:
        todo = self._merge_left_parts(todo, job)
        if not todo:
            return
        started_ray = _connect(self.ray_options.address)
        try:
            self._run_pipeline(todo, job)
        finally:
            if started_ray:
                import ray

                ray.shutdown()

    def _merge_left_parts(self, todo: list[str], job: IndexJob) -> list[str]:
        """Merge part files an interrupted run wrote but did not merge; what remains to embed."""
        folder = parts_folder(job.library)
        if not folder.is_dir():
            return todo
        wanted = set(todo)
        merged: set[str] = set()
        for path in sorted(folder.glob("*.npz")):
            with job.clock.stage("read"):
                part = read_part(path, job.embedder.identity, job.library.region_spec)
            if part is not None:
                current = [item for item in part.items if item.path in wanted and _unchanged_since(item)]
                self._merge(Part(current, part.vectors), job)
                merged.update(item.path for item in current)
            path.unlink()
        self.recovered_files += len(merged)
        return [path for path in todo if path not in merged]

    def _run_pipeline(self, todo: list[str], job: IndexJob) -> None:
        import ray

        size = self.ray_options.part_size
        context = ray.data.DataContext.get_current()  # a Dataset copies it when it is made
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        context.execution_options.preserve_order = True  # rows come back in `todo` order
        context.enable_progress_bars = False  # the job's own bar counts merged files
        if not log.isEnabledFor(logging.INFO):  # Ray Data narrates every execution at INFO
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        dataset = self._dataset(todo, job)
        rows: list[dict] = []
        number = 0
        try:
            for batch in job.clock.each("embed", dataset.iter_batches(batch_size=None, batch_format="numpy")):
                for i in range(len(batch["path"])):
                    rows.append({name: column[i] for name, column in batch.items()})
                while len(rows) >= size:
                    self._land(rows[:size], number, todo, job)
                    rows, number = rows[size:], number + 1
            if rows:
                self._land(rows, number, todo, job)
        except ray.exceptions.RayError as err:
            raise LoupeError(f"the Ray pipeline failed: {_last_line(err)}") from err
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

    def _dataset(self, todo: list[str], job: IndexJob):
        import ray

        embedder, options = job.embedder, job.options
        recipe = EmbedderRecipe.of(embedder, _worker_device(embedder.device))
        reader = ReaderSettings(embedder.prepare, options.limits, embedder.image_size, job.library.region_spec,
                                keep_gps=job.library.settings.keep_gps)
        batch = options.batch_size
        actors, cpus, gpus = embedder_resources(ray.cluster_resources(), self.ray_options, recipe.spec.device)
        blocks = max(1, min(4096, math.ceil(len(todo) / batch)))
        return (
            ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
            .map_batches(read_stage, fn_kwargs={"reader": reader}, batch_size=batch, num_cpus=1)
            .map_batches(EmbedStage, fn_constructor_kwargs={"recipe": recipe, "batch_size": batch},
                         batch_size=batch, compute=ray.data.ActorPoolStrategy(size=actors),
                         num_cpus=cpus, num_gpus=gpus)
        )

    def _land(self, rows: list[dict], number: int, todo: list[str], job: IndexJob) -> None:
        """Write one part file of results, merge it into the catalog, then drop the file."""
        first = self.landed
        if [str(r["path"]) for r in rows] != todo[first : first + len(rows)]:
            raise LoupeError("the Ray pipeline returned files out of order")  # preserve_order is broken
        part = part_from_rows(rows)
        path = parts_folder(job.library) / f"job{job.job_id}-{number:06d}.npz"
        with job.clock.stage("write"):
            write_part(path, part, job.embedder.identity, job.library.region_spec)
        self._merge(part, job)
        path.unlink()
        self.landed += len(rows)

    def _merge(self, part: Part, job: IndexJob) -> None:
        size = job.options.batch_size
        for start in range(0, len(part.items), size):
            job.write(part.items[start : start + size], part.vectors)


def parts_folder(library: Library) -> Path:
    """Where the driver keeps part files until they are merged."""
    return library.settings.home / PARTS_FOLDER


def _worker_device(device: str) -> str:
    return "auto" if device.startswith("cuda") else device


def embedder_resources(cluster: dict, options: RayOptions, device: str) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for the model's actor pool (a pure function):
    one actor per GPU when the cluster has GPUs and the device allows them; otherwise actors of
    `cpus_per_embedder` CPUs (default: all but one CPU, at most 8), leaving one for decoding."""
    gpus = int(cluster.get("GPU", 0))
    cpus = max(1, int(cluster.get("CPU", 1)))
    if gpus and device != "cpu":
        return options.embedders or gpus, 1.0, 1.0
    per = options.cpus_per_embedder or max(1, min(8, cpus - 1))
    count = options.embedders or max(1, (cpus - 1) // per)
    return count, float(per), 0.0


def _connect(address: str) -> bool:
    """Join (or start) a Ray instance; True when this call started one that it should stop."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("--ray needs Ray: pip install 'loupe[ray]'") from err
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address != "auto":
        try:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise LoupeError(f"cannot reach the Ray cluster at {address}: {_last_line(err)}") from err
        return True
    try:
        ray.init(address="auto", **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except (ConnectionError, ValueError, RuntimeError):
        log.warning("no running Ray cluster found; starting a local Ray instance")
        ray.init(**quiet)
    return True


def _unchanged_since(item: ReadItem) -> bool:
    try:
        stat = os.stat(item.path)
    except OSError:
        return False
    return stat.st_size == item.size and stat.st_mtime_ns == item.mtime_ns


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
