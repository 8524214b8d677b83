"""Output text built incrementally from token ids, with each token's char range and stop strings.

Shaped like transformers' ``TextStreamer``: tokens go in with ``put``, only a short window of
recent tokens is ever re-decoded, so a chunk costs O(new tokens) however long the output is.
Citations are not built here (see ``claims.py``); decoding is not done here.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import random
import re
import unicodedata
import weakref
from collections.abc import Sequence
from typing import Any, Protocol, overload

import regex

# A byte-level tokenizer splits a character into at most 4 byte tokens; past this many tokens
# an undecodable tail is real replacement characters, not an unfinished character.
_MAX_PENDING_TOKENS = 6
_JOINERS = "'’-\u200d"  # inside a word when between word characters: "Nero's", "pre-war"


_NON_WORD, _WORD_CHAR, _MARK, _SOLO = 0, 1, 2, 3
# Scripts written without spaces between words: each of their characters is a word of its own
# (Unicode's default word boundaries, UAX #29, break between ideographs), so a quote can start
# and end inside a run of them; else a copy inside "東京タワーは..." had no boundary to snap to.
# Their blocks: Thai, Lao, Myanmar, Khmer, Hiragana + Katakana, Katakana ext., CJK ext. A, CJK,
# CJK compatibility, half-width Katakana, CJK ext. B-G. Only word chars of them count (not "・").
_SOLO_RANGES = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
_SOLO_SCRIPT = re.compile(f"[{_SOLO_RANGES}]")
_KINDS: dict[str, int] = {}  # char -> its kind, filled as chars are met (joined() runs per citation edge)


def _kind(c: str) -> int:
    kind = _KINDS.get(c)
    if kind is None:
        # Letters, digits and combining marks are word chars: "e" + U+0301 is one unit, never split.
        if unicodedata.category(c).startswith("M"):
            kind = _MARK
        elif not c.isascii() and c.isalnum() and _SOLO_SCRIPT.match(c):
            kind = _SOLO
        else:
            kind = _WORD_CHAR if c.isalnum() or c == "_" else _NON_WORD
        if len(_KINDS) < 1 << 16:  # bounded: text of every script at once cannot grow it without end
            _KINDS[c] = kind
    return kind


def joined(text: Chars, i: int) -> bool:
    """Whether position ``i`` of ``text`` is inside a word (no boundary between i-1 and i)."""
    if i <= 0 or i >= len(text):
        return False
    left, right = text[i - 1], text[i]
    r = _kind(right)
    if r == _MARK:
        return True  # a combining mark belongs to the character before it
    lk = _kind(left)
    if lk == _SOLO or r == _SOLO:
        return False  # a boundary between any two chars of a script without spaces
    if lk and r:
        return True
    if left in _JOINERS and i >= 2 and _kind(text[i - 2]) and r:
        return True
    if right in _JOINERS and i + 1 < len(text) and lk and _kind(text[i + 1]):
        return True
    if left.isascii() and right.isascii():
        return False
    return _inside_grapheme(text, i)


GRAPHEME = regex.compile(r"\X")  # an extended grapheme cluster (Unicode UAX #29)


def _inside_grapheme(text: Chars, i: int) -> bool:
    """Whether ``i`` falls inside a grapheme cluster: an emoji with its skin tone ("👍🏽"), a
    flag's two regional indicators, a ZWJ sequence ("👨‍👩‍👧")."""
    lo = i - 1
    while lo > 0 and i - lo < 256 and not text[lo - 1].isascii():
        lo -= 1  # clusters start at an ASCII char (CR LF aside): start the search after one
    window = text[lo : min(len(text), i + 1)]
    for m in GRAPHEME.finditer(window):
        if lo + m.end() >= i:
            return lo + m.end() > i
    return False


