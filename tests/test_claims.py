"""Claim-level citations, word/grapheme boundaries and the splice rule, on constructed inputs (no model)."""

from __future__ import annotations

import itertools
import re
import unicodedata

import numpy as np
import torch

from nest_integrations.citations import Provenance, mark_citations
from nest_integrations.claims import _CLAIM_SENTENCE_END, ClaimTracker, snap
from nest_integrations.passages.types import Passage, ScoredPassage
from nest_integrations.sentence_lock import SentenceLock
from nest_integrations.text_stream import StopScanner, joined
from nest_integrations.token_index import EncodedPassage


def _encoded(text: str, pieces: list[str]) -> EncodedPassage:
    """A passage encoded as the given pieces (their concatenation is ``text``), one token each."""
    assert "".join(pieces) == text
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    n = len(pieces)
    return EncodedPassage(
        token_ids=torch.arange(n),
        char_spans=np.asarray(spans, dtype=np.int64),
        text_offset=0,
        first_key=0,
        keys=torch.zeros((max(n - 1, 0), 4)),
    )


def _track(source: str, pieces: list[str], output: list[tuple[str, int | None]]) -> tuple[str, ClaimTracker]:
    """Feed ``output`` (piece, source token position or None for generated) to a tracker over one passage."""
    passage = ScoredPassage(
        passage=Passage(id="p0", text=source, title="T", document_id="doc", start=100, end=100 + len(source))
    )
    tracker = ClaimTracker([passage], [_encoded(source, pieces)])
    text = ""
    for piece, position in output:
        start = len(text)
        text += piece
        prov = None if position is None else Provenance(0, position, 0.9)
        tracker.add(text, prov, start, len(text))
    tracker.finish(text)
    return text, tracker


SOURCE = "Herons was written by Simon Stephens, which was performed in 2001."
PIECES = [
    "Her",
    "ons",
    " was",
    " written",
    " by",
    " Simon",
    " Stephens",
    ",",
    " which",
    " was",
    " performed",
    " in",
    " 2001",
    ".",
]


def _words(start: int, stop: int) -> list[tuple[str, int | None]]:
    """SOURCE's tokens ``start:stop``, copied."""
    return [(PIECES[i], i) for i in range(start, stop)]


def test_contiguous_copies_with_a_matching_generated_gap_merge_into_one_claim() -> None:
    text, tracker = _track(
        SOURCE,
        PIECES,
        [
            ("Her", 0),
            ("ons", 1),
            (" was", 2),
            (" written", None),
            (" by", 4),
            (" Simon", 5),
            (" Stephens", 6),
            (".", None),
        ],
    )
    assert [c.quote for c in tracker.citations] == ["Herons was written by Simon Stephens"]
    c = tracker.citations[0]
    assert text[c.output_start : c.output_end] == SOURCE[c.passage_start : c.passage_end] == c.quote
    assert (c.document_start, c.document_end) == (100 + c.passage_start, 100 + c.passage_end)
    assert tracker.fragments == []


def test_copies_from_non_adjacent_places_are_separate_claims_in_separate_sentences() -> None:
    _, tracker = _track(
        SOURCE,
        PIECES,
        [*_words(0, 4), (".", None), (" It was", None), *_words(10, 13)],
    )
    assert [c.quote for c in tracker.citations] == ["Herons was written", "performed in 2001"]


def test_a_sentence_spliced_from_two_places_cites_neither() -> None:
    """Issue 13's Boulter case: each quote exact, the sentence false. Both copies are kept as
    fragments (attribution counts them), neither is listed; the next sentence is cited again."""
    text, tracker = _track(
        SOURCE,
        PIECES,
        [*_words(0, 3), *_words(10, 14), (" Herons", None), *_words(2, 5)],
    )
    assert text == "Herons was performed in 2001. Herons was written by"
    assert [c.quote for c in tracker.fragments] == ["Herons was", "performed in 2001."]
    assert [c.quote for c in tracker.citations] == ["was written by"]  # generated text is never quoted
    for c in tracker.citations + tracker.fragments:
        assert text[c.output_start : c.output_end] == SOURCE[c.passage_start : c.passage_end] == c.quote


