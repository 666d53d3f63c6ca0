"""Operating Loupe (#22): readiness in /api/health, Prometheus metrics, the access log, and the
command line's operator-facing flags (--version, -v/-q anywhere, defaults in help, exit codes,
remove by path or id:N with --dry-run, status --failures, -k bounds)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import replace

import pytest

from conftest import make_env, write_photos
from helpers import check_schema, free_port, run_cli, run_json
from indexer.settings import Settings
from searchapp import create_app
from searchapp.settings import ServiceSettings

TOKEN, READ_TOKEN, METRICS_TOKEN = "write-secret-123", "read-secret-456", "metrics-secret-789"


def make_app(service: ServiceSettings, **config):
    return create_app({"TESTING": True, "LOUPE_SETTINGS": service, **config})


@pytest.fixture(scope="module")
def indexed_env(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """A home with 8 pictures and one that failed, indexed once for the module (not to be changed)."""
    root = tmp_path_factory.mktemp("ops")
    env = make_env(root, models_dir)
    photos = root / "photos"
    write_photos(photos, photo_arrays)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    run_json(["index", str(photos), "--no-progress"], env)
    return env


@pytest.fixture(scope="module")
def service(indexed_env):
    return ServiceSettings.from_env(indexed_env)


@pytest.fixture(scope="module")
def client(service):
    return make_app(service).test_client()


def metric(client, name: str, headers=None, **labels) -> float | None:
    """One sample's value from /metrics (None: not exported)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# -- readiness ------------------------------------------------------------------------------------
def test_health_is_ok_when_every_check_passes(client):
    response = client.get("/api/health")
    body = check_schema(response, "/api/health")
    assert response.status_code == 200 and body["status"] == "ok"
    assert set(body["checks"]) == {"database", "index", "model", "disk"}
    assert all(check["state"] == "ok" and check["reason"] for check in body["checks"].values())
    assert body["images"] == 8 and body["index"]["vectors"] == 8 and body["device"] == "cpu"
    assert body["model"]["semantic"] is False  # LOUPE_PRETRAINED=none
    assert body["checks"]["model"]["loaded"] is False  # health never loads the model
    assert client.get("/api/search?q=a+cat").status_code == 200
    assert client.get("/api/health").get_json()["checks"]["model"]["loaded"] is True


def test_health_shows_paths_and_errors_only_to_readers(service, indexed_env):
    client = make_app(replace(service, read_token=READ_TOKEN)).test_client()
    anonymous = client.get("/api/health")  # liveness stays public
    assert anonymous.status_code == 200 and indexed_env["LOUPE_HOME"] not in anonymous.get_data(as_text=True)
    assert all("detail" not in check for check in anonymous.get_json()["checks"].values())
    reader = client.get("/api/health", headers={"Authorization": f"Bearer {READ_TOKEN}"}).get_json()
    assert reader["checks"]["disk"]["detail"] == indexed_env["LOUPE_HOME"]


def test_low_disk_space_degrades(service):
    response = make_app(replace(service, min_free_mb=1e12)).test_client().get("/api/health")
    body = check_schema(response, "/api/health")
    assert response.status_code == 503 and body["status"] == "degraded"
    assert body["checks"]["disk"]["state"] == "degraded" and "LOUPE_MIN_FREE_MB" in body["checks"]["disk"]["reason"]
    assert body["checks"]["database"]["state"] == "ok" and body["images"] == 8


def test_unreachable_database_degrades(env):
    url = f"postgresql+psycopg://loupe@127.0.0.1:{free_port()}/loupe"  # nothing listens there
    response = make_app(ServiceSettings.from_env({**env, "LOUPE_DATABASE_URL": url})).test_client().get("/api/health")
    body = check_schema(response, "/api/health")
    assert response.status_code == 503 and body["status"] == "degraded"
    assert body["checks"]["database"]["state"] == "degraded" and "cannot be used" in body["checks"]["database"]["reason"]
    assert body["checks"]["index"]["state"] == "degraded" and body["images"] is None
    assert "127.0.0.1" in body["checks"]["database"]["detail"]  # loopback, reads open: the detail is shown