# "Nero's" and "pre-war" are one word each; so is each word char of a script without spaces.
_WORD_PART = f"(?:(?![{_SOLO_RANGES}])\\w)+"
_WORD = re.compile(f"(?=[{_SOLO_RANGES}])\\w|{_WORD_PART}(?:['’\\-]{_WORD_PART})*")


def word_count(text: str, at_most: int | None = None) -> int:
    """Words in ``text``: runs of word characters, joined by an inner apostrophe or hyphen.

    ``at_most``: stop counting there (the answer to "at least n words?" reads only that far).
    """
    if at_most is None:
        return len(_WORD.findall(text))
    count, position = 0, 0
    while count < at_most and (word := _WORD.search(text, position)) is not None:
        count, position = count + 1, word.end()  # as finditer goes on (a word is never empty)
    return count


_SPACE = re.compile(r"\s")


def last_word(text: str) -> str | None:
    """The last word of ``text`` as ``findall`` splits it from the start, reading only its tail.

    No word holds whitespace, so splitting from just after a whitespace char gives the same
    words from there on: the tail after one that still holds a word has the same last word.
    """
    size = 32
    while size < len(text):
        tail = text[-size:]
        space = _SPACE.search(tail)
        if space is not None and (words := _WORD.findall(tail, space.end())):
            return str(words[-1])
        size *= 4
    words = _WORD.findall(text)
    return str(words[-1]) if words else None


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for the 256 bytes (GPT-2's scheme), char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_TABLES: weakref.WeakKeyDictionary[Any, list[bytes] | None] = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: Any) -> list[bytes] | None:
    """Each token's bytes when the tokenizer is byte-level BPE (special tokens: none), else None.

    Decoding then is concatenating bytes, which costs O(1) per token; the table is checked
    against ``tokenizer.decode`` on sampled sequences and only used where they agree.
    """
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _build_byte_table(tokenizer)
    with contextlib.suppress(TypeError):
        _TABLES[tokenizer] = table
    return table


_TEXTS: weakref.WeakKeyDictionary[Any, list[str | None]] = weakref.WeakKeyDictionary()


def _token_texts(tokenizer: Any, table: list[bytes]) -> list[str | None]:
    """Each token's text when its bytes are whole UTF-8 characters, else None (built once per tokenizer).

    Decoding such a token with nothing pending needs no incremental decoder call."""
    try:
        return _TEXTS[tokenizer]
    except (KeyError, TypeError):
        pass
    texts: list[str | None] = []
    for piece in table:
        try:
            texts.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)
    with contextlib.suppress(TypeError):
        _TEXTS[tokenizer] = texts
    return texts


def _build_byte_table(tokenizer: Any) -> list[bytes] | None:
    alphabet = _byte_level_alphabet()
    added_tokens = getattr(tokenizer, "added_tokens_decoder", {})
    special = set(tokenizer.all_special_ids) | {i for i, t in added_tokens.items() if getattr(t, "special", False)}
    added = {i: t.content for i, t in added_tokens.items()}
    table: list[bytes] = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special:
            table.append(b"")
        elif i in added:
            table.append(str(added[i]).encode())
        elif isinstance(piece, str) and all(c in alphabet for c in piece):
            table.append(bytes(alphabet[c] for c in piece))
        else:
            return None  # not byte-level BPE (e.g. SentencePiece): decode through the tokenizer
    rng = random.Random(0)
    samples = [[rng.randrange(len(table)) for _ in range(rng.randrange(1, 24))] for _ in range(200)]
    samples.append(tokenizer("Héllo wörld 😀 e\u0301, x. Nero's\n\n42", add_special_tokens=False)["input_ids"])
    for ids in samples:
        expected = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if b"".join(table[i] for i in ids).decode("utf-8", errors="replace") != expected:
            return None
    return table


