"""Prometheus metrics at `/metrics` (text exposition format, through `prometheus_client`).

Each application has its own `CollectorRegistry`, so two apps in one process (tests) never
share counters. What is exported:

- `loupe_http_requests_total{method, endpoint, status}` and
  `loupe_http_request_duration_seconds{method, endpoint}`: every request, by route template
  (`/api/images/<id:image_id>`, never the URL itself, so ids and queries add no series);
- `loupe_search_step_duration_seconds{kind, step}`: the steps each search times (an image
  search's decode, embed, knn+join, verify, rank, label and restoration stages; a text
  search's embed and knn+join);
- `loupe_index_jobs_total{outcome}` (finished, failed), `loupe_index_job_pictures_total{result}`
  (added, changed, duplicates, unchanged, failed, missing) and
  `loupe_index_job_stage_seconds_total{stage}` (read, embed, write, and other: planning, saving,
  calibrating): the indexing jobs this server ran (API jobs and uploads; not `loupe index` in
  another process), as each ends: `rate(loupe_index_job_pictures_total{result="added"}[1h])` is
  the indexing rate, the stage counters show where its time goes;
- read at scrape time, without loading anything: `loupe_model_queue_depth` (model calls
  waiting or running), `loupe_index_images{status}` and `loupe_index_vectors{index}` (once the
  library is loaded), `loupe_jobs_running{kind}` (bulk indexing, generation).

Who may read it is `security.metrics_allowed` (LOUPE_METRICS_TOKEN, else the read rule)."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request

EXTENSION = "loupe_metrics"
ENDPOINT = "metrics.metrics"
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_RESULTS = ("added", "changed", "duplicates", "unchanged", "failed", "missing")  # JobSummary's counts

bp = Blueprint("metrics", __name__)


class Metrics:
    """One application's registry and the instruments the request hooks and the service feed."""

    def __init__(self, service):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("loupe_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("loupe_http_request_duration_seconds",
                                 "time from the request's arrival to its response, by route template",
                                 ["method", "endpoint"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.steps = Histogram("loupe_search_step_duration_seconds",
                               "time of each step of a search (text or image), as the search times it",
                               ["kind", "step"], buckets=STEP_BUCKETS, registry=self.registry)
        self.jobs = Counter("loupe_index_jobs", "indexing jobs this server ran, by how they ended", ["outcome"],
                            registry=self.registry)
        self.job_pictures = Counter("loupe_index_job_pictures", "pictures the indexing jobs this server ran "
                                    "went through, by result", ["result"], registry=self.registry)
        self.job_seconds = Counter("loupe_index_job_stage_seconds", "seconds the indexing jobs this server ran "
                                   "spent in each stage (other: planning, saving, calibrating)", ["stage"],
                                   registry=self.registry)
        self.registry.register(ServiceCollector(service))

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(method, endpoint).observe(seconds)

    def observe_steps(self, kind: str, steps_ms: dict[str, float]) -> None:
        for step, ms in steps_ms.items():
            self.steps.labels(kind, step).observe(ms / 1000)

    def observe_job(self, summary) -> None:
        """An indexing job ended: its `indexer.jobs.JobSummary`, or None when it failed."""
        if summary is None:
            self.jobs.labels("failed").inc()
            return
        self.jobs.labels("finished").inc()
        for result in JOB_RESULTS:
            self.job_pictures.labels(result).inc(getattr(summary, result))
        staged = 0.0
        for stage, seconds in summary.stages.items():
            self.job_seconds.labels(stage).inc(seconds)
            staged += seconds
        self.job_seconds.labels("other").inc(max(summary.seconds - staged, 0.0))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class ServiceCollector:
    """Gauges read from the service when scraped; parts not loaded yet are left out."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        service = self.service
        yield GaugeMetricFamily("loupe_model_queue_depth", "model calls waiting or running on the model thread",
                                value=service.model_thread.pending)
        library, generations = service.loaded_parts
        jobs = GaugeMetricFamily("loupe_jobs_running", "jobs running in this server", labels=["kind"])
        jobs.add_metric(["indexing"], 0 if service.indexing_jobs.running_id is None else 1)
        jobs.add_metric(["generation"], 0 if generations is None else generations.pending())
        yield jobs
        if library is None:
            return
        try:
            counts = library.counts()
        except Exception:  # the catalog is unreachable: /api/health says so; the scrape still answers
            return
        images = GaugeMetricFamily("loupe_index_images", "catalogued pictures by status", labels=["status"])
        for status, count in counts.items():
            images.add_metric([status], count)
        yield images
        vectors = GaugeMetricFamily("loupe_index_vectors", "vectors in each loaded FAISS index", labels=["index"])
        for name, mirror in (("images", library.images), ("regions", library.regions)):
            if mirror.loaded:
                vectors.add_metric([name], len(mirror.store))
        yield vectors


@bp.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(current_app.extensions[EXTENSION].exposition(), content_type=CONTENT_TYPE_LATEST)


def _started() -> None:
    g.loupe_started = time.perf_counter()


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def init_app(app: Flask, service) -> Metrics:
    """Give `app` its registry, the request hooks and `/metrics`; the service reports its
    search steps to it."""
    found = Metrics(service)
    app.extensions[EXTENSION] = found
    service.observe_steps = found.observe_steps
    service.observe_job = found.observe_job
    app.before_request(_started)

    @app.after_request
    def count(response):
        started = g.get("loupe_started")
        seconds = 0.0 if started is None else time.perf_counter() - started
        found.observe_request(request.method, _route(), response.status_code, seconds)
        return response

    app.register_blueprint(bp)
    return found