def test_missing_index_file_degrades(indexed_env, tmp_path, models_dir):
    env = make_env(tmp_path / "copy", models_dir)
    for name in ("loupe.db", "loupe.db-wal"):  # the catalog (in WAL mode), not index.faiss
        if os.path.exists(f"{indexed_env['LOUPE_HOME']}/{name}"):
            shutil.copy(f"{indexed_env['LOUPE_HOME']}/{name}", f"{env['LOUPE_HOME']}/{name}")
    response = make_app(ServiceSettings.from_env(env)).test_client().get("/api/health")
    body = check_schema(response, "/api/health")
    assert response.status_code == 503 and body["checks"]["index"]["state"] == "degraded"
    assert body["checks"]["index"]["reason"].startswith("missing") and body["checks"]["database"]["state"] == "ok"


@pytest.mark.parametrize("model, pretrained, words", [
    ("loupe-test-tiny", "/nowhere/weights.pt", "does not exist"),
    ("ViT-B-32", "laion2b_s34b_b79k", "not in"),  # a published tag whose weights were never downloaded
])
def test_missing_model_weights_degrade(env, model, pretrained, words):
    environ = {**env, "LOUPE_MODEL": model, "LOUPE_PRETRAINED": pretrained}
    body = make_app(ServiceSettings.from_env(environ)).test_client().get("/api/health").get_json()
    assert body["status"] == "degraded" and body["checks"]["model"]["state"] == "degraded"
    assert words in body["checks"]["model"]["reason"] and body["checks"]["model"]["loaded"] is False
    assert "/nowhere" not in body["checks"]["model"]["reason"]  # paths go to `detail` only
    assert body["checks"]["index"]["state"] == "ok"  # nothing indexed yet: ready, empty


# -- metrics --------------------------------------------------------------------------------------
def test_metrics_count_requests_and_search_steps(client):
    searches = metric(client, "loupe_http_requests_total", endpoint="/api/search", status="200") or 0
    embeds = metric(client, "loupe_search_step_duration_seconds_count", kind="text", step="embed") or 0
    for _ in range(3):
        assert client.get("/api/search?q=a+dog").status_code == 200
    assert client.get("/api/search").status_code == 400
    assert metric(client, "loupe_http_requests_total", endpoint="/api/search", status="200") == searches + 3
    assert metric(client, "loupe_http_requests_total", endpoint="/api/search", status="400") >= 1
    assert metric(client, "loupe_search_step_duration_seconds_count", kind="text", step="embed") == embeds + 3
    assert metric(client, "loupe_http_request_duration_seconds_count", endpoint="/api/search") >= searches + 4
    assert metric(client, "loupe_model_queue_depth") == 0
    assert metric(client, "loupe_index_images", status="indexed") == 8
    assert metric(client, "loupe_index_images", status="failed") == 1
    assert metric(client, "loupe_index_vectors", index="images") == 8
    assert metric(client, "loupe_jobs_running", kind="indexing") == 0
    client.get("/api/images/999999")  # a route template, never the URL, labels a request
    assert metric(client, "loupe_http_requests_total", endpoint="/api/images/<id:image_id>", status="404") >= 1


def test_metrics_count_the_indexing_jobs_this_server_ran(env, photos, tmp_path):
    import time

    client = make_app(ServiceSettings(replace(Settings.from_env(env), allowed_roots=(tmp_path,)))).test_client()

    def run_job() -> None:
        job = client.post("/api/jobs", json={"paths": [str(photos / "a")]}).get_json()
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job['id']}").get_json()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)

    assert metric(client, "loupe_index_jobs_total", outcome="finished") is None  # nothing ran yet
    run_job()
    assert metric(client, "loupe_index_jobs_total", outcome="finished") == 1
    assert metric(client, "loupe_index_job_pictures_total", result="added") == 12  # photos/a: 12 files
    assert metric(client, "loupe_index_job_pictures_total", result="failed") == 0
    stages = {stage: metric(client, "loupe_index_job_stage_seconds_total", stage=stage)
              for stage in ("read", "embed", "write", "other")}
    assert all(seconds > 0 for seconds in stages.values()), stages
    run_job()  # nothing new: counted as unchanged
    assert metric(client, "loupe_index_jobs_total", outcome="finished") == 2
    assert metric(client, "loupe_index_job_pictures_total", result="unchanged") == 12
    assert metric(client, "loupe_index_job_pictures_total", result="added") == 12