def test_a_claim_over_two_sentences_keeps_the_sentence_that_is_not_spliced() -> None:
    source = "Anna Berg was a painter. She studied in Paris. Lars Berg was a chemist."
    pieces = re.findall(r"\s*\S+", source)
    words = [(w, i) for i, w in enumerate(pieces)]
    # "Anna Berg was a painter. She studied" copied, then "was a chemist." from Lars's sentence.
    output = words[:7] + words[11:15]
    text, tracker = _track(source, pieces, output)
    assert text == "Anna Berg was a painter. She studied was a chemist."
    assert [c.quote for c in tracker.citations] == ["Anna Berg was a painter."]
    assert [c.quote for c in tracker.fragments] == ["She studied", "was a chemist."]


def test_one_word_copy_is_a_fragment_not_a_citation() -> None:
    _, tracker = _track(SOURCE, PIECES, [("The play", None), (" performed", 10), (" at night", None)])
    assert tracker.citations == []
    assert [c.quote for c in tracker.fragments] == ["performed"]


def test_a_quote_grows_into_its_word_when_the_output_agrees_and_shrinks_when_it_does_not() -> None:
    # Generated text before a run is never quoted.
    _, grown = _track(SOURCE, PIECES, [("He", None), ("rons", None), (" was", 2), (" written", 3)])
    assert [c.quote for c in grown.citations] == ["was written"]
    _, tracker = _track(SOURCE, PIECES, [("Her", None), ("ons", 1), (" was", 2), (" written", 3)])
    assert [c.quote for c in tracker.citations] == ["Herons was written"]
    # The output ends inside a source word ("Steph"): the quote stops before it.
    source = "by Simon Stephens."
    _, cut = _track(source, ["by", " Simon", " Steph", "ens", "."], [("by", 0), (" Simon", 1), (" Steph", 2)])
    assert [c.quote for c in cut.citations] == ["by Simon"]


def test_quote_and_marks_never_split_a_grapheme_cluster() -> None:
    source = unicodedata.normalize("NFD", "The old Café Zoë opened in Montréal.")
    i = source.index("e\u0301")
    pieces = ["The", " old", source[len("The old") : i + 1], source[i + 1 :]]  # a token ends between "e" and its accent
    text, tracker = _track(source, pieces, [("The", 0), (" old", 1), (pieces[2], 2), ("!", None)])
    assert text == "The old Cafe!"
    # "Cafe" without its accent is not the source's word: the claim stops before it.
    assert [c.quote for c in tracker.citations] == ["The old"]
    assert not joined(source, tracker.citations[0].passage_end)
    marked = mark_citations("Cafe\u0301 is open", [4])
    assert marked == "Cafe\u0301 [1] is open"
    assert mark_citations("Nero's father", [4]) == "Nero's [1] father"


def test_snap_shrinks_to_a_boundary_of_both_texts() -> None:
    # A break test's case: the answer stopped at "cross-" (its token limit) inside the source's
    # "cross-country". "cross|-" is a boundary of the output, not of the source: snapping there
    # made a quote ending inside a source word, and the whole copy was dropped, listed nowhere.
    out = "Her brother is a cross-"
    src = "Her brother is a cross-country skier."
    o0, o1, s0, s1 = snap(out, src, 0, len(out), 0, len(out))
    assert out[o0:o1] == src[s0:s1] == "Her brother is a"
    assert not joined(out, o1) and not joined(src, s1)
    # The start side alike: the copy begins at "-country" inside the source's "cross-country".
    out2 = "A -country skier."
    o0, o1, s0, s1 = snap(out2, src, 2, len(out2), 22, len(src))
    assert out2[o0:o1] == src[s0:s1] == "skier."


def test_snap_drops_a_quote_that_is_one_partial_word() -> None:
    assert snap("xoulter.", "Boulter is", 1, 7, 1, 7) is None
    assert snap("Boulter is", "Boulter is", 1, 10, 1, 10) == (0, 10, 0, 10)


def test_claim_cut_by_a_stop_string_ends_at_a_word_boundary() -> None:
    source = "He starred in the play Herons at the Royal Court."
    pieces = ["He", " starred", " in", " the", " play", " Her", "ons", " at", " the", " Royal"]
    pieces.append(source[len("".join(pieces)) :])
    out = [(p, i) for i, p in enumerate(pieces[:7])]
    passage = ScoredPassage(passage=Passage(id="p0", text=source))
    tracker = ClaimTracker([passage], [_encoded(source, pieces)])
    text = ""
    for piece, position in out:
        start = len(text)
        text += piece
        tracker.add(text, Provenance(0, position, 1.0), start, len(text))
    tracker.finish(text[: text.index("Her") + 2])  # a stop string cut "Herons" after "He"
    assert [c.quote for c in tracker.citations] == ["He starred in the play"]


