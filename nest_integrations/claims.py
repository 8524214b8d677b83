"""Claim-level citations: copied tokens grouped into runs that are contiguous in their source.

A run grows while the output stays a verbatim slice of one passage: consecutive copied tokens,
and generated text between two copies when it equals the source text between them. A closed
run is snapped to word boundaries (a quote never starts or ends inside a word or a grapheme
cluster the output does not reproduce) and becomes a ``Citation`` when it holds two or more
words, else a fragment (kept for attribution, never listed as a source).

No cited sentence is spliced: a closed claim is settled when the output sentences it overlaps
have ended, and where one sentence holds substantive copies (two or more words) from two
places that do not continue each other, its part of every copy is withheld as a fragment
("Boulter starred in the play Herons | directed by Paris Leonti." cites nothing); so does a
sentence that goes on after its last copy with words the source does not have there, generated
or copied from elsewhere ("he retired to | Scarborough." where the source says "Whitby"). Work per
token is O(1) amortised, so streaming stays linear. Decoding is not done here.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .citations import Citation, Provenance
from .passages.stopwords import stopwords
from .passages.types import Passage, ScoredPassage
from .relevance import key_terms
from .text_stream import Chars, joined, last_word, word_count
from .token_index import EncodedPassage

log = logging.getLogger(__name__)

MIN_CLAIM_WORDS = 2  # a copy of fewer words is a fragment, never listed as a source


@dataclass
class _Run:
    """A verbatim slice of one passage in the output, being built."""

    passage: int
    out_start: int
    out_end: int
    src_start: int
    src_end: int
    last_position: int
    confidences: list[float] = field(default_factory=list)
    gap_checked: int = 0  # output chars after out_end already found equal to the source


@dataclass
class _Unsettled:
    """A closed copy whose sentences may not have ended yet, and the output ranges of its
    spliced sentences (withheld from the citation when it settles)."""

    copy: Citation
    listed: bool  # substantive, and no odd entry point: a citation where no sentence of it is spliced
    substantive: bool  # two or more words: counts towards a splice
    withheld: list[tuple[int, int]] = field(default_factory=list)


def snap(
    out: Chars, src: Chars, o0: int, o1: int, s0: int, s1: int, lo: int = 0, hi: int | None = None
) -> tuple[int, int, int, int] | None:
    """Move a quote (``out[o0:o1] == src[s0:s1]``) to word boundaries in both texts.

    It grows into a word while both texts agree there (never into output before ``lo`` or
    from ``hi`` on: text another copy produced), else shrinks to the nearest boundary inside
    the quote; surrounding whitespace is dropped. None when nothing is left.
    """
    hi = len(out) if hi is None else hi
    while joined(out, o0) or joined(src, s0):
        if o0 > lo and s0 > 0 and out[o0 - 1] == src[s0 - 1]:
            o0, s0 = o0 - 1, s0 - 1
            continue
        k = 1  # to the nearest boundary in both texts ("cross-" ends a word here, not in "cross-country")
        while o0 + k < o1 and (joined(out, o0 + k) or joined(src, s0 + k)):
            k += 1
        o0, s0 = o0 + k, s0 + k
        break
    while joined(out, o1) or joined(src, s1):
        if o1 < hi and s1 < len(src) and out[o1] == src[s1]:
            o1, s1 = o1 + 1, s1 + 1
            continue
        k = 1
        while o1 - k > o0 and (joined(out, o1 - k) or joined(src, s1 - k)):
            k += 1
        o1, s1 = o1 - k, s1 - k
        break
    quote = out[o0:o1]
    lead, trail = len(quote) - len(quote.lstrip()), len(quote) - len(quote.rstrip())
    o0, s0, o1, s1 = o0 + lead, s0 + lead, o1 - trail, s1 - trail
    return (o0, o1, s0, s1) if o1 > o0 else None


class ClaimTracker:
    """Turns (token provenance, output char range) pairs into claim-level citations and fragments.

    Feed committed tokens in order with :meth:`add`; ``closed`` holds finished claims in
    output order; :meth:`finish` closes the open run at the end of the output.
    """

    def __init__(
        self,
        passages: Sequence[ScoredPassage],
        encoded: Sequence[EncodedPassage],
        duplicates: Mapping[int, Sequence[Passage]] | None = None,
        lead: str = "",
    ) -> None:
        """``duplicates``: passage index -> other passages with exactly its text (see ``sources.py``);
        ``lead``: text the output continues (a text-completion prompt; "" after a chat turn): the
        output's first sentence begins in it ("Mary Miller, his sister," | " and ...")."""
        self.passages = passages
        self.lead = lead[-300:]
        self.encoded = encoded
        self.duplicates = duplicates or {}
        self._closed_end = 0  # output end of the last closed run: a claim never grows back over it
        self.citations: list[Citation] = []  # final, in output order
        self.fragments: list[Citation] = []
        self._open: _Run | None = None
        self._unsettled: list[_Unsettled] = []  # closed copies, in output order, not yet final
        self._settled_end = 0  # output chars up to here belong to settled sentences
        self._no_break_before = 0  # no sentence break starts in the output before here (searched)
        self._spans: dict[int, tuple[list[int], list[int]]] = {}
        self._breaks: dict[int, SentenceBreaks] = {}  # per passage cited from
        self._text_of = {s.passage.id: s.passage.text for s in passages}  # passage id -> its text

    def _token_spans(self, passage: int) -> tuple[list[int], list[int]]:
        """Char range of each token of a passage in its text (negative: in the title before it)."""
        spans = self._spans.get(passage)
        if spans is None:  # once per passage copied from: lists of ints read faster than numpy, token by token
            enc = self.encoded[passage]
            starts = (enc.char_spans[:, 0] - enc.text_offset).tolist()
            ends = (enc.char_spans[:, 1] - enc.text_offset).tolist()
            # A byte-level token holding whole characters and the first bytes of the next one (" " and
            # half of U+200B) gets only its whole characters, as the output's detokeniser gives it.
            for k in range(len(starts) - 1):
                if starts[k] < starts[k + 1] < ends[k]:
                    ends[k] = starts[k + 1]
            spans = self._spans[passage] = (starts, ends)
        return spans

    def add(self, text: Chars, prov: Provenance | None, start: int, end: int) -> None:
        """One committed output token: its provenance (None: generated) and char range in ``text``."""
        run = self._open
        if run is not None and prov is not None and end == run.out_end and prov.passage == run.passage:
            # Another token of the multi-byte character the run ends with: they share one char range.
            run.last_position = max(run.last_position, prov.position)
            run.confidences.append(prov.confidence)
            return
        if prov is None:
            if run is not None and not self._gap_matches(text, run, end):
                self._close(text)
            return
        starts, ends = self._spans.get(prov.passage) or self._token_spans(prov.passage)  # (inlined: once a token)
        a, b = starts[prov.position], ends[prov.position]
        if b <= 0:  # the token lies in the title the passage was encoded with, not in its text
            if run is not None:
                self._close(text, hi=start)  # a quote never grows over copied title text
            return
        if a < 0:  # straddles the title separator: keep the text part
            start, a = start - a, 0
        if (
            run is not None
            and prov.passage == run.passage
            and prov.position > run.last_position
            and a - run.src_end == start - run.out_end
            and (start - run.out_end <= run.gap_checked or self._gap_matches(text, run, start))  # no gap: no call
        ):
            run.out_end, run.src_end, run.last_position, run.gap_checked = end, b, prov.position, 0
            run.confidences.append(prov.confidence)
            return
        if run is not None:
            self._close(text, hi=start)
        self._open = _Run(prov.passage, start, end, a, b, prov.position, [prov.confidence])

    def _gap_matches(self, text: Chars, run: _Run, upto: int) -> bool:
        """Whether the output after the run, up to char ``upto``, is the source text after it."""
        n = upto - run.out_end
        if n <= run.gap_checked:
            return True
        src = self.passages[run.passage].passage.text
        done = run.gap_checked  # only the chars not compared before: O(new chars)
        if text[run.out_end + done : upto] != src[run.src_end + done : run.src_end + n]:
            return False
        run.gap_checked = n
        return True

    def open_start(self) -> int | None:
        """Output char where the open (still growing) claim begins, if any."""
        return None if self._open is None else self._open.out_start

    def finish(self, text: Chars) -> None:
        """The output is complete: close the open run and settle every claim. ``text`` may be shorter
        than what was added (a stop string cut it): claims reaching past its end are cut at a word boundary."""
        if self._open is not None:
            self._close(text)
        citations, fragments = self.citations, self.fragments
        self.citations, self.fragments = [], []
        for c in citations:
            if (short := _cut(text, c)) is not None:
                (self.citations if _is_claim(short) else self.fragments).append(short)
        for c in fragments:  # fragments stay fragments (short, or entering their source oddly)
            if (short := _cut(text, c)) is not None:
                self.fragments.append(short)
        unsettled, self._unsettled = self._unsettled, []
        for u in unsettled:
            if (short := _cut(text, u.copy)) is not None:
                substantive = _is_claim(short)
                self._unsettled.append(_Unsettled(short, u.listed and substantive, substantive, u.withheld))
        self.settle(text, len(text), final=True)

    def settle(self, text: Chars, upto: int, *, final: bool = False) -> None:
        """Make final the claims whose output sentences have all ended by char ``upto`` (all of
        them when ``final``): a sentence holding substantive copies from places that do not
        continue each other, or going on after its last one with words its source lacks there,
        keeps none of them cited. Only text after the last settled sentence
        is searched, so settling a whole answer costs O(its length)."""
        pending = self._unsettled
        open_start = None if self._open is None else self._open.out_start
        while pending:
            begin = max(pending[0].copy.output_start, self._settled_end)
            end = self._sentence_end(text, begin, upto)
            if end is None:
                if not final:
                    return
                end = max(len(text), pending[-1].copy.output_end)
            elif not final and open_start is not None and open_start < end:
                return  # a copy still growing shares this sentence
            n = 0
            while n < len(pending) and pending[n].copy.output_start < end:  # in output order
                n += 1
            inside = pending[:n]
            copies = [u for u in inside if u.substantive]
            spliced = len(copies) > 1 and not all(
                self._continues(text, a.copy, b.copy) for a, b in itertools.pairwise(copies)
            )
            if spliced or (copies and self._broken_off(text, copies[-1].copy, end)):
                for u in inside:
                    u.withheld.append((begin, end))
            while pending and pending[0].copy.output_end <= end:
                self._release(pending.pop(0))
            self._settled_end = self._no_break_before = end

    def _continues(self, text: Chars, before: Citation, after: Citation) -> bool:
        """Whether ``after`` continues ``before``'s passage exactly as the output does (the output
        between them is the passage text between them)."""
        gap = after.output_start - before.output_end
        if after.passage_id != before.passage_id or gap < 0 or after.passage_start - before.passage_end != gap:
            return False
        source = self._text_of[before.passage_id]
        return text[before.output_end : after.output_start] == source[before.passage_end : after.passage_start]

    def _broken_off(self, text: Chars, copy: Citation, end: int) -> bool:
        """Whether the output sentence ending at char ``end`` goes on after ``copy`` with words its
        source does not have there ("retired to | Scarborough." where the source says "Whitby"):
        the words after the break, generated or copied from elsewhere, are the sentence's claim too."""
        if copy.output_end >= end:
            return False
        tail = text[copy.output_end : end]
        if not any(ch.isalnum() for ch in tail):
            return False  # only punctuation or whitespace after the copy
        source = self._text_of[copy.passage_id]
        k = _common_prefix(tail, source[copy.passage_end : copy.passage_end + len(tail)])
        return any(ch.isalnum() for ch in tail[k:])

    def _sentence_end(self, text: Chars, begin: int, upto: int) -> int | None:
        """End of the output sentence holding char ``begin`` (after its ``.``/``!``/``?`` or newline),
        if it ended before ``upto``: a ``.`` counts once the whitespace after it is there."""
        start = max(begin, self._no_break_before)
        # A str (the finished answer) is searched in place; a growing text's new part is sliced.
        found = _CLAIM_SENTENCE_END.search(text, start, upto) if isinstance(text, str) else None
        if found is not None:
            return found.end()
        if not isinstance(text, str):
            lead = min(start, 4)  # what the end's lookbehind reads ("St" before ". ")
            if (found := _CLAIM_SENTENCE_END.search(text[start - lead : upto], lead)) is not None:
                return start - lead + found.end()
        self._no_break_before = max(start, upto - 1)  # the last char may yet be a break
        return None

    def _release(self, u: _Unsettled) -> None:
        """File a settled copy: its part outside spliced sentences is a citation (if listed and of
        two or more words), the rest fragments."""
        c = u.copy
        keep_start, keep_end = c.output_start, c.output_end
        for a, b in u.withheld:  # spliced sentences lie at its ends: the middle ones hold it alone
            if a <= keep_start < b:
                keep_start = min(b, keep_end)
            elif a < keep_end <= b:
                keep_end = max(a, keep_start)
        if (keep_start, keep_end) == (c.output_start, c.output_end):
            (self.citations if u.listed else self.fragments).append(c)
            return
        pieces = [
            (c.output_start, keep_start, False),
            (keep_start, keep_end, u.listed),
            (keep_end, c.output_end, False),
        ]
        for o0, o1, listed in pieces:
            piece = _slice(c, o0, o1)
            if piece is not None:
                (self.citations if listed and _is_claim(piece) else self.fragments).append(piece)

    def _file(self, cit: Citation, listed: bool = True) -> None:
        substantive = _is_claim(cit)
        self._unsettled.append(_Unsettled(cit, listed and substantive, substantive))

    def _close(self, text: Chars, hi: int | None = None) -> None:
        run, self._open = self._open, None
        if run is not None and (cit := self._cite(text, run, hi)) is not None:
            self._file(cit)
        if run is not None:
            self._closed_end = max(self._closed_end, run.out_end)

    def _cite(self, text: Chars, run: _Run, hi: int | None) -> Citation | None:
        p = self.passages[run.passage].passage
        o1 = min(run.out_end, len(text))  # a stop string may have cut the output
        s1 = run.src_end - (run.out_end - o1)
        out, src = text[run.out_start : o1], p.text[run.src_start : s1]
        if out != src:
            # The run's last token ended inside a character that the output finished differently (a
            # byte-level token holding " " and the first bytes of U+200B, say): quote the part that matches.
            same = _common_prefix(out, src)
            log.debug("cutting a run whose output %r != source %r after %d chars", out, src, same)
            if same == 0:
                return None
            o1, s1 = run.out_start + same, run.src_start + same
        snapped = snap(text, p.text, run.out_start, o1, run.src_start, s1, self._closed_end, hi)
        if snapped is None:
            return None
        o0, o1, s0, s1 = _drop_dangling_sentence_start(text, *snapped)
        if joined(text, o0) or joined(text, o1) or joined(p.text, s0) or joined(p.text, s1):
            return None  # still inside a word or grapheme cluster (limits kept it from growing): not a quote
        breaks = self._breaks.get(run.passage) or self._breaks.setdefault(run.passage, SentenceBreaks(p.text))
        if not _enters_like_its_source(text, o0, p.text, s0, p.title, breaks, self.lead):
            start, end = breaks.sentence_at(s0)
            if _names_another_subject(text, o0, f"{p.title} {p.text[start:end]}", subject_only=True, lead=self.lead):
                # Another subject: the sentences after it go on about the source's ("He scored 112
                # goals" after "Mary | (born 1970) is a footballer" from John's sentence): none is cited.
                self._file(self._citation(text, run, o0, o1, s0, s1), listed=False)
                return None
            # Its first sentence misstates the subject; the sentences after it start as in the source.
            first_break = _SENTENCE_BREAK.search(text[o0:o1])
            cut = o0 + first_break.end() if first_break else o1
            self._file(self._citation(text, run, o0, cut, s0, s0 + (cut - o0)), listed=False)
            rest = text[cut:o1]
            cut += len(rest) - len(rest.lstrip())
            if word_count(text[cut:o1], MIN_CLAIM_WORDS) < MIN_CLAIM_WORDS:
                return None
            o0, s0 = cut, s0 + (cut - o0)
        return self._citation(text, run, o0, o1, s0, s1)

    def _citation(self, text: Chars, run: _Run, o0: int, o1: int, s0: int, s1: int) -> Citation:
        p = self.passages[run.passage].passage
        doc_start = p.start + s0 if p.start is not None else None
        return Citation(
            output_start=o0,
            output_end=o1,
            quote=text[o0:o1],
            passage_id=p.id,
            document_id=p.document_id,
            title=p.title,
            passage_start=s0,
            passage_end=s1,
            document_start=doc_start,
            document_end=doc_start + (s1 - s0) if doc_start is not None else None,
            score=sum(run.confidences) / len(run.confidences),
            metadata=dict(p.metadata),
            also_in=self._other_holders(run.passage, doc_start, s1 - s0),
        )

    def _other_holders(self, passage: int, doc_start: int | None, length: int) -> list[str]:
        """Ids of other passages holding the quote: exact duplicates, and overlapping chunks of its document."""
        p = self.passages[passage].passage
        ids = [d.id for d in self.duplicates.get(passage, ()) if d.id != p.id]  # the same passage given twice
        if doc_start is not None:
            for other in self.passages:
                q = other.passage
                same_document = q.id != p.id and q.document_id == p.document_id
                if same_document and q.start is not None and q.end is not None:
                    ids += [q.id] if q.start <= doc_start and doc_start + length <= q.end else []
        return list(dict.fromkeys(ids))