class Chars(Protocol):
    """Read access to text by index and slice: a ``str`` or a :class:`GrowingText`."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> str: ...


_BLOCK = 256  # GrowingText merges appended pieces into blocks of about this many chars


class GrowingText:
    """Append-only text kept as blocks of a few hundred chars, so appending and reading a range
    cost O(range + block), not O(length) as ``str +=`` on an attribute does."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._offsets: list[int] = []  # char offset of each piece
        self._length = 0
        self._joined: str | None = ""

    def append(self, piece: str) -> None:
        if not piece:
            return
        pieces = self._pieces
        if pieces and len(pieces[-1]) < _BLOCK:
            block = pieces.pop()
            block += piece  # the only reference: CPython grows it in place
            pieces.append(block)
        else:
            pieces.append(piece)
            self._offsets.append(self._length)
        self._length += len(piece)
        self._joined = None

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        if self._joined is None:
            self._joined = "".join(self._pieces)
            self._pieces, self._offsets = [self._joined], [0]
        return self._joined

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> str: ...

    def __getitem__(self, i: int | slice) -> str:
        if isinstance(i, int):
            if i < 0:
                i += self._length
            if not 0 <= i < self._length:
                raise IndexError(i)
            start, stop = i, i + 1
        else:
            start, stop, _ = i.indices(self._length)
        if stop <= start:
            return ""
        if self._offsets and start >= self._offsets[-1]:  # recent text: the last piece alone
            last = self._offsets[-1]
            return self._pieces[-1][start - last : stop - last]
        first = bisect.bisect_right(self._offsets, start) - 1
        offset = self._offsets[first]
        if stop - offset <= len(self._pieces[first]):  # within one block
            return self._pieces[first][start - offset : stop - offset]
        parts = []
        k = first
        while k < len(self._pieces) and self._offsets[k] < stop:
            parts.append(self._pieces[k])
            k += 1
        return "".join(parts)[start - offset : stop - offset]


