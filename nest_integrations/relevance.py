"""How relevant each retrieved passage is to the query, on a 0-1 scale relative to the best one.

NEST's token search matches hidden states, which encode syntax more than topic: after
"Robert Boulter is an" the nearest keys can be "Clayton Kershaw is an ..." in another
article. The passage relevance computed here lets the decoder leave passages that
the query is not about out of the token search. Two signals, both relative to the best
passage of the same query:

- ``score``: the first stage's scores, min-max scaled (many retrievers return none);
- ``query_terms``: the share of the query's content words, weighted by rarity among the
  retrieved passages, that the passage (title and text) contains. It needs no scores, so
  it works over any vector store.

Both are relative, so they cannot tell when *no* retrieved source is about the query. For
that, :func:`source_coverage` is absolute: the share of the query's key terms (names and
numbers) that the best source contains. A source without the names the query asks about
is not about it, whatever the phrasing of the question.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import torch

from .passages.stopwords import stopwords
from .passages.types import Passage

RelevanceSignal = Literal["score", "query_terms", "both", "score_led"]

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def relative_scores(scores: Sequence[float]) -> torch.Tensor:
    """First-stage scores min-max scaled to [0, 1] (1: the best passage); all ones when they tie."""
    s = torch.tensor(list(scores), dtype=torch.float32)
    if not s.numel():
        return s
    spread = s.max() - s.min()
    return (s - s.min()) / spread if spread > 0 else torch.ones_like(s)


def _words(text: str) -> list[str]:
    """Words of ``text``, NFC-normalised first: "Re\u0301noir" (decomposed) is the word "Rénoir"."""
    return _WORD.findall(unicodedata.normalize("NFC", text))


def _terms(text: str) -> set[str]:
    stop = stopwords()
    return {w for w in _words(text.lower()) if w not in stop}


def query_term_overlap(query: str, passages: Sequence[Passage]) -> torch.Tensor:
    """Rarity-weighted share of the query's content words found in each passage, divided by the best share.

    A word found in every retrieved passage says nothing about which one the query is about,
    so words are weighted by an inverse document frequency over these passages. All ones
    when the query has no content words or no passage contains any of them.
    """
    n = len(passages)
    wanted = _terms(query)
    if not n or not wanted:
        return torch.ones(n)
    contents = [_terms(f"{p.title} {p.text}") for p in passages]
    idf = {w: math.log(1 + (n + 1) / (0.5 + sum(w in c for c in contents))) for w in wanted}
    total = sum(idf.values())
    share = torch.tensor([sum(idf[w] for w in wanted & c) / total for c in contents], dtype=torch.float32)
    best = share.max()
    return share / best if best > 0 else torch.ones(n)


def _source(position: int, passage: Passage) -> str:
    """The source document a passage belongs to; a passage with no document id or title is its own."""
    return passage.document_id or passage.title or f"\x00{position}"


_ASCII_DIGIT = re.compile("[0-9]")  # in ASCII text, where ``str.isdigit`` holds


def key_terms(query: str, *, first_words: bool = False) -> set[str]:
    """The query's names and numbers, lowercased: capitalised words that do not open a sentence, and words with a digit.

    A sentence's first word is capitalised whatever it is ("Tell", "Which"), so it is not
    taken as a name unless ``first_words`` (then it counts when capitalised, as any other word).
    Stopwords never count ("I", "You"). Empty for an all-lowercase query.
    """
    terms: set[str] = set()
    query = query.strip()
    one_sentence = "." not in query and "!" not in query and "?" not in query  # no split needed (most claims)
    for sentence in [query] if one_sentence else _SENTENCE_END.split(query):
        words = _words(sentence)
        # Set comprehensions, and the per-word digit test only where a digit may be: this runs once per claim.
        terms |= {w.lower() for w in words[0 if first_words else 1 :] if w[0].isupper()}
        if not sentence.isascii() or _ASCII_DIGIT.search(sentence):
            terms |= {w.lower() for w in words if not w.isalpha() and any(map(str.isdigit, w))}
    return terms - stopwords()


def source_coverage(query: str, passages: Sequence[Passage]) -> float | None:
    """The largest share of the query's key terms that one source's retrieved passages contain; None without key terms.

    A source is a document (as in :func:`per_source`); its passages' titles and texts count
    together. 1.0 when some source names everything the query names. 0.0 for a query without
    a word ("?!?", "..."): it is about nothing a source says (a break test's case: such a query
    was ranked by its embedding alone and copied from).
    """
    if not _WORD.search(query):
        return 0.0
    wanted = key_terms(query)
    if not wanted:
        return None
    found = _key_terms_by_source(wanted, passages)
    return max((len(w) / len(wanted) for w in found.values()), default=0.0)


def _key_terms_by_source(wanted: set[str], passages: Sequence[Passage]) -> dict[str, set[str]]:
    """Source (as :func:`per_source` groups passages) -> which of the ``wanted`` key terms its
    passages' titles and texts contain."""
    found: dict[str, set[str]] = {}
    for i, p in enumerate(passages):
        words = found.setdefault(_source(i, p), set())
        words.update(w for w in _words(f"{p.title} {p.text}".lower()) if w in wanted)
    return found