def test_each_app_has_its_own_registry(service):
    first, second = make_app(service).test_client(), make_app(service).test_client()
    first.get("/api/health")
    assert metric(first, "loupe_http_requests_total", endpoint="/api/health", status="200") == 1
    assert metric(second, "loupe_http_requests_total", endpoint="/api/health", status="200") is None


def test_metrics_access_rules(service):
    guarded = make_app(replace(service, api_token=TOKEN, read_token=READ_TOKEN)).test_client()
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"}).status_code == 200
    own = make_app(replace(service, metrics_token=METRICS_TOKEN)).test_client()  # reads open, metrics not
    assert own.get("/metrics").status_code == 401
    assert own.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert own.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    both = make_app(replace(service, read_token=READ_TOKEN, metrics_token=METRICS_TOKEN)).test_client()
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert both.get("/metrics", headers=scraper).status_code == 200
    assert both.get("/api/search?q=x", headers=scraper).status_code == 403  # it reads nothing else


# -- access log -----------------------------------------------------------------------------------
def test_access_log_line_has_no_token_and_no_query(service, caplog):
    client = make_app(replace(service, read_token=READ_TOKEN)).test_client()
    with caplog.at_level(logging.INFO, logger="loupe.access"):
        response = client.get("/api/search?q=my+secret+holiday&k=3", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        client.get("/api/search?q=x&token=abc")  # refused (no header): logged all the same
    lines = [r.getMessage() for r in caplog.records if r.name == "loupe.access"]
    assert len(lines) == 2 and response.status_code == 200
    assert lines[0].startswith('127.0.0.1 "GET /api/search" 200 ') and lines[0].endswith(" ms")
    assert f" {response.content_length} B " in lines[0]
    assert '"GET /api/search" 401' in lines[1]
    text = "\n".join(lines)
    for secret in ("secret", "holiday", READ_TOKEN, "abc", "q=", "?"):
        assert secret not in text


def test_access_log_behind_trusted_proxies_names_the_client(service, indexed_env, caplog):
    """LOUPE_TRUSTED_PROXIES=N: the client is X-Forwarded-For's N-th entry from the right (what the
    outermost trusted proxy saw); a spoofed entry further left, junk, or too few entries are not taken."""
    from indexer.errors import ConfigError

    behind_one = make_app(replace(service, trusted_proxies=1)).test_client()
    behind_two = make_app(replace(service, trusted_proxies=2)).test_client()
    direct = make_app(service).test_client()
    asked = [
        (behind_one, "203.0.113.9, 198.51.100.7"),  # a client-supplied first entry, then what nginx saw
        (behind_two, "203.0.113.9, 198.51.100.7, 10.0.0.2"),
        (behind_one, "not-an-address"),
        (behind_two, "198.51.100.7"),  # fewer entries than proxies
        (direct, "198.51.100.7"),  # no proxies trusted: the header is ignored
        (behind_one, '2001:db8::1'),
    ]
    with caplog.at_level(logging.INFO, logger="loupe.access"):
        for client, forwarded in asked:
            client.get("/api/health", headers={"X-Forwarded-For": forwarded})
    clients = [r.getMessage().split(" ", 1)[0] for r in caplog.records if r.name == "loupe.access"]
    assert clients == ["198.51.100.7", "198.51.100.7", "127.0.0.1", "127.0.0.1", "127.0.0.1", "2001:db8::1"]
    assert ServiceSettings.from_env({**indexed_env, "LOUPE_TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    for bad in ("-1", "x", "1.5", "9"):
        with pytest.raises(ConfigError, match="LOUPE_TRUSTED_PROXIES"):
            ServiceSettings.from_env({**indexed_env, "LOUPE_TRUSTED_PROXIES": bad})


# -- the command line -----------------------------------------------------------------------------
def usage_error(args: list[str], env: dict, capsys) -> str:
    """`loupe ARGS` must stop with a usage error (exit 2); returns what it printed on stderr."""
    from searchapp.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args, environ=env)
    assert exit_.value.code == 2, args
    return capsys.readouterr().err


def test_version_and_verbosity_anywhere(indexed_env, capsys):
    from searchapp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("loupe ")
    for args in (["-v", "status"], ["status", "-v"], ["-q", "status", "--json"], ["status", "--json", "--quiet"]):
        code, _, _ = run_cli(args, indexed_env)
        assert code == 0, args
    assert "not allowed with" in usage_error(["status", "-v", "-q"], indexed_env, capsys)
    assert "cannot be used together" in usage_error(["-v", "status", "-q"], indexed_env, capsys)


def test_every_option_has_help_with_its_default():
    from searchapp.cli import HelpFormatter, _subparsers, build_parser

    parser = build_parser()
    for sub in (parser, *_subparsers(parser)):
        formatter = HelpFormatter(sub.prog)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = formatter._get_help_string(action)
            assert text, (sub.prog, action.dest)
            if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                assert "default" in text.lower(), (sub.prog, action.option_strings)
    assert "Exit status" in parser.format_help()


def test_k_and_offset_above_their_caps_are_errors(indexed_env, capsys):
    for args in (["search", "a cat", "-k", "201"], ["search", "a cat", "-k", "0"],
                 ["search", "a cat", "--offset", "10001"]):
        assert "must be from" in usage_error(args, indexed_env, capsys), args
    assert len(run_json(["search", "a cat", "-k", "200"], indexed_env)["results"]) == 8


def test_status_failures_lists_every_failed_file(indexed_env):
    status = run_json(["status"], indexed_env)
    assert status["model"]["semantic"] is False and status["images"]["failed"] == 1
    listed = run_json(["status", "--failures"], indexed_env)
    assert listed["failed"] == 1 and listed["failures"][0]["path"].endswith("broken.jpg")
    assert listed["failures"][0]["error"]
    code, out, _ = run_cli(["status", "--failures"], indexed_env)
    assert code == 0 and "broken.jpg: " in out and "1 files failed" in out


def test_remove_takes_paths_and_id_n_with_dry_run(env, photo_arrays, tmp_path, monkeypatch):
    from helpers import assert_index_matches_catalog

    year = tmp_path / "2019"  # a folder named like a number
    write_photos(year, dict(list(photo_arrays.items())[:3]))
    write_photos(tmp_path / "other", dict(list(photo_arrays.items())[3:5]))
    run_json(["index", str(tmp_path / "2019"), str(tmp_path / "other"), "--no-progress"], env)
    monkeypatch.chdir(tmp_path)
    dry = run_json(["remove", "2019", "--dry-run"], env)  # an existing path is a path
    assert dry["dry_run"] is True and dry["would_remove"] == 3 and dry["removed"] == 0
    assert all("/2019/" in path for path in dry["paths"])
    code, out, _ = run_cli(["remove", "2019", "--dry-run"], env)
    assert code == 0 and out.count("would remove: id:") == 3 and "nothing was changed" in out
    assert run_json(["status"], env)["images"]["indexed"] == 5
    some_id = dry["images"][0]["id"]
    code, _, err = run_cli(["remove", "77"], env)  # a bare number that is no path: not an id any more
    assert code == 1 and "write id:77" in err and err.count("\n") == 1
    assert run_json(["remove", f"id:{some_id}"], env)["removed"] == 1
    assert run_json(["remove", "2019"], env)["removed"] == 2
    code, _, err = run_cli(["remove", "id:x"], env)
    assert code == 1 and "id:N" in err
    assert len(assert_index_matches_catalog(Settings.from_env(env))) == 2


def test_server_jobs_decode_on_bounded_threads():
    from searchapp.indexing_jobs import job_decode_threads

    from indexer.reader import choose_decoders

    assert job_decode_threads(cores=2, slots=4) == 2
    assert job_decode_threads(cores=16, slots=4) == 3  # one decode slot stays free for uploads
    assert job_decode_threads(cores=16, slots=1) == 1
    assert choose_decoders(100, 32, 0, "cuda", 8, threads=3) == (0, 3)  # never processes in a server
    assert choose_decoders(100, 32, 0, "cpu", 8) == (0, 1)  # the CLI's --workers 0 is unchanged