CJK_STOPS = "\u3002\uff01\uff1f"  # 。！？: they end a sentence with no space after them
_SENTENCE_BREAK = re.compile(rf"[.!?](?=\s)|[{CJK_STOPS}]|\n")
# For the splice check, where a missed end only makes a sentence longer (stricter), never hides
# a splice: no end after an initial ("John A. Whitfield") or a common abbreviation ("St. Louis").
_CLAIM_SENTENCE_END = re.compile(  # the mark first, then what comes before it: fast on long text
    r"[.!?](?<!\b[A-Z].)(?<!\b(?:St|Mr|Ms|Dr|Jr|Sr|Mt|No|vs|Co|Mo).)(?<!\b(?:Mrs|etc|Inc|Ltd|Gen|Col|Rev|Fig).)"
    rf"(?<!\b(?:e\.g|i\.e).)(?=\s)|[{CJK_STOPS}]|\n"
)
_SENTENCE_BREAK_REVERSED = re.compile(rf"\n|[{CJK_STOPS}]|(?<=\s)[.!?]")  # _SENTENCE_BREAK read from the end


def _after_last_break(text: str) -> int:
    """Where the text after the last ``_SENTENCE_BREAK`` of ``text`` starts (0 without one).

    Searches the reversed text: the first match there is the last one here, found without
    visiting every break of a long quote (this runs once or twice per claim)."""
    found = _SENTENCE_BREAK_REVERSED.search(text[::-1])
    return len(text) - found.start() if found else 0


_WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*")


def _drop_dangling_sentence_start(text: Chars, o0: int, o1: int, s0: int, s1: int) -> tuple[int, int, int, int]:
    """A claim that runs into a new sentence by under two words ("... boobies. The") ends at the
    sentence end: the new sentence did not go on as in the source, so its first word is not cited."""
    quote = text[o0:o1]
    cut = _after_last_break(quote)
    if cut and 0 < word_count(quote[cut:], MIN_CLAIM_WORDS) < MIN_CLAIM_WORDS:
        cut = len(quote[:cut].rstrip())  # a newline break stays out of the quote
        return o0, o0 + cut, s0, s0 + cut
    return o0, o1, s0, s1


def _previous_word(text: Chars, end: int) -> str | None:
    """The word before char ``end`` within its sentence, as written (None at a sentence start)."""
    before = text[max(0, end - 200) : end]
    stripped = before.rstrip()
    if not stripped or stripped[-1] in ".!?" + CJK_STOPS or before.rstrip(" \t")[-1:] == "\n":
        return None
    return last_word(before)


class SentenceBreaks:
    """Where the sentences of a source text end (". ", "! ", "? " or a newline), found once per
    passage so that each claim looks its source sentence up in O(log n)."""

    def __init__(self, text: str) -> None:
        self.length = len(text)
        marks = sorted(
            [(m.start(), m.end()) for m in re.finditer(rf"[.!?] |[{CJK_STOPS}]", text)]
            + [(m.start(), m.end()) for m in re.finditer("\n", text)]
        )
        self._at = [a for a, _ in marks]  # where each break starts
        self._after = [b for _, b in marks]  # and ends (non-decreasing with its start)

    def sentence_at(self, i: int) -> tuple[int, int]:
        """(start, end) of the sentence holding char ``i``: from just after the last break that
        ends by ``i`` (the space of ". " included) to the first break that starts from ``i`` on."""
        last = bisect.bisect_right(self._after, i) - 1
        start = self._at[last] + 1 if last >= 0 else 0
        after = bisect.bisect_left(self._at, i)
        return start, self._at[after] if after < len(self._at) else self.length