def per_source(relevance: torch.Tensor, passages: Sequence[Passage]) -> torch.Tensor:
    """Each passage gets the best relevance among the retrieved passages of its source document.

    Wrong sources are a matter of documents: the passage that continues a relevant one, or
    that a long query shares few words with, belongs to a relevant source all the same.
    Passages without a document id or title are their own source.
    """
    sources = [_source(i, p) for i, p in enumerate(passages)]
    best: dict[str, float] = {}
    for source, r in zip(sources, relevance.tolist(), strict=True):
        best[source] = max(best.get(source, 0.0), r)
    return torch.tensor([best[s] for s in sources], dtype=torch.float32)


def passage_relevance(
    query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None, signal: RelevanceSignal
) -> torch.Tensor:
    """Relevance in [0, 1] per passage (1: its source is as relevant as the best) from the chosen signal.

    ``both`` takes the smaller of the two, so a passage must look relevant to both, except in
    a source that names everything the query names (every key term): scores, min-max scaled,
    always put the last-ranked source at 0, and must not drop the source the query asks about
    ("Tell me about Lars Berg." ranked below Anna Berg's biography). Without scores (None, any
    None, or all equal) the score signal says nothing and counts as 1.

    ``score_led`` is ``both``, but when the first stage's best-scored source names every key
    term, the scores are trusted within its article: the other passages with its title that name
    everything (the sibling paragraphs of one article, which share its names) are ranked by score
    too, not rated alike. Sources with another title keep the names guard (a break test: "Tell
    me about Lars Berg." with his page in a file titled "bio2" and his sister's page, which
    mentions him, scoring best), and so does a passage that opens with every key term ("Lars
    Berg (born 1954) is ...": about them, whatever its title; a second break test gave both
    pages the title "Biography"), and so does every passage without a title (nothing says what
    it is about). A page whose title names the query ("Lars Berg", when Anna Berg's page, which
    mentions him, scores best) has another title than the best-scored one, so it is kept.
    """
    given = [s for s in scores or () if s is not None]
    by_score = relative_scores(given) if scores is not None and len(given) == len(scores) else torch.ones(len(passages))
    if signal == "score":
        return per_source(by_score, passages)
    by_terms = query_term_overlap(query, passages)
    if signal == "query_terms":
        return per_source(by_terms, passages)
    both = torch.minimum(by_score, by_terms)
    wanted = key_terms(query)
    named = _names_everything(wanted, passages)
    best = int(torch.argmax(by_score)) if signal == "score_led" and len(passages) else -1
    if best >= 0 and bool(named[best]):
        # Only the best-scored passage's own article (its title) is ranked by score; other
        # sources that name everything keep the guard (a generic title such as a file name
        # says nothing about what a page is about), and so does a page that opens with them.
        article = passages[best].title.strip()
        guarded = [not p.title.strip() or p.title.strip() != article or _opens_with(wanted, p.text) for p in passages]
        named = named & torch.tensor(guarded, dtype=torch.bool)
    return per_source(torch.where(named, by_terms, both), passages)


def _names_everything(wanted: set[str], passages: Sequence[Passage]) -> torch.Tensor:
    """(n,) bool: the passage's source (its passages together) holds every one of the query's key
    terms ``wanted`` (False for all when there are none)."""
    if not wanted:
        return torch.zeros(len(passages), dtype=torch.bool)
    found = _key_terms_by_source(wanted, passages)
    return torch.tensor([found[_source(i, p)] >= wanted for i, p in enumerate(passages)], dtype=torch.bool)


def _opens_with(wanted: set[str], text: str) -> bool:
    """Whether ``text`` opens with every key term (within one word more): a page about them
    ("Lars Berg (born 1954) is ..."), whatever its title."""
    return wanted <= {w.lower() for w in _words(text)[: len(wanted) + 1]}