def test_stop_scanner_finds_a_stop_string_split_across_puts() -> None:
    scanner = StopScanner(["\n\n"])
    assert scanner.feed("Hello\n") is None
    assert scanner.releasable(len("Hello\n")) == 5
    assert scanner.feed("") is None
    assert scanner.feed("\nmore") == 5
    assert StopScanner(["ab", "b"]).feed("xab") == 1  # the earliest of several stop strings
    long = StopScanner(["Robert Boulter"])  # longer than the first pieces fed
    assert [long.feed(p) for p in ["Robert", " Boul", "ter", " is"]] == [None, None, 0, None]


def test_stop_scanner_agrees_with_a_substring_search_however_the_text_is_cut() -> None:
    import random

    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab c") for _ in range(rng.randrange(0, 14)))
        stops = ["".join(rng.choice("ab c") for _ in range(rng.randrange(1, 6))) for _ in range(rng.randrange(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randrange(0, len(text) + 2)))
        scanner, found, expected = StopScanner(stops), None, None
        for a, b in itertools.pairwise([0, *cuts, len(text)]):
            found = scanner.feed(text[a:b])
            # Generation stops at the first piece that completes a stop string: the earliest one in the text so far.
            positions = [i for i in (text[:b].find(s) for s in stops) if i >= 0]
            expected = min(positions) if positions else None
            if found is not None or expected is not None:
                break
        assert found == expected, (text, stops, cuts)


def _lock(passages: list[list[int]]) -> SentenceLock:
    vocab = 20
    word_start = torch.zeros(vocab, dtype=torch.bool)
    word_start[10:19] = True  # tokens 10-18 start words; 1-9 continue them
    sentence_end = torch.zeros(vocab, dtype=torch.bool)
    sentence_end[19] = True  # "."
    return SentenceLock(lambda p: torch.tensor(passages[p]), word_start, sentence_end)


def test_splice_rule_locks_a_sentence_to_its_first_substantive_copy() -> None:
    lock = _lock([[10, 11, 12, 13, 19], [14, 5, 16, 19]])
    lock.observe(10, Provenance(0, 0, 1.0))
    assert lock.continuation() is None  # one word: a fragment, no lock yet
    lock.observe(11, Provenance(0, 1, 1.0))
    assert lock.continuation() == (0, 2, 12)  # two words copied: only the run's next token may follow
    lock.observe(12, None)  # the LM wrote the same token: still one verbatim run
    assert lock.continuation() == (0, 3, 13)
    lock.observe(15, Provenance(1, 1, 1.0))  # a copy from elsewhere breaks the run
    assert lock.continuation() is None and lock.lm_only
    lock.observe(16, Provenance(1, 2, 1.0))
    assert lock.lm_only  # the LM alone finishes the sentence
    lock.observe(19, None)  # sentence end: everything resets
    assert not lock.lm_only and lock.continuation() is None
    lock.observe(14, Provenance(1, 0, 1.0))
    lock.observe(5, Provenance(1, 1, 1.0))
    assert lock.continuation() is None  # "5" continues the word: still one word
    lock.observe(16, Provenance(1, 2, 1.0))
    assert lock.continuation() == (1, 3, 19)


def test_splice_rule_releases_a_lock_at_the_end_of_its_passage() -> None:
    lock = _lock([[10, 11]])
    lock.observe(10, Provenance(0, 0, 1.0))
    lock.observe(11, Provenance(0, 1, 1.0))
    assert lock.locked == (0, 2) and lock.continuation() is None
    assert lock.lm_only  # the run's passage ended: the LM finishes the sentence
    lock.observe(12, None)
    assert lock.lm_only


def test_a_word_made_of_copies_from_two_places_is_claimed_once() -> None:
    # "Boul" copied from the second "Boulter", "ter" from the first: the claims may not overlap.
    source = "Boulter is an actor. In 2004 Boulter landed a role."
    pieces = ["Boul", "ter", " is", " an", " actor", ".", " In", " 2004", " Boul", "ter", " landed", " a", " role", "."]
    _, tracker = _track(source, pieces, [("Boul", 8), ("ter", 1), (" is", 2), (" an", 3)])
    claims = sorted((c.output_start, c.output_end) for c in tracker.citations + tracker.fragments)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(claims)), claims
    # Neither copy may claim the other's text: the word is claimed by neither.
    assert [c.quote for c in tracker.citations] == ["is an"] and tracker.fragments == []


