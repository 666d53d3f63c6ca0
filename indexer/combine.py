"""Combined queries: search text with weighted and negative terms, alone or with a picture.

`beach 2:sunset -people -0.5:cars` means "beach, twice as much sunset, no people, a little
less cars". Each term is embedded on its own; the query vector is the weighted sum of the
terms' unit vectors (and of the picture's, weight `IMAGE_WEIGHT`), negatives subtracted, then
re-normalised to unit length (rclip's idea). Re-normalising leaves the ranking unchanged (the
index ranks by inner product) but keeps every score a cosine in [-1, 1], so `min_score` and
the scores shown mean what they mean for a plain search.

The grammar (docs/queries.md says it for users):

- The text is split into words at blanks; a double-quoted span ("...", closed before the end)
  is part of one word with its blanks, and nothing inside it is an operator.
- A word *opens a term* when it starts with a prefix and a term follows it: a sign (`+`, `-`),
  a weight (`2:`, `0.5:`, `.5:`; 0 < weight <= MAX_WEIGHT), or both (`-0.5:`). "A term
  follows" means the next character is a letter or a double quote; a sign may also stand
  alone as a word, and then the next word (a letter, a quote or a weight first) starts the
  term (`cat - dog`, `cat - 2:dog`). Any other word, however it looks (`t-shirt`, `-5`,
  `10:30`, `C++`, `--`, a sign at the end), is plain text of the current term.
- A term runs from its prefix to the next word that opens a term; the first term needs no
  prefix. A term's text is the source text between those points (inner blanks kept); a term
  that is one whole quoted span loses its quotes, other quotes stay as typed.
- Errors (`QuerySyntaxError`): an empty term (`-""`), a weight out of bounds (`0:a`), more
  than MAX_TERMS terms, no positive term (a picture counts as one), terms that cancel out
  (`a -a`, found when the vectors are summed).

A text without prefixes and without a wholly quoted term is *plain*: one term, its text the
text as given, weight 1; `query_vector` then returns the model's vector for it unchanged, so a
plain search is exactly what it was before combined queries existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .errors import LoupeError

if TYPE_CHECKING:
    from .library import Library, SearchPage
    from .query import SearchQuery

MAX_TERMS = 16  # terms one query may hold (each is one text for the model)
MAX_WEIGHT = 10.0  # the largest weight a term may have (absolute value)
IMAGE_WEIGHT = 1.0  # the picture's weight in a picture-plus-words query
CANCELLED = 1e-6  # a weighted sum shorter than this means the terms cancelled out
BLANKS = " \t\n\r\f\v"
_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+):")
COMBINED_NOTE = ("a combined query (words with a picture) looks for similar pictures, not copies: "
                 "no restoration and no verification, every result is labelled similar")


class QuerySyntaxError(LoupeError):
    """A search text whose terms cannot be searched; `str(err)` says why, in one line."""

    code = "bad_query"


@dataclass(frozen=True)
class Term:
    """One term: its text (what the model reads) and its weight (negative: to avoid)."""

    text: str
    weight: float = 1.0

    def as_dict(self) -> dict:
        return {"text": self.text, "weight": self.weight}


@dataclass(frozen=True)
class TermQuery:
    """A parsed search text: its terms in the order written. `plain`: the text had no syntax
    (one term, weight 1, its text the text as given)."""

    terms: tuple[Term, ...]
    plain: bool = False

    def as_dict(self, image: bool = False) -> dict:
        """The parsed terms as JSON (`combined` in responses); with a picture, its weight too."""
        body: dict = {"terms": [term.as_dict() for term in self.terms]}
        if image:
            body["image_weight"] = IMAGE_WEIGHT
        return body

    def describe(self) -> str:
        """The terms in one line, e.g. `+1 beach, +2 sunset, -1 people`."""
        return ", ".join(f"{t.weight:+g} {t.text}" for t in self.terms)


@dataclass(frozen=True)
class _Word:
    start: int
    end: int


def _words(text: str) -> list[_Word]:
    """The words of `text` with their spans; a closed double-quoted span stays in one word."""
    words, i, n = [], 0, len(text)
    while i < n:
        if text[i] in BLANKS:
            i += 1
            continue
        start = i
        while i < n and text[i] not in BLANKS:
            close = text.find('"', i + 1) if text[i] == '"' else -1
            i = close + 1 if close != -1 else i + 1
        words.append(_Word(start, i))
    return words


def _starts_term(text: str, at: int, end: int) -> bool:
    """Whether a term can start at `at` (before `end`): a letter or a double quote."""
    return at < end and (text[at].isalpha() or text[at] == '"')


def _prefix(text: str, word: _Word) -> tuple[float, float | None, int] | None:
    """The prefix `word` starts with: (sign, weight or None, where the term's text starts), the
    text's start being word.end for a lone sign; None when the word opens no term."""
    at, sign = word.start, 1.0
    if text[at] in "+-":
        sign = -1.0 if text[at] == "-" else 1.0
        at += 1
        if at == word.end:
            return sign, None, at
    found = _WEIGHT.match(text, at, word.end)
    weight = float(found.group(1)) if found else None
    at = found.end() if found else at
    if at == word.start or not _starts_term(text, at, word.end):
        return None
    return sign, weight, at


def _opening(text: str, words: list[_Word], i: int) -> tuple[float, float | None, int, int] | None:
    """How word `i` opens a term: (sign, weight or None, where the term's text starts, the index
    of the term's first word after the prefix's); None when it continues the current term. A
    lone sign opens one only when the next word starts with a letter, a quote or a weight."""
    found = _prefix(text, words[i])
    if found is None:
        return None
    sign, weight, at = found
    if at < words[i].end:
        return sign, weight, at, i
    if i + 1 == len(words) or text[words[i + 1].start] in "+-":
        return None  # a sign with no term after it is text
    following = _prefix(text, words[i + 1])
    if following is not None:
        return sign, following[1], following[2], i + 1
    if _starts_term(text, words[i + 1].start, words[i + 1].end):
        return sign, None, words[i + 1].start, i + 1
    return None


def _checked_weight(weight: float | None, written: str) -> float:
    if weight is None:
        return 1.0
    if not 0.0 < weight <= MAX_WEIGHT:
        raise QuerySyntaxError(f"the weight in {written!r} must be more than 0 and at most {MAX_WEIGHT:g}")
    return weight


def _unquoted(body: str) -> str:
    """A term that is one whole quoted span, without its quotes; any other text as it is."""
    if len(body) >= 2 and body[0] == '"' and body.find('"', 1) == len(body) - 1:
        return body[1:-1].strip(BLANKS)
    return body


def parse_terms(text: str, image: bool = False) -> TermQuery:
    """The terms of search text `text` (grammar: the module's docstring). `image`: a picture is
    searched with them, so the words may all be negative."""
    stripped = text.strip(BLANKS)
    words = _words(stripped)
    if not words:
        raise QuerySyntaxError("the search text is empty")
    spans: list[list] = []  # each term: [weight, text start, text end, one word?, as written]
    i = 0
    while i < len(words):
        opened = _opening(stripped, words, i)
        if opened is None and spans:
            spans[-1][2], spans[-1][3] = words[i].end, False
            i += 1
            continue
        sign, weight, at, last = opened if opened is not None else (1.0, None, words[i].start, i)
        written = stripped[words[i].start:words[last].end]
        spans.append([sign * _checked_weight(weight, written), at, words[last].end, True, written])
        i = last + 1
    if len(spans) > MAX_TERMS:
        raise QuerySyntaxError(f"a query may have at most {MAX_TERMS} terms, not {len(spans)}")
    terms = []
    for weight, start, end, single, written in spans:
        body = _unquoted(stripped[start:end]) if single else stripped[start:end]
        if not body:
            raise QuerySyntaxError(f"the term {written!r} has no text")
        terms.append(Term(body, weight))
    if not image and not any(term.weight > 0 for term in terms):
        raise QuerySyntaxError("the query has no positive term: say what to look for, not only what to avoid "
                               "(-word subtracts a term)")
    plain = len(terms) == 1 and terms[0].weight == 1.0 and terms[0].text == stripped
    return TermQuery(tuple(terms), plain=plain)


def weighted_sum(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The unit-length weighted sum of unit `vectors` (one per row) as one (1, dim) float32 row;
    terms that cancel out are a QuerySyntaxError."""
    rows = np.asarray(vectors, dtype=np.float32)
    total = (np.asarray(weights, dtype=np.float64)[:, None] * rows.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < CANCELLED:
        raise QuerySyntaxError("the terms cancel each other out: nothing is left to search for")
    return np.ascontiguousarray((total / norm)[None, :], dtype=np.float32)


def query_vector(encode_texts: Callable[[Sequence[str]], np.ndarray], terms: TermQuery,
                 image_vector: np.ndarray | None = None) -> np.ndarray:
    """The query vector of `terms` (and of a picture's unit `image_vector`): one call of
    `encode_texts` for all the terms. A plain text alone gets the model's own vector, unchanged."""
    if image_vector is None and terms.plain:
        return encode_texts([terms.terms[0].text])
    vectors = encode_texts([term.text for term in terms.terms])
    weights = [term.weight for term in terms.terms]
    if image_vector is not None:
        vectors = np.vstack([np.asarray(image_vector, dtype=np.float32).reshape(1, -1), vectors])
        weights = [IMAGE_WEIGHT, *weights]
    return weighted_sum(vectors, weights)


def picture_vector(library: "Library", embedder, data: bytes, limits) -> np.ndarray:
    """The unit vector of the picture in `data` (decoded within `limits`), as image lookups embed it."""
    from .images import decode_image

    decoded = decode_image(data, limits, draft_size=library.draft_size(embedder.image_size))
    return embedder.encode_batch([embedder.prepare(decoded.image)])


def combined_search(library: "Library", embedder, terms: TermQuery, query: "SearchQuery",
                    image_vector: np.ndarray | None = None, started: float | None = None) -> "SearchPage":
    """`query`'s page for `terms` (with a picture's `image_vector`): whole pictures, no
    verification. With a picture, every result is labelled `similar`, `copy_found` is False and
    `verify` says why: a combined query looks for similar pictures, never for copies."""
    from dataclasses import replace

    from .matching import SIMILAR

    vector = query_vector(embedder.encode_texts, terms, image_vector)
    page = library.search(vector, replace(query, regions=False, verify=None), started=started)
    if image_vector is None:
        return page
    results = tuple(replace(result, match=SIMILAR, region=None, verification=None) for result in page.results)
    return replace(page, results=results, copy_found=False, verify={"mode": "off", "note": COMBINED_NOTE})
