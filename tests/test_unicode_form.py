"""NFC working copies of passages and citations mapped back to the original text (no model)."""

from __future__ import annotations

import random
import unicodedata

import regex

from nest_integrations.citations import Citation
from nest_integrations.config import NestConfig
from nest_integrations.passages.types import Passage, ScoredPassage
from nest_integrations.sources import select_sources
from nest_integrations.unicode_form import nfc_copy, restore


def _citation(copy: Passage, start: int, end: int) -> Citation:
    return Citation(
        output_start=0,
        output_end=end - start,
        quote=copy.text[start:end],
        passage_id=copy.id,
        passage_start=start,
        passage_end=end,
        score=1.0,
    )


def test_a_passage_in_nfc_needs_no_copy() -> None:
    assert nfc_copy(Passage(id="p", text="Zoë Brontë in Liège. 한국어 👍🏽", title="Zoë")) is None


def test_citations_of_an_nfc_copy_map_back_to_the_original_text_and_document() -> None:
    text = unicodedata.normalize("NFD", "Zoë Brontë-Müller studied in Liège. She lives in Besançon.")
    original = Passage(
        id="p", text=text, title=unicodedata.normalize("NFD", "Zoë"), document_id="d", start=7, end=7 + len(text)
    )
    found = nfc_copy(original)
    assert found is not None
    copy, offsets = found
    assert copy.text == unicodedata.normalize("NFC", text) and copy.title == "Zoë" and copy.start is None
    at = copy.text.index("Liège")
    c = restore(_citation(copy, at, at + len("Liège. She lives")), original, offsets)
    assert c.quote == text[c.passage_start : c.passage_end] == unicodedata.normalize("NFD", "Liège. She lives")
    assert (c.document_start, c.document_end) == (7 + c.passage_start, 7 + c.passage_end)
    assert c.title == original.title


def test_every_cluster_range_maps_back_to_the_same_text_on_random_decomposed_strings() -> None:
    rng = random.Random(0)
    alphabet = ["a", "e", "o", " ", ".", "\u0301", "\u0308", "\u0327", "\u1100", "\u1161", "\u11a8", "👍", "🏽", "x"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        found = nfc_copy(Passage(id="p", text=text))
        if found is None:
            assert unicodedata.is_normalized("NFC", text)
            continue
        copy, offsets = found
        bounds = [0] + [m.end() for m in regex.finditer(r"\X", copy.text)]
        for _ in range(10):
            i, j = sorted(rng.sample(bounds, 2)) if len(bounds) > 1 else (0, 0)
            c = restore(_citation(copy, i, j), Passage(id="p", text=text), offsets)
            assert c.quote == text[c.passage_start : c.passage_end]
            assert unicodedata.normalize("NFC", c.quote) == copy.text[i:j], (text, i, j)


def test_source_selection_searches_the_nfc_copy_and_treats_both_forms_as_one_text() -> None:
    nfc = "José Martínez Peña was born in Bogotá in 1948."
    nfd = unicodedata.normalize("NFD", nfc)
    given = [ScoredPassage(passage=Passage(id="a", text=nfd)), ScoredPassage(passage=Passage(id="b", text=nfc))]
    config = NestConfig(min_source_coverage=0.0, min_passage_relevance=0.0)
    selection = select_sources("Who is José Martínez Peña?", given, config)
    assert [s.passage.text for s in selection.searched] == [nfc]
    assert [p.id for p in selection.duplicates[0]] == ["b"]
    c = selection.to_source(_citation(selection.searched[0].passage, 0, 4))
    assert (c.passage_id, c.quote) == ("a", nfd[: c.passage_end]) and unicodedata.normalize("NFC", c.quote) == "José"