def test_growing_text_reads_like_the_string_it_holds() -> None:
    import random

    from nest_integrations.text_stream import GrowingText

    rng = random.Random(0)
    grown, plain = GrowingText(), ""
    for step in range(1500):  # a few thousand chars: many blocks, some pieces longer than a block
        size = rng.randrange(0, 4) if rng.random() < 0.95 else rng.randrange(200, 600)
        piece = "".join(rng.choice("ab é😀\n") for _ in range(size))
        grown.append(piece)
        plain += piece
        if step % 400 == 399:
            assert str(grown) == plain  # joining in the middle leaves it appendable
        a, b = sorted(rng.randrange(0, len(plain) + 2) for _ in range(2))
        assert grown[a:b] == plain[a:b] and len(grown) == len(plain)
        if plain:
            i = rng.randrange(-len(plain), len(plain))
            assert grown[i] == plain[i]
    assert str(grown) == plain


def test_a_claim_entering_a_source_sentence_after_another_subject_is_not_cited() -> None:
    source = "Otho used Nero as a surname and reerected many statues."
    pieces = ["O", "tho", " used", " Nero", " as", " a", " surname", " and", " reerected", " many", " statues", "."]
    out = [("Vitellius", None)] + [(p, i) for i, p in enumerate(pieces) if i >= 2]
    _, tracker = _track(source, pieces, out)
    assert tracker.citations == []
    assert [c.quote for c in tracker.fragments] == ["used Nero as a surname and reerected many statues."]
    _, same = _track(source, pieces, [("Otho", None), *out[1:]])
    assert [c.quote for c in same.citations] == ["used Nero as a surname and reerected many statues."]


def test_a_claim_does_not_end_with_the_first_word_of_a_sentence_that_went_elsewhere() -> None:
    source = "It keeps boobies. The nocturnal house opened in 1960."
    pieces = ["It", " keeps", " boobies", ".", " The", " nocturnal", " house", " opened", " in", " 1960", "."]
    _, tracker = _track(source, pieces, [(p, i) for i, p in enumerate(pieces[:5])] + [(" zoo closed", None)])
    assert [c.quote for c in tracker.citations] == ["It keeps boobies."]


def test_a_lock_carries_across_a_sentence_end_its_run_continues() -> None:
    lock = _lock([[10, 11, 19, 12, 13]])
    lock.observe(10, Provenance(0, 0, 1.0))
    lock.observe(11, Provenance(0, 1, 1.0))
    lock.observe(19, Provenance(0, 2, 1.0))  # the source's sentence end, copied
    assert lock.continuation() == (0, 3, 12)  # the next sentence must go on as the source does
    lock.observe(14, None)  # or the LM finishes it alone
    assert lock.lm_only


def test_after_a_misstated_first_sentence_the_next_source_sentence_is_still_cited() -> None:
    source = "Boulter is an English actor. He had a role in The Bill."
    pieces = [
        "Boulter",
        " is",
        " an",
        " English",
        " actor",
        ".",
        " He",
        " had",
        " a",
        " role",
        " in",
        " The",
        " Bill",
        ".",
    ]
    out = [("Boulter is a British", None)] + [(p, i) for i, p in enumerate(pieces) if i >= 4]
    _, tracker = _track(source, pieces, out)
    assert [c.quote for c in tracker.citations] == ["He had a role in The Bill."]
    assert [c.quote for c in tracker.fragments] == ["actor."]


def test_last_word_and_capped_word_count_agree_with_a_full_split() -> None:
    import random

    from nest_integrations.text_stream import _WORD, last_word, word_count

    rng = random.Random(0)
    alphabet = [*"ab1_ -’'.,\n\tÉé", "\u0301", "\u200d", "語"]
    for _ in range(20000):  # texts past the first tail windows (32, 128 chars) and shorter ones
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        words = _WORD.findall(text)  # r"\w+(?:['’\-]\w+)*", each char of a script without spaces alone
        assert last_word(text) == (words[-1] if words else None), text
        cap = rng.randrange(0, 4)
        assert word_count(text, cap) == min(cap, len(words)) and word_count(text) == len(words)


