"""Incremental text at the end of an output: a character cut by the token limit is dropped, not U+FFFD.

Token ids are built with the embedded model's tokenizer alone (no model is loaded).
"""

from __future__ import annotations

import codecs

import numpy as np
import pytest
import torch
from citation_checks import assert_citations_exact

from nest_integrations import default_corpus
from nest_integrations.citations import NestResult, Provenance
from nest_integrations.claims import MIN_CLAIM_WORDS
from nest_integrations.lm import load_tokenizer
from nest_integrations.passages.types import Passage, ScoredPassage
from nest_integrations.streaming import AnswerAssembler
from nest_integrations.text_stream import IncrementalDetokenizer, token_bytes, word_count
from nest_integrations.token_index import EncodedPassage, encoded_string

# Characters of several byte tokens each in SmolLM2's byte-level BPE ("😀": 'ðŁ' 'ĺ' 'Ģ').
SPLIT_CHARACTERS = "The mascot😀 of the reactor was drawn by 中村 in 1987 (𝄞)."


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def expected_text(tokenizer, ids: list[int]) -> str:
    """The full decode of ``ids``, less the U+FFFD of a character the ids end inside."""
    full = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    utf8.decode(b"".join(token_bytes(tokenizer)[i] for i in ids))
    return full[:-1] if utf8.getstate()[0] else full  # a cut character decodes to one U+FFFD


def cuts_inside_a_character(tokenizer, ids: list[int]) -> list[int]:
    """Every n such that ``ids[:n]`` ends inside a multi-byte character."""
    return [n for n in range(1, len(ids)) if expected_text(tokenizer, ids[:n]) != tokenizer.decode(ids[:n])]


@pytest.mark.parametrize("byte_table", [True, False])
def test_a_character_cut_by_the_token_limit_is_dropped_not_shown_as_replacement_char(tokenizer, byte_table) -> None:
    ids = tokenizer(SPLIT_CHARACTERS, add_special_tokens=False)["input_ids"]
    cuts = cuts_inside_a_character(tokenizer, ids)
    assert len(cuts) >= 4  # inside the emoji, the CJK char and the clef
    for n in cuts:
        detok = IncrementalDetokenizer(tokenizer)
        if not byte_table:
            detok._bytes = None  # the path for tokenizers that are not byte-level BPE
        for start in range(0, n, 2):
            detok.put(ids[start : min(start + 2, n)])
        detok.flush()
        text = str(detok.text)
        assert not text.endswith("\ufffd"), (n, text)
        assert text == expected_text(tokenizer, ids[:n])
        assert detok.committed == n and detok.dropped >= 1
        assert detok.starts[-1] == detok.ends[-1] == len(text)  # the cut tokens hold no text


def test_an_output_that_ends_on_a_whole_character_drops_nothing(tokenizer) -> None:
    ids = tokenizer(SPLIT_CHARACTERS, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    detok.put(ids)
    detok.flush()
    assert str(detok.text) == SPLIT_CHARACTERS and detok.dropped == 0


def _encoded(tokenizer, passage: Passage) -> EncodedPassage:
    """The token index's view of ``passage`` without its keys (citations need only tokens and char spans)."""
    text, text_offset = encoded_string(passage)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return EncodedPassage(
        token_ids=torch.tensor(enc["input_ids"], dtype=torch.long),
        char_spans=np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2),
        text_offset=text_offset,
        first_key=0,
        keys=torch.zeros((0, 1)),
    )


