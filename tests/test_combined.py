"""Combined queries (#18): the term syntax, the vector arithmetic on the tiny model, and the API
and CLI end to end; a plain text must search exactly as it did before."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from conftest import make_env, write_photo_folder
from helpers import check_schema, run_cli, run_json
from indexer.query import SearchQuery
from indexer.combine import (MAX_TERMS, QuerySyntaxError, Term, TermQuery, parse_terms, query_vector,
                             weighted_sum)


# -- the grammar ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, terms", [
    ("beach 2:sunset -people -0.5:cars", [("beach", 1), ("sunset", 2), ("people", -1), ("cars", -0.5)]),
    ("cat - dog", [("cat", 1), ("dog", -1)]),  # rclip's spaced operators
    ("cat + 2:dog", [("cat", 1), ("dog", 2)]),
    ("+beach", [("beach", 1)]),
    ("beach -people in crowds +sunset", [("beach", 1), ("people in crowds", -1), ("sunset", 1)]),
    ('sunset -"people walking"', [("sunset", 1), ("people walking", -1)]),  # quotes around a whole term go
    ('"-5 degrees"', [("-5 degrees", 1)]),  # quoted: no operator inside
    ("été .5:neige", [("été", 1), ("neige", 0.5)]),
    ("a cat -cat", [("a cat", 1), ("cat", -1)]),
    ("10:beach", [("beach", 10)]),
])
def test_syntax_gives_weighted_terms(text, terms):
    parsed = parse_terms(text)
    assert [(t.text, t.weight) for t in parsed.terms] == terms
    assert not parsed.plain


@pytest.mark.parametrize("text", [
    "a cat sitting", "t-shirt on a chair", "-5 degrees snow", "10:30 sunset", "C++ code", "cat -", "cat --dog",
    '12" vinyl', 'the "best" cat', "a  cat  with   gaps", "2: beach", "1:1 scale model", "rock-n-roll -",
])
def test_text_without_syntax_is_plain_and_unchanged(text):
    parsed = parse_terms(f"  {text}\n")
    assert parsed.plain and parsed.terms == (Term(text, 1.0),)


@pytest.mark.parametrize("text, message", [
    ("-people", "no positive term"), ("- people -cars", "no positive term"),
    ("0:beach", "more than 0 and at most 10"), ("beach -10.5:cars", "more than 0 and at most 10"),
    ('beach -""', "has no text"), ("   ", "empty"),
    (" ".join(f"+w{i}" for i in range(MAX_TERMS + 1)), f"at most {MAX_TERMS} terms"),
])
def test_bad_syntax_is_a_clear_error(text, message):
    with pytest.raises(QuerySyntaxError, match=message):
        parse_terms(text)


def test_with_a_picture_the_words_may_all_be_negative():
    parsed = parse_terms("-people -0.5:cars", image=True)
    assert parsed.as_dict(image=True) == {"terms": [{"text": "people", "weight": -1.0},
                                                    {"text": "cars", "weight": -0.5}], "image_weight": 1.0}


def test_weighted_sum_is_renormalised_and_refuses_cancellation():
    e = np.eye(3, dtype=np.float32)
    got = weighted_sum(e[:2], [2.0, -1.0])
    assert got.shape == (1, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], np.array([2, -1, 0]) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(QuerySyntaxError, match="cancel"):
        weighted_sum(np.stack([e[0], e[0]]), [1.0, -1.0])


# -- the vectors, on the tiny model ---------------------------------------------------------------
def test_vectors_are_the_weighted_sum_of_the_model_vectors(reference, photo_arrays):
    from PIL import Image

    _, embedder = reference  # the service's model (its calls run on the model thread)
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return embedder.encode_texts(texts)

    plain = query_vector(encode, parse_terms("a cat sitting"))
    assert np.array_equal(plain, embedder.encode_texts(["a cat sitting"]))  # bit for bit

    terms = parse_terms("beach 2:sunset -0.5:people")
    calls.clear()
    got = query_vector(encode, terms)
    assert calls == [["beach", "sunset", "people"]]  # one batch for all the terms
    one = {t: embedder.encode_texts([t])[0] for t in ("beach", "sunset", "people")}
    expected = one["beach"] + 2 * one["sunset"] - 0.5 * one["people"]
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert abs(np.linalg.norm(got) - 1) < 1e-6

    picture = embedder.encode_images([Image.fromarray(photo_arrays["rocket"])])
    got = query_vector(embedder.encode_texts, parse_terms("night", image=True), picture)
    expected = picture[0] + embedder.encode_texts(["night"])[0]
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-5)
    with pytest.raises(QuerySyntaxError, match="cancel"):
        query_vector(embedder.encode_texts, parse_terms("a cat -a cat"))
    assert TermQuery((Term("x"),)).as_dict() == {"terms": [{"text": "x", "weight": 1.0}]}


# -- the API and the CLI, on one indexed collection ------------------------------------------------
@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    folder = tmp_path_factory.mktemp("combined")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    run_json(["index", str(photos), "--no-progress"], env)
    return env, photos


@pytest.fixture(scope="module")
def client(collection):
    from indexer.settings import Settings
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    env, _ = collection
    return create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))}).test_client()


@pytest.fixture(scope="module")
def reference(client):
    """The app's own library and model, to compute what each search should find."""
    service = client.application.extensions["loupe"]
    return service.searchable_library(), service.embedder