def test_joined_treats_marks_joiners_and_scripts_as_the_definition_says() -> None:
    # A combining mark joins the char before it; an apostrophe or hyphen joins two word chars only.
    word = unicodedata.normalize("NFD", "café")
    assert joined(word, len(word) - 1) and not joined(word + " x", len(word))
    assert joined("Nero's", 4) and joined("Nero's", 5) and not joined("Nero 's", 5)
    assert joined("pre-war", 3) and not joined("pre- war", 4)
    assert joined("٣٤", 1) and not joined("a.b", 1) and not joined("a", 0)
    # Scripts without spaces: each char is a word of its own (UAX #29 breaks between ideographs).
    assert not joined("中村", 1) and not joined("東京タワー", 2) and not joined("ไทย", 1)
    assert joined("ที่", 1)  # a Thai vowel sign is a combining mark: it stays with its consonant


def test_a_claim_entering_midway_is_not_cited_after_names_its_source_sentence_lacks() -> None:
    source = "In 2001 he starred in the play Herons written by Simon Stephens, which was performed at the Royal Court."
    pieces = re.findall(r" ?[^ ]+", source)
    by = pieces.index(" by")
    copied = [(p, i) for i, p in enumerate(pieces) if i >= by]
    # The output's sentence names a film and a year the source sentence does not have: a fragment, not a citation.
    _, made_up = _track(source, pieces, [("The Big Lebowski is a 2000 play written", None), *copied])
    assert made_up.citations == [] and made_up.fragments
    # Names the source sentence (or the title) has: cited.
    _, true = _track(source, pieces, [("In 2001 Herons was written", None), *copied])
    assert [c.quote for c in true.citations] == [source[source.index("by") :]]
    _, titled = _track(source, pieces, [("In 2001 T wrote a play, Herons, written", None), *copied])
    assert titled.citations  # "T" is the passage's title


def test_the_midway_rule_reads_hyphenated_and_apostrophe_names_alike_on_both_sides() -> None:
    # The output sentence equals the source sentence: its names are the source's, however they split.
    from nest_integrations.claims import _enters_like_its_source

    for sentence, copy in [
        ("Anna Berg (1901-1970) was a Swedish painter who studied in Paris.", "studied in Paris."),
        ("Jean-Paul Sartre later wrote the novel Nausea in 1938.", "wrote the novel Nausea in 1938."),
        ("Since 1990 Conan O'Brien has hosted the show in New York.", "hosted the show in New York."),
    ]:
        at = sentence.index(copy)
        assert _enters_like_its_source(sentence, at, sentence, at), sentence
    made_up = "The Big Lebowski (1901-1970) was a painter who studied in Paris."
    source = "Anna Berg (1901-1970) was a Swedish painter who studied in Paris."
    assert not _enters_like_its_source(made_up, made_up.index("studied"), source, source.index("studied"))


def test_sentence_breaks_find_the_sentence_a_char_is_in() -> None:
    import random

    from nest_integrations.claims import SentenceBreaks

    text = "Otho ruled. He died!\nVitellius ruled? Yes. "
    breaks = SentenceBreaks(text)
    assert breaks.sentence_at(0) == (0, 10) and breaks.sentence_at(13) == (11, 20)  # "!\n" breaks at the newline
    assert breaks.sentence_at(25) == (21, 36) and breaks.sentence_at(len(text)) == (len(text) - 1, len(text))
    rng = random.Random(0)  # the same bounds as scanning back and forth for ". ", "! ", "? " and "\n"
    for _ in range(3000):
        t = "".join(rng.choice("ab .!?\n") for _ in range(rng.randrange(0, 40)))
        b = SentenceBreaks(t)
        for i in range(len(t) + 1):
            start = max((t.rfind(e, 0, i) for e in (". ", "! ", "? ", "\n")), default=-1) + 1
            ends = [k for k in (t.find(e, i) for e in (". ", "! ", "? ", "\n")) if k >= 0]
            assert b.sentence_at(i) == (start, min(ends, default=len(t))), (t, i)