def _enters_like_its_source(
    out: Chars, o0: int, src: str, s0: int, title: str = "", breaks: SentenceBreaks | None = None, lead: str = ""
) -> bool:
    """A claim that enters its source sentence midway says what that sentence says of what the
    output's sentence names before it: the output names (capitalised words, the sentence's
    first too unless a stopword, and numbers) before the claim are all in the source sentence
    or the title, and a
    claim that follows a name or number in its source follows one the source sentence has.
    "Vitellius used 'Nero' as a surname", copied from "Otho used ...", is not cited; nor is "The
    Big Lebowski is a 2000 play | written by Simon Stephens" from a sentence about "Herons";
    "Kershaw has played" from "Kershaw, who has played" is; nor "Tallahasaba, the | economic
    centre of Israel." from "It is the economic centre of Israel." A claim that enters inside a
    parenthesis of its source sentence is not cited either."""
    source_word = _previous_word(src, s0)
    if source_word is None:
        return True  # the claim starts its source sentence
    start, end = (breaks or SentenceBreaks(src)).sentence_at(s0)
    entered = src[start:s0]
    if entered.count("(") > entered.count(")") or entered.count("[") > entered.count("]"):
        return False  # it enters inside a parenthesis: "The 1961) is a chemist" from "Anna Berg (born 1961) is ..."
    if _names_another_subject(out, o0, f"{title} {src[start:end]}", lead=lead):
        return False  # the output's sentence names something its source sentence does not
    if not (source_word[0].isupper() or any(c.isdigit() for c in source_word)):
        return True  # after a common word: no subject to swap
    at_output_start = o0 <= 300 and not out[:o0].strip()
    word = _previous_word(lead, len(lead)) if at_output_start and lead else _previous_word(out, o0)
    if word is None:
        return False
    return word.lower() in {w.lower() for w in _WORD_RE.findall(src[start:s0])}