def expected_ids(library, vector, k=24, exclude=()):
    from indexer.query import SearchQuery

    return [r.id for r in library.search(vector, SearchQuery(k=k, exclude=tuple(exclude))).results]


def test_plain_text_search_is_unchanged(client, reference):
    library, embedder = reference
    body = check_schema(client.get("/api/search", query_string={"q": "a cat on a t-shirt", "k": 24}), "/api/search")
    assert "combined" not in body
    direct = library.search(embedder.encode_texts(["a cat on a t-shirt"]), SearchQuery(k=24))
    assert [(r["id"], r["score"]) for r in body["results"]] == [(r.id, round(r.score, 6)) for r in direct.results]


def test_text_search_with_terms(client, reference):
    library, embedder = reference
    body = check_schema(client.get("/api/search", query_string={"q": "rocket 2:sky -people", "k": 24}), "/api/search")
    assert body["combined"] == {"terms": [{"text": "rocket", "weight": 1.0}, {"text": "sky", "weight": 2.0},
                                          {"text": "people", "weight": -1.0}]}
    vector = query_vector(embedder.encode_texts, parse_terms("rocket 2:sky -people"))
    assert [r["id"] for r in body["results"]] == expected_ids(library, vector)
    assert all("match" not in r for r in body["results"]) and "copy_found" not in body


@pytest.mark.parametrize("q, message", [
    ("-people", "no positive term"), ("0:beach", "weight"), ("a cat -a cat", "cancel"),
])
def test_bad_syntax_is_a_400_naming_q(client, q, message):
    response = client.get("/api/search", query_string={"q": q})
    body = check_schema(response, "/api/search")
    assert response.status_code == 400 and body["error"] == "bad_parameter"
    assert body["message"].startswith("q: ") and message in body["message"]


