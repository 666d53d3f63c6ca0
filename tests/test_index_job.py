"""The bulk indexing job through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import assert_index_matches_catalog, catalog_rows, run_cli, run_json
from indexer.settings import Settings


def test_index_then_search_finds_each_photo_first(any_db_env, photos):
    summary = run_json(["index", str(photos), "--workers", "1", "--batch-size", "5", "--no-progress"], any_db_env)
    assert summary["files_seen"] == 24
    assert summary["added"] == 24 and summary["failed"] == 0 and summary["duplicates"] == 0
    assert set(summary["stages"]) == {"read", "embed", "write"}  # the seconds the job measured per stage
    assert all(seconds > 0 for seconds in summary["stages"].values())
    assert sum(summary["stages"].values()) <= summary["seconds"]
    settings = Settings.from_env(any_db_env)
    indexed = assert_index_matches_catalog(settings)
    assert len(indexed) == 24
    for path in sorted(photos.rglob("*-0.*")):
        page = run_json(["search", "--image", str(path), "-k", "3"], any_db_env)
        first = page["results"][0]
        assert first["path"] == str(path)
        assert first["score"] == pytest.approx(1.0, abs=1e-4)
        assert set(first) >= {"id", "path", "score", "width", "height", "thumb_url", "file_url"}
        assert page["total"] == 24


def test_rerun_embeds_nothing(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    again = run_json(["index", str(photos), "--no-progress"], env)
    assert again["embedded"] == 0 and again["unchanged"] == 24 and again["added"] == 0
    assert_index_matches_catalog(Settings.from_env(env))


def test_changed_file_is_reembedded_under_a_new_id(env, photos, photo_arrays):
    run_json(["index", str(photos), "--no-progress"], env)
    settings = Settings.from_env(env)
    target = next(photos.rglob("astronaut-0.*"))
    old_id = next(r.id for r in catalog_rows(settings) if r.path == str(target))
    Image.fromarray(photo_arrays["astronaut"][::-1]).save(target, format="PNG" if target.suffix == ".png" else "JPEG")
    summary = run_json(["index", str(photos), "--no-progress"], env)
    assert summary["changed"] == 1 and summary["embedded"] == 1 and summary["unchanged"] == 23
    ids = assert_index_matches_catalog(settings)
    new_id = next(r.id for r in catalog_rows(settings) if r.path == str(target))
    assert new_id != old_id and old_id not in ids and new_id in ids
    page = run_json(["search", "--image", str(target), "-k", "1"], env)
    assert page["results"][0]["id"] == new_id


def test_touched_but_identical_file_is_not_reembedded(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    target = next(photos.rglob("coffee-0.*"))
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    summary = run_json(["index", str(photos), "--no-progress"], env)
    assert summary["embedded"] == 0 and summary["unchanged"] == 24


def test_duplicate_content_is_embedded_once(env, photos, tmp_path):
    copies = tmp_path / "copies"
    copies.mkdir()
    original = next(photos.rglob("chelsea-0.*"))
    shutil.copy(original, copies / "cat-copy-1.jpg")
    shutil.copy(original, copies / "cat-copy-2.jpg")
    summary = run_json(["index", str(photos), str(copies), "--no-progress"], env)
    assert summary["added"] == 24 and summary["duplicates"] == 2
    settings = Settings.from_env(env)
    rows = {r.path: r for r in catalog_rows(settings)}
    canonical = rows[str(original)]
    assert rows[str(copies / "cat-copy-1.jpg")].duplicate_of == canonical.id
    assert len(assert_index_matches_catalog(settings)) == 24


def test_removing_the_original_promotes_a_duplicate(env, photos, tmp_path):
    copies = tmp_path / "copies"
    copies.mkdir()
    original = next(photos.rglob("rocket-0.*"))
    shutil.copy(original, copies / "rocket-copy.jpg")
    run_json(["index", str(photos), str(copies), "--no-progress"], env)
    removed = run_json(["remove", str(original)], env)
    assert removed["removed"] == 1
    settings = Settings.from_env(env)
    assert_index_matches_catalog(settings)
    page = run_json(["search", "--image", str(copies / "rocket-copy.jpg"), "-k", "1"], env)
    assert page["results"][0]["path"] == str(copies / "rocket-copy.jpg")
    assert page["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_unreadable_files_are_recorded_and_do_not_stop_the_job(env, photos):
    bad = photos / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("this is not an image")
    jpeg = next(photos.rglob("*.jpg")).read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    Image.new("1", (30000, 30000)).save(bad / "bomb.png")
    summary = run_json(["index", str(photos), "--no-progress"], env)
    assert summary["failed"] == 4 and summary["added"] == 24
    rows = {os.path.basename(r.path): r for r in catalog_rows(Settings.from_env(env)) if r.status == "failed"}
    assert set(rows) == {"empty.jpg", "text.png", "truncated.jpg", "bomb.png"}
    assert "empty" in rows["empty.jpg"].error
    assert "pixel" in rows["bomb.png"].error
    status = run_json(["status"], env)
    assert status["images"]["failed"] == 4
    assert {f["path"] for f in status["failures"]} == {r.path for r in rows.values()}
    # unchanged broken files are not retried; the rest of the index is intact
    again = run_json(["index", str(photos), "--no-progress"], env)
    assert again["embedded"] == 0 and again["failed"] == 0 and again["unchanged"] == 28
    assert len(assert_index_matches_catalog(Settings.from_env(env))) == 24


def test_vanished_files_are_reported_then_removable(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    gone = sorted(photos.rglob("camera-*"))
    for path in gone:
        path.unlink()
    summary = run_json(["index", str(photos), "--no-progress"], env)
    assert summary["missing"] == 3
    code, out, _ = run_cli(["index", str(photos), "--no-progress"], env)
    assert code == 0 and "remove --missing" in out
    assert run_json(["status"], env)["images"]["missing"] == 3
    removed = run_json(["remove", "--missing"], env)
    assert sorted(removed["paths"]) == sorted(map(str, gone))
    assert len(assert_index_matches_catalog(Settings.from_env(env))) == 21


def test_remove_by_id_and_folder(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    settings = Settings.from_env(env)
    some_id = min(r.id for r in catalog_rows(settings))
    assert run_json(["remove", f"id:{some_id}"], env)["removed"] == 1
    assert run_json(["remove", str(photos / "b")], env)["removed"] == 12
    assert len(assert_index_matches_catalog(settings)) == 11
    code, _, err = run_cli(["remove", "id:999999"], env)
    assert code == 1 and "nothing indexed matches id:999999" in err
    assert len(assert_index_matches_catalog(settings)) == 11


def test_text_search_returns_ranked_results(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    page = run_json(["search", "a cat on a chair", "-k", "5"], env)
    scores = [r["score"] for r in page["results"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    second = run_json(["search", "a cat on a chair", "-k", "5", "--offset", "5"], env)
    assert {r["id"] for r in second["results"]}.isdisjoint({r["id"] for r in page["results"]})
    assert second["results"][0]["score"] <= scores[-1]


def test_model_mismatch_is_refused_and_index_kept(env, photos, tmp_path):
    run_json(["index", str(photos), "--no-progress"], env)
    other = tmp_path / "other.pt"
    import torch

    from indexer.embedder import untrained_checkpoint

    state = torch.load(untrained_checkpoint(env["LOUPE_MODEL"], Settings.from_env(env).models_dir))
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, other)
    mismatched = {**env, "LOUPE_PRETRAINED": str(other)}
    for args in (["search", "a cat"], ["index", str(photos), "--no-progress"]):
        code, _, err = run_cli(args, mismatched)
        assert code == 1
        assert err.count("\n") == 1 and "was built with" in err and "LOUPE_PRETRAINED" in err
    assert len(assert_index_matches_catalog(Settings.from_env(env))) == 24


def test_index_spec_switches_to_ivf_when_large(env, tmp_path, monkeypatch, photo_arrays):
    """Past the exact limit the index is rebuilt as IVF from stored vectors, same ids."""
    import indexer.mirror as mirror_module
    from indexer.vectorstore import choose_index_spec

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = photo_arrays["astronaut"][::4, ::4].astype(int)
    for i in range(60):
        noisy = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"n{i}.png")
    monkeypatch.setattr(mirror_module, "choose_index_spec", lambda n, d, **kw: choose_index_spec(n, d, exact_limit=40, **kw))
    run_json(["index", str(folder), "--no-progress"], env)
    status = run_json(["status"], env)
    assert status["index"]["type"].startswith("IVF") and status["index"]["vectors"] == 60
    assert len(assert_index_matches_catalog(Settings.from_env(env))) == 60


@pytest.mark.parametrize("todo, workers, device, threads, expected", [
    (10, None, "cpu", 2, (0, 1)),  # one batch: no pool
    (1000, None, "cpu", 2, (0, 2)),  # CPU: in-process threads, as many as torch uses
    (1000, None, "cpu", 16, (0, 16)),
    (1000, 3, "cpu", 2, (3, 1)),  # an explicit --workers wins
    (1000, 0, "cpu", 2, (0, 1)),
    (1000, None, "cuda", 2, ("default", 1)),  # GPU: processes decode ahead of the model
])
def test_choose_decoders(todo, workers, device, threads, expected):
    from indexer.reader import choose_decoders, default_workers

    want = (default_workers(), 1) if expected[0] == "default" else expected
    assert choose_decoders(todo, 32, workers, device, threads) == want


def test_worker_processes_give_the_same_index_as_threads(env, photos, tmp_path):
    """--workers 2 (DataLoader processes) and the default thread pool embed identically."""
    threaded = run_json(["index", str(photos), "--no-progress", "--batch-size", "4"], env)
    other = {**env, "LOUPE_HOME": str(tmp_path / "other-home")}
    (tmp_path / "other-home").mkdir()
    (tmp_path / "other-home" / "models").symlink_to(Settings.from_env(env).models_dir.resolve())
    forked = run_json(["index", str(photos), "--no-progress", "--batch-size", "4", "--workers", "2"], other)
    assert threaded["added"] == forked["added"] == 24
    target = next(photos.rglob("astronaut-1.*"))
    a = run_json(["search", "--image", str(target), "-k", "5"], env)["results"]
    b = run_json(["search", "--image", str(target), "-k", "5"], other)["results"]
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


def test_mapped_index_files_serve_searches_and_take_writes(env, photos, photo_arrays):
    """LOUPE_INDEX_MMAP=on: processes map the FAISS files; searches match, and a later job
    (whose writes copy the mapping into memory first) still indexes and saves correctly."""
    mapped = {**env, "LOUPE_INDEX_MMAP": "on"}
    assert run_json(["index", str(photos), "--no-progress"], mapped)["added"] == 24
    status = run_json(["status"], mapped)
    assert status["index"]["mapped"] is True and status["regions"]["mapped"] is True
    assert run_json(["status"], env)["index"]["mapped"] is False
    target = next(photos.rglob("coffee-0.*"))
    a = run_json(["search", "--image", str(target), "-k", "5"], mapped)["results"]
    b = run_json(["search", "--image", str(target), "-k", "5"], env)["results"]
    assert [r["id"] for r in a] == [r["id"] for r in b] and a[0]["path"] == str(target)

    Image.fromarray(photo_arrays["rocket"][::-1]).save(photos / "flipped-rocket.png")
    assert run_json(["index", str(photos), "--no-progress"], mapped)["added"] == 1
    assert_index_matches_catalog(Settings.from_env(mapped))
    code, _, err = run_cli(["status"], {**env, "LOUPE_INDEX_MMAP": "sometimes"})
    assert code == 1 and "LOUPE_INDEX_MMAP" in err


def test_stage_clock_counts_a_nested_stage_for_itself_only():
    """The writer asks for embeddings while it writes: write's time leaves embed's out."""
    from indexer.timing import StageClock

    ticks = iter([0.0, 1.0, 4.0, 6.0, 10.0, 10.5, 11.0, 11.25])
    clock = StageClock(now=lambda: next(ticks))
    with clock.stage("write"):  # 0 .. 6, of which 1 .. 4 embedding
        with clock.stage("embed"):
            pass
    batches = list(clock.each("read", ["batch"]))  # 10 .. 10.5 for the batch, 11 .. 11.25 for the end
    assert batches == ["batch"]
    assert clock.seconds == {"read": 0.75, "embed": 3.0, "write": 3.0}
    assert clock.timings == {"read": [0.5], "embed": [3.0], "write": [3.0]}