class IncrementalDetokenizer:
    """Decodes a growing token sequence; ``text`` only ever grows, each token gets a char range.

    ``str(text)`` equals ``tokenizer.decode(tokens, skip_special_tokens=True)`` once
    :meth:`flush` has run, except at the very end: when the output stops inside a multi-byte
    character (``max_new_tokens`` cut it), that character's bytes are dropped instead of being
    decoded as U+FFFD; its tokens (``dropped``) get an empty char range at the end of ``text``.
    A token that ends inside a multi-byte character stays pending until the character is
    complete; the tokens of that character then share one char range.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._bytes = token_bytes(tokenizer)
        self._texts = _token_texts(tokenizer, self._bytes) if self._bytes is not None else []
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = False  # whether the decoder holds the first bytes of a character
        self.tokens: list[int] = []
        self.text = GrowingText()
        self.starts: list[int] = []  # char range of each committed token in ``text``
        self.ends: list[int] = []
        self.committed = 0  # how many tokens have their text in ``text``
        self.dropped = 0  # last tokens whose unfinished character flush() dropped (they are committed)
        self._prefix = 0  # the decode window starts at this token (a little before ``committed``)
        self._prefix_text = ""  # decode(tokens[_prefix:committed])
        self.appended = ""  # the text the last put() or flush() added

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def put(self, ids: Sequence[int]) -> int:
        """Append token ids; returns how many tokens were committed to ``text`` by this call."""
        before, length = self.committed, len(self.text)
        table = self._bytes
        if table is not None:  # the hot path: a table lookup and an incremental UTF-8 decode a token
            utf8, size, tokens, starts, ends = self._utf8, len(table), self.tokens, self.starts, self.ends
            texts, held = self._texts, self._held
            pending = len(tokens) - before  # tokens of an unfinished character, from earlier calls
            pieces = []
            for t in ids:  # inlined commits: this runs once per generated token
                tokens.append(t)
                pending += 1
                # Whole characters with no bytes held: the text is known; else the incremental decoder.
                new = texts[t] if not held and 0 <= t < size else None
                if new is None:
                    new = utf8.decode(table[t] if 0 <= t < size else b"")
                    held = bool(utf8.getstate()[0])
                if new or not held:  # else the token ends inside a character
                    end = length + len(new)
                    if pending == 1:
                        starts.append(length)
                        ends.append(end)
                    else:  # the tokens of one multi-byte character share its char range
                        starts.extend([length] * pending)
                        ends.extend([end] * pending)
                    pieces.append(new)
                    length, pending = end, 0
            self.committed, self._held = len(tokens) - pending, held
            self.appended = pieces[0] if len(pieces) == 1 else "".join(pieces)
            self.text.append(self.appended)
            return self.committed - before
        self.tokens.extend(ids)
        for end in range(self.committed + 1, len(self.tokens) + 1):
            if end > self.committed:
                self._try_commit(end, force=end - self.committed >= _MAX_PENDING_TOKENS)
        self.appended = self.text[length : len(self.text)]
        return self.committed - before

    def flush(self) -> int:
        """Commit whatever is pending (the output has ended); returns how many tokens that was.

        Pending tokens that end inside a character (the output was cut there) are committed
        with no text, and counted in ``dropped``: the text never ends in a U+FFFD of a cut character.
        """
        before, length = self.committed, len(self.text)
        if self._bytes is not None:
            # The decoder holds only the bytes of an unfinished character: all the pending tokens are its.
            self._held = False
            if self._utf8.decode(b"", final=True):
                self._drop_pending()
        elif len(self.tokens) > self.committed:
            # Every pending token left the text ending in U+FFFD (else it was committed): the tokens of an
            # unfinished character (without their bytes, a real invalid byte among them cannot be told apart).
            window = self._decode(self.tokens[self._prefix :])
            if window.startswith(self._prefix_text) and window.endswith("\ufffd"):
                self._drop_pending()
            else:
                self._try_commit(len(self.tokens), force=True)
        self.appended = self.text[length : len(self.text)]
        return self.committed - before

    def _drop_pending(self) -> None:
        self.dropped = len(self.tokens) - self.committed
        self._commit("", self.dropped)

    def _commit(self, new: str, count: int) -> None:
        start = len(self.text)
        self.text.append(new)
        if count == 1:
            self.starts.append(start)
            self.ends.append(start + len(new))
        else:
            self.starts.extend([start] * count)
            self.ends.extend([start + len(new)] * count)
        self.committed += count

    def _try_commit(self, end: int, *, force: bool) -> None:
        window = self._decode(self.tokens[self._prefix : end])
        if not window.startswith(self._prefix_text):
            # A tokenizer whose decode is not prefix-stable (rare): decode the whole output once.
            window, self._prefix, self._prefix_text = self._decode(self.tokens[:end]), 0, str(self.text)
        new = window[len(self._prefix_text) :]
        if new.endswith("\ufffd") and not force:
            return  # the last token ends inside a character
        first = self.committed
        self._commit(new, end - first)
        self._prefix, self._prefix_text = first, self._decode(self.tokens[first:end])


class StopScanner:
    """Finds the first stop string in a growing text, given only the text appended each time."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        # A stop string may straddle two feeds: keep this many chars unreleased and rescan them.
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""  # the last ``hold`` chars fed
        self._length = 0  # chars fed so far

    def feed(self, new: str) -> int | None:
        """Append ``new`` to the text; the char index of the earliest stop string that ends in it, or None."""
        base = self._length - len(self._tail)
        self._length += len(new)
        if not self.stops or not new:
            return None
        window = self._tail + new
        self._tail = window[-self.hold :] if self.hold else ""  # a window shorter than hold is kept whole
        if len(self.stops) == 1:  # the usual case, and this runs once per step
            first = window.find(self.stops[0])
        else:
            found = [i for i in map(window.find, self.stops) if i >= 0]
            first = min(found) if found else -1
        return base + first if first >= 0 else None

    def releasable(self, length: int) -> int:
        """How many chars of a text of ``length`` can be shown: all but a possible partial stop string."""
        return length - self.hold if self.stops else length