def test_upload_with_words_is_a_combined_similar_search(client, reference, collection, photo_arrays):
    from PIL import Image

    library, embedder = reference
    _, photos = collection
    original = next(photos.rglob("rocket-0.*"))
    form = {"image": (io.BytesIO(original.read_bytes()), original.name), "q": "at night -0.5:people"}
    response = client.post("/api/search/image?k=24", data=form, content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert body["combined"]["image_weight"] == 1.0
    assert [t["text"] for t in body["combined"]["terms"]] == ["at night", "people"]
    assert body["copy_found"] is False and body["verify"]["mode"] == "off"
    assert body["restoration"]["applied"] == [] and "not copies" in body["restoration"]["note"]
    assert {r["match"] for r in body["results"]} == {"similar"}
    assert all(r["verification"] is None and r["region"] is None for r in body["results"])
    with Image.open(original) as img:
        picture = embedder.encode_images([img.convert("RGB")])
    vector = query_vector(embedder.encode_texts, parse_terms("at night -0.5:people", image=True), picture)
    assert [r["id"] for r in body["results"]] == expected_ids(library, vector)

    alone = client.post("/api/search/image?k=3", data={"image": (io.BytesIO(original.read_bytes()), original.name)},
                        content_type="multipart/form-data").get_json()
    assert alone["copy_found"] is True and "combined" not in alone  # without words: the copy check as before


def test_more_like_this_with_words(client, reference):
    library, embedder = reference
    response = client.post("/api/search/image?k=24", json={"image_id": 1, "q": "-2:rocket"})
    body = check_schema(response, "/api/search/image", "post")
    assert 1 not in [r["id"] for r in body["results"]] and body["combined"]["terms"] == [
        {"text": "rocket", "weight": -2.0}]
    vector = query_vector(embedder.encode_texts, parse_terms("-2:rocket", image=True), library.vector_of(1))
    assert [r["id"] for r in body["results"]] == expected_ids(library, vector, k=23, exclude=(1,))


@pytest.mark.parametrize("request_, name", [
    ({"json": {"image_id": 1, "q": "night"}, "query_string": {"restore": "blur"}}, "restore=blur"),
    ({"json": {"image_id": 1, "q": "night"}, "query_string": {"verify": "on"}}, "verify=on"),
    ({"json": {"image_id": 1, "q": "  "}}, "q is empty"),
    ({"json": {"image_id": 1, "q": 5}}, "q must be a string"),
    ({"json": {"image_id": 1, "q": "0:night"}}, "q: the weight"),
    ({"json": {"q": "night"}}, "image_id"),
])
def test_bad_combined_image_requests_are_400s(client, request_, name):
    response = client.post("/api/search/image", **request_)
    body = check_schema(response, "/api/search/image", "post")
    assert response.status_code == 400 and name in body["message"]


def test_cli_combines_text_syntax_and_a_picture(collection):
    env, photos = collection
    original = next(photos.rglob("rocket-0.*"))
    both = run_json(["search", "night -people", "--image", str(original), "-k", "5"], env)
    assert both["combined"] == {"terms": [{"text": "night", "weight": 1.0}, {"text": "people", "weight": -1.0}],
                                "image_weight": 1.0}
    assert len(both["results"]) == 5 and {r["match"] for r in both["results"]} == {"similar"}
    words = run_json(["search", "rocket 2:sky -people", "-k", "24"], env)
    assert [t["weight"] for t in words["combined"]["terms"]] == [1.0, 2.0, -1.0]
    plain = run_json(["search", "a cat on a t-shirt", "-k", "24"], env)
    assert "combined" not in plain
    code, out, _ = run_cli(["search", "night", "--image", str(original), "-k", "2"], env)
    assert code == 0 and out.splitlines()[0] == "query: +1 night + the picture (+1)"
    for args, message in ((["search", "-people -cars"], "no positive term"), (["search", "--", "-people"], "no positive"),
                          (["search", "night", "--image", str(original), "--verify", "on"], "--verify on"),
                          (["search", "night", "--image", str(original), "--restore", "blur"], "--restore blur")):
        code, out, err = run_cli(args, env)
        assert code == 1 and out == "" and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_cli_plain_text_matches_the_api(collection, client):
    env, _ = collection
    cli = run_json(["search", "a cat on a t-shirt", "-k", "24"], env)
    api = client.get("/api/search", query_string={"q": "a cat on a t-shirt", "k": 24}).get_json()
    assert [r["id"] for r in cli["results"]] == [r["id"] for r in api["results"]]
    assert json.dumps(cli["results"][0]["score"]) == json.dumps(api["results"][0]["score"])