def test_the_shortcuts_the_midway_rule_takes_agree_with_the_plain_splits() -> None:
    import random

    from nest_integrations.claims import _after_last_break, _has_word
    from nest_integrations.relevance import key_terms, stopwords

    def key_terms_by_loop(query: str) -> set[str]:  # the definition, word by word
        terms = set()
        for sentence in re.split(r"(?<=[.!?])\s+", query.strip()):
            for i, w in enumerate(re.findall(r"\w+", unicodedata.normalize("NFC", sentence))):
                if (i > 0 and w[0].isupper()) or any(c.isdigit() for c in w):
                    terms.add(w.lower())
        return terms - stopwords()

    rng = random.Random(0)
    alphabet = [*"abXY É12²_.!? \n\t'-", "e\u0301", "٣", "Nero ", "The ", "ǅ"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        breaks = list(re.finditer(r"[.!?](?=\s)|\n", text))
        assert _after_last_break(text) == (breaks[-1].end() if breaks else 0), text
        assert key_terms(text) == key_terms_by_loop(text), text
        words = set(re.findall(r"\w+", text))
        for word in [*words, "ab", "a", "1", "é"]:
            assert _has_word(text, word) == (word in words), (text, word)


def test_a_claim_entering_inside_a_parenthesis_of_its_source_is_not_cited() -> None:
    from nest_integrations.claims import _enters_like_its_source

    source = "Anna Berg (born 1961) is a Swedish chemist who works on membranes."
    made_up = "The 1961) is a Swedish chemist who works on membranes."
    assert not _enters_like_its_source(made_up, made_up.index("1961"), source, source.index("1961"))
    # After the parenthesis closes, the rule is the usual one.
    true = "Anna Berg (born 1961) is a Swedish chemist who works on membranes."
    assert _enters_like_its_source(true, true.index("is a"), source, source.index("is a"))


def test_a_claim_entering_midway_is_not_cited_after_an_opening_name_its_source_sentence_lacks() -> None:
    # Break test: "Tallahasaba, the economic centre of Israel." cited "It is the economic centre of Israel."
    from nest_integrations.claims import _enters_like_its_source

    source = "Tel Aviv (תל אביב) was founded in 1909 on the outskirts of Jaffa. It is the economic centre of Israel."
    at = source.index("economic")
    made_up = "Tallahasaba, the economic centre of Israel."
    assert not _enters_like_its_source(made_up, made_up.index("economic"), source, at, "תל אביב")
    # An opening name counts as the other names do: it must be in the source sentence or the title.
    other = "Jaffa, the economic centre of Israel."  # in the passage, but not what the sentence is about
    assert not _enters_like_its_source(other, other.index("economic"), source, at, "תל אביב")
    for true, title in [
        ("It is the economic centre of Israel.", "תל אביב"),
        ("Tel Aviv, the economic centre", "Tel Aviv"),
    ]:
        assert _enters_like_its_source(true, true.index("economic"), source, at, title), true
    city = "The city, the economic centre"  # "The": a stopword, not a name
    assert _enters_like_its_source(city, city.index("economic"), source, at, "תל אביב")


def test_random_streams_cite_no_spliced_sentence_and_streaming_settles_as_the_end_does() -> None:
    """Random outputs of copied tokens (from random places) and generated ones ("." among them):
    settling as tokens arrive (streaming) gives what settling once at the end gives, every quote
    is exact, and no sentence with a citation holds copies that do not continue each other."""
    import random

    from nest_integrations.bench.claims import claim_counts
    from nest_integrations.citations import NestResult

    source = "Anna Berg was a painter. She studied in Paris, then Oslo. Lars Berg was a chemist! He lived long."
    pieces = re.findall(r"\s*[^\s.!,]+|[.!,]", source)
    assert "".join(pieces) == source
    generated = [" and", " the", ".", " It", " was", "!", "\n"]
    rng = random.Random(0)
    passage = ScoredPassage(
        passage=Passage(id="p0", text=source, title="T", document_id="doc", start=0, end=len(source))
    )
    for _ in range(300):
        output: list[tuple[str, int | None]] = []
        while len(output) < 40:
            if rng.random() < 0.5:
                at = rng.randrange(len(pieces))
                output += [(pieces[i], i) for i in range(at, min(len(pieces), at + rng.randint(1, 8)))]
            else:
                output.append((rng.choice(generated), None))
        results = []
        for streaming in (True, False):
            tracker = ClaimTracker([passage], [_encoded(source, pieces)])
            text = ""
            for piece, position in output:
                start = len(text)
                text += piece
                tracker.add(text, None if position is None else Provenance(0, position, 0.9), start, len(text))
                if streaming:
                    tracker.settle(text, len(text))
            tracker.finish(text)
            results.append((tracker.citations, tracker.fragments))
        assert results[0] == results[1], output
        citations, fragments = results[1]
        for c in citations + fragments:
            assert text[c.output_start : c.output_end] == source[c.passage_start : c.passage_end] == c.quote
        counts = claim_counts(NestResult(text=text, citations=citations, fragments=fragments, passages=[passage]))
        assert counts.spliced_sentences == 0, (text, citations)
        for c in citations:  # what follows a cited quote in its sentence is the source's next text, or no word
            found = _CLAIM_SENTENCE_END.search(text, c.output_end - 1)  # the quote may end its sentence
            tail = text[c.output_end : found.end() if found else len(text)]
            same = source[c.passage_end : c.passage_end + len(tail)]
            k = next((i for i, (a, b) in enumerate(zip(tail, same, strict=False)) if a != b), min(len(tail), len(same)))
            assert not any(ch.isalnum() for ch in tail[k:]), (text, c.quote, tail)


def test_a_quote_never_ends_inside_an_emoji_cluster_of_its_source() -> None:
    # A break test's case: the output stopped after "👍" where the source has "👍🏽" (thumbs up
    # with a skin tone: one grapheme cluster), and after the first regional indicator of a flag.
    source = "Members greet each other with 👍🏽 and 🇩🇪 daily."
    pieces = ["Members", " greet", " each", " other", " with", " 👍", "🏽", " and", " 🇩", "🇪", " daily", "."]
    for stop in (6, 9):  # the output ends inside the cluster
        text, tracker = _track(source, pieces, [(pieces[i], i) for i in range(stop)])
        assert [c.quote for c in tracker.citations] == [text[: text.rindex(" ")]], text
        for c in tracker.citations:
            assert not joined(source, c.passage_end) and not joined(source, c.passage_start)
    for text in ("👍🏽", "🇩🇪", "👨\u200d👩\u200d👧"):
        assert all(joined(text, i) for i in range(1, len(text))), text
    assert not joined("🇩🇪🇩🇰", 2)  # two flags


def test_a_copy_that_enters_a_sentence_about_another_named_subject_is_not_cited_at_all() -> None:
    # A break test's case: "Mary" generated, then John's sentence copied from its middle; the copy's
    # next sentence ("He scored ...") goes on about John, so it is not cited either.
    source = "John Smith (born 1970) is a Welsh footballer. He scored 112 goals in 300 games."
    pieces = re.findall(r"\s*[^\s.]+|\.", source)
    start = pieces.index(" (born")
    out = [("Mary Smith", None)] + [(pieces[i], i) for i in range(start, len(pieces))]
    text, tracker = _track(source, pieces, out)
    assert text == "Mary Smith (born 1970) is a Welsh footballer. He scored 112 goals in 300 games."
    assert tracker.citations == []
    assert [c.quote for c in tracker.fragments] == [text[len("Mary Smith ") :]]


def test_abbreviations_and_initials_do_not_end_a_sentence_for_the_splice_check() -> None:
    # A break test's case: "St. Louis, Mo." and "John A. Whitfield" split the sentence, which hid a splice.
    source = "The team doctor was born in Ohio. John A. Whitfield Jr. was born in St. Louis, Mo. in 1931."
    pieces = re.findall(r"\s*[^\s.,]+|[.,]", source)
    team = [(pieces[i], i) for i in range(0, 4)]  # "The team doctor was"
    john = pieces.index(" Whitfield")
    out = [*team, (" the John A.", None), *[(pieces[i], i) for i in range(john, len(pieces))]]
    text, tracker = _track(source, pieces, out)
    assert text.startswith("The team doctor was the John A. Whitfield Jr. was born in St. Louis, Mo. in 1931.")
    assert tracker.citations == [], [c.quote for c in tracker.citations]


def test_a_sentence_that_goes_on_after_its_copy_with_words_its_source_lacks_cites_nothing() -> None:
    # Break-test cases: "he retired to | Scarborough." (one word copied from another version of the
    # biography) and "Nobel Prize in | the Trilogy" (generated): the words after the break are the
    # sentence's claim too, so the copy before them backs a false sentence.
    source = "Peter Hall retired to Whitby in 1990. He died there."
    pieces = re.findall(r"\s*[^\s.]+|\.", source)
    copied = [(pieces[i], i) for i in range(4)]  # "Peter Hall retired to"
    for tail in (" Scarborough.", " Whitby and Leeds."):
        text, tracker = _track(source, pieces, [*copied, (tail, None), *[(pieces[i], i) for i in range(8, 12)]])
        assert [c.quote for c in tracker.citations] == ["He died there."], text
        assert next(c.quote for c in tracker.fragments) == "Peter Hall retired to", text
    # What the source says next, or only punctuation, keeps the sentence cited.
    text, tracker = _track(source, pieces, [*copied, (" Whitby", None), (".", None)])
    assert [c.quote for c in tracker.citations] == ["Peter Hall retired to"], text  # generated text is never quoted
    text, tracker = _track(source, pieces, [*copied, (pieces[4], 4), (";", None)])
    assert [c.quote for c in tracker.citations] == ["Peter Hall retired to Whitby"], text
    # A copy running to the end of the output (cut by the token limit) has nothing after it.
    text, tracker = _track(source, pieces, copied)
    assert [c.quote for c in tracker.citations] == ["Peter Hall retired to"], text


def test_in_text_completion_the_prompt_names_the_subject_of_the_first_sentence() -> None:
    # Break-test case: prompt "Mary Miller, his sister," continued with " and their son, | an American
    # jazz trumpeter ..." copied from John Miller's sentence: the sentence is about Mary's family.
    source = "John Miller is an American jazz trumpeter who recorded twelve albums."
    pieces = re.findall(r"\s*[^\s.]+|\.", source)
    at = pieces.index(" an")
    out = [(" and their son,", None), *[(pieces[i], i) for i in range(at, len(pieces))]]
    passage = ScoredPassage(passage=Passage(id="p0", text=source, title="Miller family"))
    results = {}
    for lead in ("", "Mary Miller, his sister,", "John Miller, born in Ohio,", "Mary Miller sings. John,"):
        tracker = ClaimTracker([passage], [_encoded(source, pieces)], lead=lead)
        text = ""
        for piece, position in out:
            start = len(text)
            text += piece
            tracker.add(text, None if position is None else Provenance(0, position, 0.9), start, len(text))
        tracker.finish(text)
        results[lead] = [c.quote for c in tracker.citations]
    quote = "an American jazz trumpeter who recorded twelve albums."
    assert results == {
        "": [quote],  # a chat answer: nothing before the copy names anyone
        "Mary Miller, his sister,": [],  # Mary is not in John's sentence
        "John Miller, born in Ohio,": [],  # Ohio is not in it either: a name it lacks
        "Mary Miller sings. John,": [quote],  # the prompt's last sentence only
    }, results


def test_a_copy_inside_text_without_spaces_is_cited_and_ends_a_sentence_at_a_cjk_full_stop() -> None:
    # Break-test case: a Japanese answer copied 39 of 40 tokens, yet no citation or fragment came
    # back: the copy started and ended inside runs of kana and kanji, which had no word boundary.
    source = "東京タワーは東京都港区にある電波塔である。1958年に完成した。高さは333メートルである。"
    pieces = list(source)
    start = source.index("タ")
    out = [(pieces[i], i) for i in range(start, source.index("塔") + 1)]  # "タワーは...電波塔" (no 。)
    out += [("だ。", None), *[(pieces[i], i) for i in range(source.index("高"), len(pieces))]]
    text, tracker = _track(source, pieces, out)
    assert text == "タワーは東京都港区にある電波塔だ。高さは333メートルである。"
    # The first sentence goes on after its copy with a word the source lacks there ("だ" for "で").
    assert [c.quote for c in tracker.fragments] == ["タワーは東京都港区にある電波塔"]
    assert [c.quote for c in tracker.citations] == ["高さは333メートルである。"]
    for c in tracker.citations + tracker.fragments:
        assert text[c.output_start : c.output_end] == source[c.passage_start : c.passage_end] == c.quote