@pytest.mark.parametrize("byte_table", [True, False])
def test_citations_stay_exact_when_a_copied_answer_is_cut_inside_a_character(tokenizer, byte_table) -> None:
    passage = Passage(id="p0", text=SPLIT_CHARACTERS, document_id="zorblax", start=0, end=len(SPLIT_CHARACTERS))
    encoded = _encoded(tokenizer, passage)
    copied = encoded.token_ids.tolist()
    cuts = cuts_inside_a_character(tokenizer, copied)
    assert cuts
    for n in cuts:
        answer = AnswerAssembler(tokenizer, set(), [], [ScoredPassage(passage=passage)], [encoded])
        if not byte_table:
            answer.detok._bytes = None
        provenance = [Provenance(passage=0, position=i, confidence=0.9) for i in range(n)]
        streamed = ""
        for start in range(0, n, 3):
            chunk = answer.put(copied[start : min(start + 3, n)], provenance[start : min(start + 3, n)])
            streamed += chunk.text if chunk is not None else ""
        text, tokens, _ = answer.finish()
        result = NestResult(text=text, citations=answer.claims.citations, passages=[ScoredPassage(passage=passage)])
        streamed += answer.last_chunk(text, result).text
        assert not text.endswith("\ufffd") and streamed == text, (n, text)
        assert text == expected_text(tokenizer, copied[:n]) and len(tokens) == n  # the token count keeps them
        assert_citations_exact(result, {"zorblax": SPLIT_CHARACTERS})
        if word_count(text) >= MIN_CLAIM_WORDS:  # the copied words before the cut character are still cited
            assert result.citations and result.citations[0].output_start == 0, (n, text)


@pytest.mark.parametrize("step", [1, 5])
def test_generate_builds_at_the_end_the_citations_streaming_builds_as_it_goes(tokenizer, step) -> None:
    # generate (stream=False) gives the claims the finished text once; streaming, token by token.
    source = " ".join(d.text for d in default_corpus()[:2])[:6000]
    passage = Passage(id="p0", text=source, document_id="doc", start=0, end=len(source))
    encoded = _encoded(tokenizer, passage)
    ids = encoded.token_ids.tolist()[:600]
    the, stop = tokenizer.convert_tokens_to_ids("Ġthe"), tokenizer.convert_tokens_to_ids(".")
    # Copied runs of 20 tokens with 6 generated tokens between them (not the source's): "." and
    # five "the", so that no sentence holds two runs (that would be spliced: cited by neither side).
    provenance = [Provenance(0, i, 0.9) if i % 26 < 20 else None for i in range(len(ids))]
    ids = [t if i % 26 < 20 else stop if i % 26 == 20 else the for i, t in enumerate(ids)]
    results, scored = [], [ScoredPassage(passage=passage)]
    for stream in (True, False):
        answer = AnswerAssembler(tokenizer, set(), ["\n\n\n"], scored, [encoded], stream=stream)
        for start in range(0, len(ids), step):
            answer.put(ids[start : start + step], provenance[start : start + step])
        text, _, _ = answer.finish()
        results.append((text, answer.claims.citations, answer.claims.fragments))
    assert results[0] == results[1]
    assert len(results[0][1]) >= 15  # most runs are cited
    result = NestResult(text=results[1][0], citations=results[1][1], passages=scored)
    assert_citations_exact(result, {"doc": source})


def test_random_token_streams_decode_as_the_tokenizer_does_in_any_step_sizes(tokenizer) -> None:
    # Byte tokens that start, continue or break multi-byte characters (invalid sequences
    # included) mixed with whole-word tokens, fed in steps of 1-4: the byte-table path (with its
    # known-text shortcut for tokens of whole characters) gives the tokenizer's text.
    import random

    table = token_bytes(tokenizer)
    assert table is not None
    partial = [i for i, b in enumerate(table) if b and not _whole_utf8(b)]
    words = tokenizer(SPLIT_CHARACTERS + " Nero's pre-war café", add_special_tokens=False)["input_ids"]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(partial) if rng.random() < 0.4 else rng.choice(words) for _ in range(rng.randrange(1, 30))]
        detok = IncrementalDetokenizer(tokenizer)
        at, appended = 0, []
        while at < len(ids):
            step = rng.randrange(1, 5)
            detok.put(ids[at : at + step])
            appended.append(detok.appended)
            at += step
        text_before_flush = "".join(appended)
        detok.flush()
        text, starts, ends = str(detok.text), detok.starts, detok.ends
        assert text == expected_text(tokenizer, ids) and text.startswith(text_before_flush), ids
        assert detok.committed == len(ids) and starts == sorted(starts) and ends == sorted(ends)
        assert all(0 <= s <= e <= len(text) for s, e in zip(starts, ends, strict=True))


def _whole_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