def _names_another_subject(
    out: Chars, o0: int, source_sentence: str, *, subject_only: bool = False, lead: str = ""
) -> bool:
    """Whether the output's sentence, before char ``o0``, names something (a capitalised word, its
    first too unless a stopword, or a number) that ``source_sentence`` does not have:
    "Tallahasaba, the | economic centre of Israel." from "It is the economic centre of Israel.".
    ``subject_only``: look at its first name alone ("Mary | (born 1970) is ..." from John's
    sentence names another subject; "Boulter is a British | actor." from "Boulter is an English
    actor." does not)."""
    before = _sentence_before(out, o0, lead)
    if subject_only:
        stop = stopwords()
        first = next((w for w in _WORD_RE.findall(before) if w[0].isupper() and w.lower() not in stop), None)
        names = {first.lower()} if first is not None else set()
    else:
        names = key_terms(before, first_words=True)
    if not names:
        return False
    sentence = unicodedata.normalize("NFC", source_sentence.lower())
    return not all(_has_word(sentence, name) for name in names)


def _has_word(text: str, word: str) -> bool:
    """Whether ``word`` (a ``\\w+`` run) is a whole ``\\w+`` word of ``text``: ``word in
    set(re.findall(r"\\w+", text))`` without splitting all of ``text`` (this runs once per claim)."""
    i = text.find(word)
    while i >= 0:
        j = i + len(word)
        if (i == 0 or not _is_word_char(text[i - 1])) and (j == len(text) or not _is_word_char(text[j])):
            return True
        i = text.find(word, i + 1)
    return False


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"  # what ``\\w`` matches in a str pattern (re docs)


