"""The `loupe` command line: exit codes, one-line errors, status and JSON output."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from helpers import assert_index_matches_catalog, run_cli, run_json
from indexer.settings import Settings


def _one_line_error(err: str) -> str:
    assert err.startswith("loupe: error: ") and err.count("\n") == 1, err
    return err


def test_missing_path_fails_with_one_line(env, tmp_path):
    code, _, err = run_cli(["index", str(tmp_path / "nope")], env)
    assert code == 1 and "no such file or folder" in _one_line_error(err)


def test_folder_without_images_fails(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    code, _, err = run_cli(["index", str(empty), "--no-progress"], env)
    assert code == 1 and "no image files" in _one_line_error(err)


def test_search_before_indexing_says_what_to_do(env):
    code, _, err = run_cli(["search", "a cat"], env)
    assert code == 1 and "loupe index" in _one_line_error(err)


def test_search_needs_text_or_image(env, photos, index_photos):
    index_photos(env, photos)
    for args in (["search"], ["search", "a cat", "--image", "x.jpg"], ["search", "  "]):
        code, _, err = run_cli(args, env)
        assert code == 1, args
        _one_line_error(err)


def test_search_with_unreadable_image_fails_cleanly(env, photos, tmp_path, index_photos):
    index_photos(env, photos)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    code, _, err = run_cli(["search", "--image", str(broken)], env)
    assert code == 1 and "image" in _one_line_error(err)
    code, _, err = run_cli(["search", "--image", str(tmp_path / "absent.jpg")], env)
    assert code == 1
    _one_line_error(err)


def test_human_search_output_lists_paths(env, photos, index_photos):
    index_photos(env, photos)
    target = next(photos.rglob("chelsea-0.*"))
    code, out, _ = run_cli(["search", "--image", str(target), "-k", "2"], env)
    assert code == 0
    assert "not semantic" in out  # untrained weights are announced
    first = [line for line in out.splitlines() if line.strip().startswith("1 ")][0]
    assert str(target) in first


def test_unreachable_database_fails_with_one_line(env, photos):
    broken = {**env, "LOUPE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/nothing"}
    for args in (["status"], ["index", str(photos)], ["db", "upgrade"]):
        code, _, err = run_cli(args, broken)
        assert code == 1 and "cannot use the database" in _one_line_error(err), args
        assert "127.0.0.1:1" in err


def test_bad_settings_fail_with_one_line(env, photos):
    cases = [
        ({"LOUPE_DEVICE": "tpu"}, "LOUPE_DEVICE"),
        ({"LOUPE_MODEL": "No-Such-Model"}, "unknown model architecture"),
        ({"LOUPE_PRETRAINED": "/no/such/checkpoint.pt"}, "not an existing checkpoint"),
        ({"LOUPE_MODEL": "ViT-B-32", "LOUPE_PRETRAINED": "made-up-tag"}, "no pretrained tag"),
        ({"LOUPE_DATABASE_URL": "notadatabase://x"}, "database"),
    ]
    for overrides, needle in cases:
        code, _, err = run_cli(["index", str(photos), "--no-progress"], {**env, **overrides})
        assert code == 1 and needle in _one_line_error(err), (overrides, err)


def test_unavailable_weights_name_the_remedies(env, photos, monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights: no network")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    code, _, err = run_cli(["index", str(photos)], {**env, "LOUPE_MODEL": "ViT-B-32", "LOUPE_PRETRAINED": "openai"})
    _one_line_error(err)
    assert code == 1 and "LOUPE_PRETRAINED=none" in err and "checkpoint" in err


def test_checkpoint_file_weights_are_identified_by_hash(env, photos, embedder, tmp_path):
    import torch

    checkpoint = tmp_path / "weights.pt"
    torch.save(embedder.model.state_dict(), checkpoint)
    file_env = {**env, "LOUPE_PRETRAINED": str(checkpoint)}
    run_json(["index", str(photos), "--no-progress"], file_env)
    model = run_json(["status"], file_env)["model"]["index"]
    assert model["pretrained"] == "file" and len(model["checkpoint_sha256"]) == 64
    assert model["semantic"] == "unknown"  # Loupe cannot tell whether a file's weights are trained
    code, out, _ = run_cli(["status"], file_env)
    assert code == 0 and "cannot tell whether they are trained" in out
    code, out, _ = run_cli(["search", "a cat", "-k", "1"], file_env)
    assert code == 0 and "cannot tell whether they are trained" in out and "not semantic" not in out


def test_status_reports_counts_model_index_device_database(env, photos, index_photos):
    index_photos(env, photos)
    status = run_json(["status"], env)
    assert status["images"] == {"indexed": 24, "duplicate": 0, "failed": 0, "missing": 0}
    assert status["model"]["index"]["architecture"] == env["LOUPE_MODEL"]
    assert status["model"]["index"]["semantic"] is False
    assert status["index"]["type"] == "Flat" and status["index"]["vectors"] == 24
    assert status["device"] == "cpu"
    assert status["database"].startswith("sqlite:///")
    assert status["last_job"]["state"] == "finished"
    code, out, _ = run_cli(["status"], env)
    assert code == 0 and "24 indexed" in out and "Flat" in out
    assert "results are not semantic" in out


def test_status_names_the_faiss_build(env, photos, index_photos):
    import faiss

    index_photos(env, photos)
    build = run_json(["status"], env)["index"]["faiss"]
    assert build == {"version": faiss.__version__, "gpu_build": False, "gpus": 0}  # faiss-cpu here
    code, out, _ = run_cli(["status"], env)
    assert code == 0 and f"faiss:    {faiss.__version__}, CPU-only build, GPUs visible: 0" in out


def test_database_password_is_not_printed(env):
    secret = {**env, "LOUPE_DATABASE_URL": "postgresql+psycopg://user:s3cret@127.0.0.1:1/db"}
    code, out, err = run_cli(["status"], secret)
    assert code == 1 and "s3cret" not in out + err


def test_second_writer_is_refused_while_one_holds_the_lock(env, photos):
    settings = Settings.from_env(env)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from indexer.lock import write_lock\n"
         "with write_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)",
         str(settings.home)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(["index", str(photos), "--no-progress"], env)
        assert code == 1 and "another Loupe process" in _one_line_error(err)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert run_json(["index", str(photos), "--no-progress"], env)["added"] == 24
    assert len(assert_index_matches_catalog(settings)) == 24


def test_db_upgrade_is_idempotent(env):
    from alembic.script import ScriptDirectory

    from indexer.database import alembic_config, make_engine

    head = ScriptDirectory.from_config(alembic_config(make_engine("sqlite://"))).get_current_head()
    for _ in range(2):
        code, out, _ = run_cli(["db", "upgrade"], env)
        assert code == 0 and f"schema {head}" in out


def test_usage_errors_exit_2(env):
    with pytest.raises(SystemExit) as exc:
        run_cli(["index", "--batch-size", "0", "x"], env)
    assert exc.value.code == 2


def test_indexer_never_imports_flask():
    code = (
        "import sys, pkgutil, importlib, indexer\n"
        "for m in pkgutil.walk_packages(indexer.__path__, 'indexer.'): importlib.import_module(m.name)\n"
        "assert not [m for m in sys.modules if m == 'flask' or m.startswith('flask.') or m.startswith('searchapp')], 'flask imported'\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_help_never_imports_torch():
    code = (
        "import sys\n"
        "from searchapp.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_image_search_prints_the_verified_verdict_and_overlap(env, photos, tmp_path):
    from PIL import Image

    assert run_cli(["index", str(photos), "--no-progress"], env)[0] == 0
    with Image.open(next(photos.rglob("camera-0.*"))) as img:
        picture = img.convert("RGB")
    w, h = picture.size
    crop = tmp_path / "part.png"
    picture.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)).save(crop)  # 25 % of the area
    code, out, err = run_cli(["search", "--image", str(crop), "-k", "3"], env)
    assert code == 0, err
    assert "verdict: a copy is in the collection" in out
    assert "verified: Your picture is 25 % of this photo" in out and "of the query" in out
    code, out, _ = run_cli(["search", "--image", str(crop), "-k", "3", "--verify", "off"], env)
    assert code == 0 and "verified:" not in out
