#!/usr/bin/env python
"""Indexing throughput: decoding alone, the model alone, and the whole `loupe index` job.

    python bench/index_throughput.py                  # ViT-B-32, untrained weights, 256 JPEGs
    python bench/index_throughput.py --quick          # CI smoke run (16 images, 2 batches, one repeat)
    python bench/index_throughput.py --photos DIR     # your own photographs
    python bench/index_throughput.py --phases         # also: where the job's time goes, batch by batch
    python bench/index_throughput.py --regions off    # whole images only (default: default,off)

Without --photos it writes N distinct JPEGs (about 1024 px on the long side, quality 90) made
by seeded random crops, flips and scales of the real photographs scikit-image ships (the ones
`loupe demo` uses), so what is measured is decoding real photographic JPEGs, and no file is a
byte-for-byte duplicate of another (the job would skip those).

Three rates are measured with one loaded model, the last two for each region setting of
--regions (a comma list; `default` is what `loupe index` does with LOUPE_REGIONS unset, R-MAC
regions at scale 2, about 7-8 vectors per picture; `off` is whole pictures only; scales such as
`2` or `2+3` set LOUPE_REGIONS=2 or 2,3):

  model   embedder.encode_batch on ready preprocessed whole pictures, batches of the same
          sizes as the job's, on the same device, after a warm-up batch of each size;
  decode  the job's per-file work (indexer.reader.ImageFileDataset: read, sha256, decode in
          JPEG draft mode, preprocess, cut the regions) through the job's reader
          (iter_read_batches) with the same worker count, and nothing else running;
  job     indexer.jobs.IndexJob on a fresh LOUPE_HOME (SQLite, FAISS), progress off; with
          regions it also embeds each region, so its vectors/s is given beside images/s. The
          seconds the job itself measured in its read, embed and write stages (its median
          run's) are printed below its row and reported as `stages`.

Each is measured --repeat times (3; 1 with --quick), interleaved, and the tables give the
min, median and max images/s over the repeats. job/model near 1 (regions off) means decoding
and bookkeeping are hidden behind inference. Each stage also reports the CPU seconds of this
process and of its decode workers, and how many cores other processes kept busy meanwhile
(from /proc/stat), of its median run: on a shared machine a busy neighbour skews the rates,
which the output then says.

With --ray, the job also runs on Ray (the first region setting) and the exit status is 1 when
its catalog differs from the local job's: the images (ids, paths, statuses), the regions
(image, box) or any vector, whole or regional, by more than VECTOR_TOLERANCE.

Everything the benchmark writes lives under --home (default /tmp/loupe-bench-home): the
seeded untrained checkpoint in models/ (about 600 MB for ViT-B-32, created once and reused
between runs; `LOUPE_PRETRAINED=none` gives the real architecture's compute cost without
downloadable weights) and, per run, the generated photographs and a fresh LOUPE_HOME for
each job, which are deleted at the end unless --keep is given. Nothing is written to the
user's own LOUPE_HOME. No timing fails the run: the exit status is 0 unless something errors
or the Ray job builds another index than the local one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import common
from provenance import print_header, print_result

DEFAULT_HOME = Path(common.DEFAULT_HOME)
QUICK_COUNT = 16
QUICK_BATCH = 8
LONG_SIDE = 1024
JPEG_QUALITY = 90
VECTOR_TOLERANCE = 1e-4  # largest difference between the Ray job's and the local job's vectors


# -- arguments ------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--photos", type=Path, help="folder of photographs to index (default: generate --count JPEGs)")
    p.add_argument("--count", type=int, default=None, help=f"images to generate (default 256; {QUICK_COUNT} with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed for the generated photographs")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--pretrained", default="none", help="pretrained tag, checkpoint path or none (default none)")
    p.add_argument("--batch-size", type=int, default=None, help=f"default 32; {QUICK_BATCH} with --quick")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode worker processes (default: as the job chooses, indexer.reader.choose_decoders)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in this process (default: leave torch's default)",
    )
    p.add_argument("--repeat", type=int, default=None,
                   help="measure each rate this many times (default 3; 1 with --quick); min/median/max are reported")
    p.add_argument(
        "--phases",
        action="store_true",
        help="also run the job once more and show its per-batch stage times (as the job measures them), "
        "and time the per-image decode steps in this process",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_COUNT} images in batches of {QUICK_BATCH}, one repeat")
    p.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help=f"benchmark folder, reused between runs for the model checkpoint (default {DEFAULT_HOME})",
    )
    p.add_argument("--keep", action="store_true", help="keep this run's photographs and job folders")
    p.add_argument("--decode", choices=("auto", "pillow", "torchvision"), default="auto",
                   help="the job's JPEG decoding (loupe index --decode): auto is torchvision (nvJPEG) on CUDA")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="also run the job on Ray (`loupe index --ray ADDRESS`; auto: the running cluster, else a "
                        "local Ray on this machine) and check that it builds the local job's index")
    p.add_argument("--regions", default="default,off",
                   help="region settings to measure the job with, a comma list of `default` (LOUPE_REGIONS "
                        "unset, as `loupe index`), `off`, or scales such as 2 or 2+3 (default: default,off)")
    args = p.parse_args(argv)
    if args.count is None:
        args.count = QUICK_COUNT if args.quick else 256
    if args.batch_size is None:
        args.batch_size = QUICK_BATCH if args.quick else 32
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    try:
        parse_regions(args.regions)
    except ValueError as err:
        p.error(str(err))
    if args.count < 1 or args.batch_size < 1 or (args.workers or 0) < 0 or args.repeat < 1:
        p.error("--count, --batch-size and --repeat must be positive, --workers not negative")
    if args.photos is not None and not args.photos.is_dir():
        p.error(f"--photos {args.photos} is not a folder")
    return args


@dataclass(frozen=True)
class Regions:
    """One region setting: its label and the LOUPE_REGIONS value (None: unset)."""

    label: str
    value: str | None

    def spec(self):
        from indexer.regions import RegionSpec

        return RegionSpec.parse(self.value)

    def describe(self) -> str:
        scales = ",".join(map(str, self.spec().scales)) or "off"
        return f"{self.label} ({scales})" if self.label != scales else self.label


def parse_regions(text: str) -> list[Regions]:
    """`default,off,2+3` as region settings (ValueError when one is not valid)."""
    from indexer.errors import ConfigError

    settings = []
    for part in filter(None, (x.strip().lower() for x in text.split(","))):
        setting = Regions(part, None if part == "default" else part.replace("+", ","))
        try:
            setting.spec()
        except ConfigError as err:
            raise ValueError(f"--regions {part!r}: {err}") from None
        settings.append(setting)
    if not settings:
        raise ValueError("--regions names no setting")
    return settings


# -- photographs ----------------------------------------------------------------------------------
def make_photos(dest: Path, count: int, seed: int) -> list[Path]:
    """Write `count` distinct JPEGs of about LONG_SIDE px made from scikit-image's photographs."""
    from PIL import Image, ImageOps

    from indexer.demo import SAMPLE_PHOTOS, sample_photos_dir

    source_dir = sample_photos_dir()
    sources = []
    for name in SAMPLE_PHOTOS:
        if (source_dir / name).is_file():
            with Image.open(source_dir / name) as img:
                # Greyscale sources become 3-channel so every file decodes like a colour photo.
                sources.append((name, img.convert("RGB")))
    if not sources:
        raise SystemExit(f"no sample photographs found in {source_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    paths: list[Path] = []
    attempt = 0
    while len(paths) < count:
        name, src = sources[attempt % len(sources)]
        attempt += 1
        w, h = src.size
        cw = max(16, int(w * rng.uniform(0.55, 1.0)))
        ch = max(16, int(h * rng.uniform(0.55, 1.0)))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        long_side = rng.randint(int(LONG_SIDE * 0.9), int(LONG_SIDE * 1.1))
        scale = long_side / max(cw, ch)
        img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
        path = dest / f"photo-{len(paths):05d}-{Path(name).stem}.jpg"
        img.save(path, "JPEG", quality=JPEG_QUALITY)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:  # never in practice; a duplicate would be skipped by the job
            path.unlink()
            continue
        seen.add(digest)
        paths.append(path)
    return paths


def list_photos(folder: Path) -> list[Path]:
    from indexer.images import iter_image_files

    return list(iter_image_files([folder]))


def describe_photos(paths: list[Path]) -> str:
    from PIL import Image

    sizes = [p.stat().st_size for p in paths]
    sample = paths[:: max(1, len(paths) // 32)]
    dims = []
    for p in sample:
        try:
            with Image.open(p) as img:
                dims.append(max(img.size))
        except Exception:  # the job records unreadable files; here they are just not described
            pass
    median = f"long side ~{sorted(dims)[len(dims) // 2]} px (median of {len(dims)})" if dims else "none readable"
    return f"{len(paths)} files, mean {sum(sizes) / len(sizes) / 1024:.0f} KiB, {median}"


# -- measurements -----------------------------------------------------------------------------------
def _system_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class Meter:
    """Wall time, this process's CPU, its (reaped) children's CPU, and everyone else's CPU."""

    def __enter__(self):
        self.busy0 = _system_busy_seconds()
        self.me0, self.kids0 = _own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        me1, kids1 = _own_cpu_seconds()
        busy1 = _system_busy_seconds()
        self.main = me1 - self.me0
        self.workers = kids1 - self.kids0
        self.other = (
            None if self.busy0 is None or busy1 is None else max(0.0, busy1 - self.busy0 - self.main - self.workers)
        )
        return False

    @property
    def other_cores(self) -> float:
        return (self.other or 0.0) / self.wall if self.wall > 0 else 0.0


def batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def decoders_label(workers: int, threads: int) -> str:
    if workers:
        return f"{workers} process{'' if workers == 1 else 'es'}"
    return f"{threads} thread{'' if threads == 1 else 's'}"


def measure_decode(paths, embedder, batch_size: int, workers: int, threads: int,
                   regions: Regions, on_device: bool = False) -> tuple[Meter, int, int]:
    """The job's reading path (dataset + its decode processes or threads, or the device JPEG
    reader) with nothing else running."""
    from indexer.images import DecodeLimits
    from indexer.reader import DeviceJpegReader, ImageFileDataset, default_workers, iter_read_batches

    dataset = ImageFileDataset([str(p) for p in paths], embedder.prepare, DecodeLimits(), embedder.image_size,
                               regions=regions.spec())
    if on_device:
        batches = DeviceJpegReader(embedder.device, dataset).batches(dataset.paths, batch_size, default_workers())
    else:
        batches = iter_read_batches(dataset, batch_size, workers, threads)
    n = failed = 0
    with Meter() as meter:
        for batch in batches:
            n += len(batch)
            failed += sum(item.error is not None for item in batch)
        _synchronize(embedder.device)
    return meter, n, failed


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def decodes_on_device(args, embedder) -> bool:
    """What the job will do with --decode (indexer.reader.device_reader_for decides for it)."""
    from indexer.errors import LoupeError
    from indexer.images import DecodeLimits
    from indexer.reader import ImageFileDataset, device_reader_for

    dataset = ImageFileDataset([], embedder.prepare, DecodeLimits(), embedder.image_size)
    try:
        return device_reader_for(dataset, embedder.device, args.decode) is not None
    except LoupeError:  # --decode torchvision where it cannot: the job says so
        return False


def ready_pixels(paths, embedder, batch_size: int):
    """One batch of prepared model inputs (uint8 pixels) made from the real photographs."""
    import numpy as np

    from indexer.errors import ImageReadError
    from indexer.images import load_image_file

    arrays = []
    for p in paths:
        if len(arrays) == batch_size:
            break
        try:
            arrays.append(embedder.prepare(load_image_file(p, draft_size=embedder.image_size).image))
        except ImageReadError:
            continue
    if not arrays:
        raise SystemExit("none of the photographs could be decoded")
    while len(arrays) < batch_size:
        arrays.append(arrays[len(arrays) % len(arrays)].copy())
    return np.stack(arrays)


def measure_model(embedder, pixels, sizes: list[int]) -> tuple[Meter, list[float]]:
    """Encode batches of `sizes` images; the meter and the per-batch seconds."""
    times = []
    with Meter() as meter:
        for size in sizes:
            tb = time.perf_counter()
            embedder.encode_batch(pixels[:size])
            times.append(time.perf_counter() - tb)
    return meter, times


def job_settings(home: Path, args, regions: Regions | None = None):
    """The Settings `loupe index` would have with this LOUPE_HOME, model, device and regions."""
    from indexer.settings import Settings

    env = {"LOUPE_HOME": str(home), "LOUPE_MODEL": args.model, "LOUPE_PRETRAINED": args.pretrained,
           "LOUPE_DEVICE": args.device}
    if regions is not None and regions.value is not None:
        env["LOUPE_REGIONS"] = regions.value
    return Settings.from_env(env)


def run_job(photo_dir: Path, embedder, args, parent: Path, regions: Regions, ingest=None, keep_home: bool = False):
    """One IndexJob (with `ingest`, default local) over `photo_dir` on a fresh LOUPE_HOME with
    `regions`: (meter, summary, job); `job.home` is deleted unless kept."""
    from indexer.factory import open_library
    from indexer.jobs import IndexJob, IndexOptions

    home = Path(tempfile.mkdtemp(prefix="job-home-", dir=parent))
    library = open_library(job_settings(home, args, regions))
    try:
        options = IndexOptions(batch_size=args.batch_size, workers=args.workers, progress=False, decode=args.decode)
        job = IndexJob(library, embedder, options, ingest=ingest)
        with Meter() as meter:
            summary = job.run([photo_dir])
        job.region_vectors = len(library.regions.store)
        job.home = home
    finally:
        library.close()
        if not (args.keep or keep_home):
            shutil.rmtree(home, ignore_errors=True)
    return meter, summary, job


def catalog_snapshot(home: Path, args) -> tuple[list, object]:
    """What a job put in its catalog: the (id, path, status) of every image and the (image id,
    box) of every region, in id and box order, and their vectors (whole ones, then regions)."""
    import numpy as np
    from sqlalchemy import select

    from indexer.catalog import ImageRecord, RegionRecord
    from indexer.database import make_engine

    engine = make_engine(job_settings(home, args).database_url)
    try:
        with engine.connect() as conn:
            images = conn.execute(select(ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.embedding)
                                  .order_by(ImageRecord.id)).all()
            regions = conn.execute(select(RegionRecord.image_id, RegionRecord.x, RegionRecord.y, RegionRecord.w,
                                          RegionRecord.h, RegionRecord.embedding)
                                   .order_by(RegionRecord.image_id, RegionRecord.x, RegionRecord.y,
                                             RegionRecord.w, RegionRecord.h)).all()
    finally:
        engine.dispose()
    rows = [(r.id, r.path, str(r.status)) for r in images] + [tuple(r[:5]) for r in regions]
    blobs = [r.embedding for r in images if r.embedding is not None] + [r.embedding for r in regions]
    vectors = np.stack([np.frombuffer(b, np.float32) for b in blobs]) if blobs else np.zeros((0, 0), np.float32)
    return rows, vectors


def compare_catalogs(local_home: Path, other_home: Path, args) -> tuple[bool, float]:
    """(same images and regions, largest vector difference: NaN when the rows differ)."""
    import numpy as np

    local_rows, local_vectors = catalog_snapshot(local_home, args)
    other_rows, other_vectors = catalog_snapshot(other_home, args)
    if local_rows != other_rows or local_vectors.shape != other_vectors.shape:
        return False, float("nan")
    return True, float(np.abs(local_vectors - other_vectors).max()) if local_vectors.size else 0.0


def run_ray_comparison(photo_dir: Path, embedder, args, parent: Path, regions: Regions, local_home: Path,
                       local_s: float) -> tuple[list[str], dict]:
    """The same job on Ray: its rate, Ray's start-up, and whether its index equals the local
    one; (lines, figures with `same_index`)."""
    from indexer.distributed import RayIngest, RayOptions, _connect

    t0 = time.perf_counter()
    started = _connect(args.ray)
    start_s = time.perf_counter() - t0
    try:
        import ray

        cluster = ray.cluster_resources()
        meter, summary, job = run_job(
            photo_dir, embedder, args, parent, regions, keep_home=True, ingest=RayIngest(RayOptions(address=args.ray)),
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    same_rows, diff = compare_catalogs(local_home, job.home, args)
    same = same_rows and diff <= VECTOR_TOLERANCE
    if not args.keep:
        shutil.rmtree(job.home, ignore_errors=True)
    rate = summary.embedded / meter.wall if meter.wall > 0 else 0.0
    lines = [
        f"ray:     cluster {dict(sorted((k, v) for k, v in cluster.items() if k in ('CPU', 'GPU')))}, "
        f"{'connected' if not started else 'started'} in {start_s:.1f} s (not in the job's time), "
        f"regions {regions.describe()}",
        f"job (IndexJob, RayIngest): {summary.embedded} images in {meter.wall:.2f} s, {rate:.1f} images/s "
        f"(one run; {stages_line(summary.stages)})",
        f"ray/local time: {meter.wall / local_s:.2f}; same images (ids, paths, statuses) and regions as the local "
        f"job: {'yes' if same_rows else 'NO'}; largest vector difference {diff:.2e} (tolerance {VECTOR_TOLERANCE:.0e})",
    ]
    if not same:
        lines.append("FAILED: the Ray job built another index than the local job")
    figures = {"regions": regions.label, "images_per_s": rate, "seconds": meter.wall, "stages": summary.stages,
               "start_s": start_s,
               "same_rows": same_rows, "max_vector_diff": diff if same_rows else None, "same_index": same}
    return lines, figures


# -- where the job's time goes (--phases) ------------------------------------------------------------
def decode_steps(paths, embedder) -> list[str]:
    """Per-image cost of each step of a dataset item, in this process, on one thread."""
    import torch

    from indexer.errors import ImageReadError
    from indexer.images import DecodeLimits, content_hash, decode_image, read_file

    limits = DecodeLimits()
    t = defaultdict(float)
    drafted: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker
    try:
        for p in paths:
            if len(drafted) == 64:
                break
            try:
                t0 = time.perf_counter()
                raw = read_file(Path(p), limits)
                t1 = time.perf_counter()
                content_hash(raw.data)
                t2 = time.perf_counter()
                decoded = decode_image(raw.data, limits, embedder.image_size)
                t3 = time.perf_counter()
                embedder.prepare(decoded.image)
                t4 = time.perf_counter()
                decode_image(raw.data, limits, None)
                t5 = time.perf_counter()
            except ImageReadError:
                continue  # unreadable files are not part of the per-image cost
            drafted.append(decoded.image.size)
            t["read"] += t1 - t0
            t["sha256"] += t2 - t1
            t["decode (draft, incl. sha256)"] += t3 - t2
            t["preprocess"] += t4 - t3
            t["decode (no draft, incl. sha256)"] += t5 - t4
    finally:
        torch.set_num_threads(threads)
    if not drafted:
        return ["decode steps: no readable image"]
    per = {name: 1000 * v / len(drafted) for name, v in t.items()}
    total = per["read"] + per["decode (draft, incl. sha256)"] + per["preprocess"]
    lines = [f"decode steps per image, in-process, 1 thread, {len(drafted)} images:"]
    lines += [f"  {name:<34}{ms:8.2f} ms" for name, ms in per.items()]
    w, h = sorted(drafted, key=lambda wh: wh[0] * wh[1])[len(drafted) // 2]
    lines.append(
        f"  {'dataset item (read+decode+prep)':<34}{total:8.2f} ms   "
        f"(decoded size before resize: about {w}x{h}, the median)"
    )
    return lines


def stages_line(stages: dict) -> str:
    """The job's own stage seconds, as one phrase."""
    return "stages " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())


def run_phases(photo_dir, paths, embedder, args, parent, regions: Regions, model_batch_s: float) -> list[str]:
    """Where one more run of the job spends its time, from the stage times the job measures
    itself (`IndexJob.clock`: per batch, read waits, embed, write without the embedding)."""
    lines = decode_steps(paths, embedder)
    meter, summary, job = run_job(photo_dir, embedder, args, parent, regions)
    wall = meter.wall
    timings = job.clock.timings
    waits = timings["read"]
    nb = max(1, len(waits))
    stages = summary.stages
    rows = [
        ("read: wait for batch 1 (start-up)", waits[0] if waits else 0.0),
        ("read: wait for batches 2..", sum(waits[1:])),
        ("embed (stack + encode_batch)", stages["embed"]),
        ("write (SQL, commit, FAISS add)", stages["write"]),
        ("outside the stages", wall - sum(stages.values())),
    ]
    lines.append("")
    lines.append(
        f"job, regions {regions.describe()}: {summary.embedded} images in {nb} batches, {wall:.2f} s "
        f"({summary.embedded / wall:.1f} images/s); the job's own stage times"
    )
    lines.append(f"  {'phase':<34}{'seconds':>9}{'ms/batch':>10}{'share':>8}")
    for name, secs in rows:
        lines.append(f"  {name:<34}{secs:9.3f}{1000 * secs / nb:10.1f}{100 * secs / wall:7.1f}%")
    sizes = batch_sizes(summary.embedded, args.batch_size)
    full = [t for t, n in zip(timings["embed"], sizes) if n == args.batch_size]
    if full and model_batch_s > 0:
        mean = sum(full) / len(full)
        lines.append(
            f"  a full batch's embedding: {1000 * mean:.0f} ms in the job, "
            f"{1000 * model_batch_s:.0f} ms for encode_batch alone (x{mean / model_batch_s:.2f})"
            + (f"; the job's batches also encode the regions, {job.region_vectors / max(1, summary.embedded):.1f} "
               "per image" if job.region_vectors else "")
        )
    lines.append(
        f"  CPU: main process {meter.main:.2f} s ({meter.main / wall:.2f} cores), decode workers "
        f"{meter.workers:.2f} s ({1000 * meter.workers / max(1, summary.embedded):.1f} ms/image), "
        f"other processes {meter.other_cores:.2f} cores"
    )
    return lines


# -- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    header = print_header("index_throughput", args, model=common.clip_model_label(args.model, args.pretrained))
    args.region_settings = parse_regions(args.regions)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.home = args.home.expanduser().absolute()
    runs = args.home / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    try:
        return bench(args, run_dir, header)
    finally:
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class Runs:
    """The repeated measurements of one stage: (count, vectors, meter) per run, and for a job
    the seconds it measured in each of its stages."""

    label: str
    runs: list = field(default_factory=list)
    stages: list = field(default_factory=list)

    def add(self, count: int, meter: Meter, vectors: int | None = None, stages: dict | None = None) -> None:
        self.runs.append((count, count if vectors is None else vectors, meter))
        self.stages.append(stages)

    def rates(self, vectors: bool = False) -> list[float]:
        return [(v if vectors else n) / m.wall if m.wall > 0 else 0.0 for n, v, m in self.runs]

    def median_run(self) -> tuple[int, int, Meter]:
        return self.runs[self._median()]

    def median_stages(self) -> dict | None:
        """The stage seconds the median run measured (None: not a job)."""
        return self.stages[self._median()]

    def _median(self) -> int:
        order = sorted(range(len(self.runs)), key=lambda i: self.runs[i][2].wall)
        return order[(len(self.runs) - 1) // 2]


def prepare_photos(args, run_dir: Path) -> tuple[Path, list[Path], str]:
    """(folder, files, where they came from): --photos, or --count generated JPEGs."""
    if args.photos is not None:
        photo_dir = args.photos.expanduser().absolute()
        paths = list_photos(photo_dir)
        if not paths:
            raise SystemExit(f"no image files under {photo_dir}")
        return photo_dir, paths, str(photo_dir)
    t0 = time.perf_counter()
    paths = make_photos(run_dir / "photos", args.count, args.seed)
    return run_dir / "photos", paths, f"made from scikit-image's photographs in {time.perf_counter() - t0:.1f} s"


def measure_all(args, photo_dir: Path, paths, embedder, pixels, decoding: dict, run_dir: Path) -> dict:
    """--repeat rounds of: the model, then per region setting its decode and its job (the
    last round keeps the first setting's job home for --ray). Returns the Runs by key, notes,
    the model's mean seconds per full batch (its best round) and the kept home."""
    n = len(paths)
    sizes = batch_sizes(n, args.batch_size)
    model = Runs(f"model (batch {args.batch_size})")
    decode = {r.label: Runs(f"decode ({decoding['label']})") for r in args.region_settings}
    job = {r.label: Runs("job (IndexJob)") for r in args.region_settings}
    notes: list[str] = []
    full_batch_s: list[float] = []
    kept_home = None
    for round_ in range(args.repeat):
        meter, per_batch = measure_model(embedder, pixels, sizes)
        model.add(n, meter)
        full = [t for t, size in zip(per_batch, sizes) if size == args.batch_size]
        if full:
            full_batch_s.append(sum(full) / len(full))
        for regions in args.region_settings:
            meter, got, failed = measure_decode(paths, embedder, args.batch_size, decoding["workers"],
                                                decoding["threads"], regions, on_device=decoding["on_device"])
            if failed:
                notes.append(f"decode: {failed} of {got} files could not be read")
            decode[regions.label].add(got, meter)
            keep = bool(args.ray) and regions is args.region_settings[0] and round_ == args.repeat - 1
            meter, summary, done = run_job(photo_dir, embedder, args, run_dir, regions, keep_home=keep)
            if keep:
                kept_home = done.home
            if summary.embedded != n:
                notes.append(f"job, regions {regions.label}: {summary.line()}")
            job[regions.label].add(summary.embedded, meter, summary.embedded + done.region_vectors, summary.stages)
    return {"model": model, "decode": decode, "job": job, "notes": notes, "kept_home": kept_home,
            "model_batch_s": min(full_batch_s) if full_batch_s else 0.0}


def rate_row(runs: Runs, vectors: bool = False) -> str:
    count, _, m = runs.median_run()
    rates = common.spread(runs.rates())
    per_vector = f"{common.spread(runs.rates(vectors=True))['median']:>10.1f}" if vectors else f"{'':>10}"
    return (f"{runs.label:<26}{count:>7}{m.wall:>9.2f}{rates['min']:>9.1f}{rates['median']:>9.1f}{rates['max']:>9.1f}"
            f"{per_vector}{m.main:>9.2f}{m.workers:>9.2f}{m.other_cores:>7.2f}")


def job_model_ratios(job: Runs, model: Runs) -> dict:
    """min/median/max of job images/s over model images/s, run by run."""
    return common.spread([j / m for j, m in zip(job.rates(), model.rates()) if m > 0])


def print_tables(args, measured: dict) -> None:
    """The rates table: the model, then a block per region setting."""
    model = measured["model"]
    print(f"{'':<26}{'':>7}{'median':>9}{'images/s':>18}{'':>9}{'vectors/s':>10}{'cpu':>9}{'cpu':>9}{'other':>7}")
    print(f"{'stage':<26}{'images':>7}{'seconds':>9}{'min':>9}{'median':>9}{'max':>9}{'median':>10}"
          f"{'main':>9}{'wkrs':>9}{'cores':>7}")
    print(rate_row(model))
    for regions in args.region_settings:
        job = measured["job"][regions.label]
        images, vectors, _ = job.median_run()
        print(f"-- regions {regions.describe()}: {vectors} vectors for {images} images "
              f"({vectors / max(1, images):.1f} per image)")
        print(rate_row(measured["decode"][regions.label]))
        print(rate_row(job, vectors=True))
        print(f"{'':<26}{'':>7}job's own {stages_line(job.median_stages())}")
        r = job_model_ratios(job, model)
        print(f"{'job/model':<26}{'':>7}{'':>9}{r['min']:>9.2f}{r['median']:>9.2f}{r['max']:>9.2f}")
    print(f"(min/median/max over {args.repeat} run{'s' if args.repeat > 1 else ''}; seconds and cpu: the median "
          "run's; cpu: CPU seconds of this process and of its decode workers; other: cores busy with other "
          "processes meanwhile; job/model < 1 with regions: the job also embeds each region)")


def print_notes(measured: dict) -> float:
    """Print the notes (failures, a busy machine); return the most cores others kept busy."""
    every = [measured["model"], *measured["decode"].values(), *measured["job"].values()]
    busy = max(m.other_cores for runs in every for _, _, m in runs.runs)
    notes = list(measured["notes"])
    if busy > 0.15:
        notes.append(f"other processes kept {busy:.2f} cores busy during a measurement: the rates are unreliable")
    for note in notes:
        print(f"note: {note}")
    return busy


def region_figures(args, measured: dict) -> dict:
    """Per region setting: its scales, and its decode and job figures."""
    figures = {}
    for regions in args.region_settings:
        job = measured["job"][regions.label]
        figures[regions.label] = {
            "regions": ",".join(map(str, regions.spec().scales)) or "off",
            "decode": stage_figures(measured["decode"][regions.label]),
            "job": stage_figures(job, vectors=True),
            "job_model_ratio": job_model_ratios(job, measured["model"]),
        }
    return figures


def stage_figures(runs: Runs, vectors: bool = False) -> dict:
    figures = {"images_per_s": common.spread(runs.rates())}
    if vectors:
        figures["vectors_per_s"] = common.spread(runs.rates(vectors=True))
        figures["vectors"] = runs.median_run()[1]
        figures["stages"] = runs.median_stages()
    return figures


def bench(args, run_dir: Path, header: dict) -> int:
    import torch

    from indexer.factory import load_embedder
    from indexer.embedder import resolve_device
    from indexer.reader import choose_decoders

    photo_dir, paths, origin = prepare_photos(args, run_dir)
    n = len(paths)

    # The model, once: its checkpoint lives in --home/models and is reused between runs.
    t0 = time.perf_counter()
    embedder = load_embedder(job_settings(args.home, args))
    load_s = time.perf_counter() - t0
    device = resolve_device(args.device)
    threads = torch.get_num_threads()
    job_workers, job_threads = choose_decoders(n, args.batch_size, args.workers, embedder.device, threads)
    on_device = decodes_on_device(args, embedder)
    decoding = {"workers": job_workers, "threads": job_threads, "on_device": on_device,
                "label": f"torchvision on {embedder.device}" if on_device else decoders_label(job_workers, job_threads)}
    print(
        f"model:   {embedder.identity.describe()} on {device}, loaded in {load_s:.1f} s, "
        f"image size {embedder.image_size}"
    )
    print(f"photos:  {describe_photos(paths)}; {origin}")
    print(
        f"setup:   torch threads {threads}, decode: {decoding['label']}, batch size {args.batch_size}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__}, regions {', '.join(r.describe() for r in args.region_settings)}, "
        f"{args.repeat} run{'s' if args.repeat > 1 else ''} each"
    )

    pixels = ready_pixels(paths, embedder, args.batch_size)
    for size in sorted(set(batch_sizes(n, args.batch_size)), reverse=True):  # warm up every batch shape
        embedder.encode_batch(pixels[:size])
    measured = measure_all(args, photo_dir, paths, embedder, pixels, decoding, run_dir)

    print()
    print_tables(args, measured)
    ray_ok, ray_figures = True, None
    if args.ray:
        first = args.region_settings[0]
        local_s = measured["job"][first.label].median_run()[2].wall
        lines, ray_figures = run_ray_comparison(photo_dir, embedder, args, run_dir, first, measured["kept_home"],
                                                local_s)
        ray_ok = ray_figures["same_index"]
        print("\n".join(lines))
    busy = print_notes(measured)
    if args.phases:
        print()
        print("\n".join(run_phases(photo_dir, paths, embedder, args, run_dir, args.region_settings[0],
                                   measured["model_batch_s"])))

    print()
    print_result("index_throughput", {
        "device": device, "images": n, "image_size": embedder.image_size, "batch_size": args.batch_size,
        "workers": job_workers, "decode_threads": job_threads, "decode_on_device": on_device,
        "torch_threads": threads, "repeat": args.repeat, "model": stage_figures(measured["model"]),
        "regions": region_figures(args, measured), "ray": ray_figures, "other_load": busy,
    }, header)
    if not ray_ok:
        print("exit 1: the Ray job's index differs from the local job's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