def _sentence_before(text: Chars, end: int, lead: str = "") -> str:
    """The output's sentence up to char ``end`` (at most 300 chars of it), from in ``lead`` (the
    text the output continues) when it began there."""
    before = text[max(0, end - 300) : end]
    if end <= 300 and lead:
        before = lead + before
    return before[_after_last_break(before) :]


def _common_prefix(a: str, b: str) -> int:
    """How many leading chars ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _is_claim(c: Citation) -> bool:
    return word_count(c.quote, MIN_CLAIM_WORDS) >= MIN_CLAIM_WORDS


def _slice(c: Citation, o0: int, o1: int) -> Citation | None:
    """The part of ``c`` at output chars ``[o0, o1)`` without surrounding whitespace (None if empty)."""
    quote = c.quote[o0 - c.output_start : o1 - c.output_start]
    o0, o1 = o0 + len(quote) - len(quote.lstrip()), o1 - (len(quote) - len(quote.rstrip()))
    if o1 <= o0:
        return None
    shift, length = o0 - c.output_start, o1 - o0
    return c.model_copy(
        update={
            "output_start": o0,
            "output_end": o1,
            "quote": c.quote[shift : shift + length],
            "passage_start": c.passage_start + shift,
            "passage_end": c.passage_start + shift + length,
            "document_start": c.document_start + shift if c.document_start is not None else None,
            "document_end": c.document_start + shift + length if c.document_start is not None else None,
        }
    )


def _cut(text: Chars, c: Citation) -> Citation | None:
    """``c`` as far as it lies within ``text`` (a stop string may have cut the output), snapped
    back to a word boundary; None when nothing of it is left."""
    if c.output_end <= len(text):
        return c
    if c.output_start >= len(text):
        return None
    # In quote coordinates (the quote is the source text from passage_start on), which move with the output's.
    snapped = snap(text, c.quote, c.output_start, len(text), 0, len(text) - c.output_start)
    return _slice(c, snapped[0], snapped[1]) if snapped is not None else None
