"""The API keeps the promises of its own OpenAPI document: schemathesis (every check, the
stateful phase included) against `loupe serve` over a small indexed collection, once without
the token (writes must be refused, reads must work) and once with it. Jobs may only index a
temporary folder (`LOUPE_ALLOWED_ROOTS`), so generated paths can never reach anything else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port, start_server

pytestmark = pytest.mark.slow

TOKEN = "conformance-write-token"
# Each run's time budget: examples and coverage run first, then fuzzing and stateful
# sequences repeat until it is spent. Two runs stay within CI's three minutes.
SECONDS_PER_RUN = int(os.environ.get("LOUPE_SCHEMATHESIS_SECONDS", "45"))
# Every check runs; the one relaxation (uploads that are not pictures may get a 400) is in
# this file, with its reason.
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture
def served(env, photos, tiny_model_config, tmp_path, index_photos):
    """`loupe serve` with a write token over the indexed test photographs; jobs over HTTP may
    only index a fresh temporary folder."""
    index_photos(env, photos)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    port = free_port()
    server = start_server({**env, "LOUPE_API_TOKEN": TOKEN, "LOUPE_ALLOWED_ROOTS": str(allowed)},
                          tiny_model_config, port)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def schemathesis(url: str, *options: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run", f"{url}/api/openapi.json",
        # Every check runs by default (schemathesis 4.32); `--checks all` is not given because it
        # would override the one per-phase relaxation in CONFIG.
        "--phases", "examples,coverage,fuzzing,stateful", "--max-time", str(SECONDS_PER_RUN),
        # One worker: with two, hypothesis's source inspection (ast.parse) raced between threads on
        # Python 3.11 ("AST constructor recursion depth mismatch") and failed runs whose every case passed.
        "--seed", "17", "--workers", "1", "--request-timeout", "60", "--no-color", "--warnings", "off",
        *options,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=SECONDS_PER_RUN * 4 + 120)


@pytest.mark.parametrize("token", [False, True], ids=["without-token", "with-token"])
def test_the_api_conforms_to_its_document(served, token):
    options = ("--header", f"Authorization: Bearer {TOKEN}") if token else ()
    result = schemathesis(served, *options)
    artifacts = os.environ.get("LOUPE_ARTIFACTS")
    if artifacts:  # the whole report, for a failure too long to read in the assertion
        os.makedirs(artifacts, exist_ok=True)
        Path(artifacts, f"schemathesis-{'token' if token else 'no-token'}.txt").write_text(result.stdout + result.stderr)
    report = result.stdout[-20000:] + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or "passed" in result.stdout.lower(), report
