"""NEST's second stage: token-level keys/values from the LM over the retrieved passages.

The key of position t is ``hidden_states[-2]`` at t, its value the token at t+1 (NEST,
Li et al. 2024, Sec. 3.1). ``PassageEncoder`` encodes each passage once per process (LRU cache bounded in bytes,
optionally backed by keys on disk: ``KeyStore``); ``TokenIndex`` holds one query's keys and
answers squared-L2 k-NN searches with copied positions masked out. No decoding here.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .decode_thread import call_on_cpu
from .fork_safe import ForkSafeLock
from .lm import LoadedLM
from .passages.types import Passage


@dataclass(frozen=True)
class EncodedPassage:
    """The LM's view of one passage: tokens of ``"{title} {text}"``, their char spans, and keys."""

    token_ids: torch.Tensor  # (L,) int64, on CPU
    char_spans: np.ndarray  # (L, 2) int64: token char range in the encoded string
    text_offset: int  # where passage.text starts in the encoded string
    first_key: int  # keys cover positions first_key .. L-2 (their values are text tokens)
    keys: torch.Tensor  # (L - 1 - first_key, D), on CPU

    @property
    def nbytes(self) -> int:
        return int(self.keys.numel() * self.keys.element_size() + self.token_ids.numel() * 8 + self.char_spans.nbytes)


def encoded_string(p: Passage) -> tuple[str, int]:
    """What the LM reads for a passage, and where the passage text starts in it."""
    return (f"{p.title} {p.text}", len(p.title) + 1) if p.title else (p.text, 0)


WINDOW_OVERLAP = 64  # tokens of left context a long passage's next window re-reads


class PassageEncoder:
    """Encodes passages into token keys with the LM, caching by (model, passage content)."""

    def __init__(
        self,
        lm: LoadedLM,
        *,
        max_cache_bytes: int = 1 << 30,
        batch_size: int = 16,
        max_passage_tokens: int = 512,
        key_store: KeyStore | None = None,
        progress: bool = False,
    ) -> None:
        """``key_store``: read keys from it first; a writable one also keeps every new encoding.
        ``progress``: show a progress bar (stderr) while passages are encoded, unless a call says otherwise."""
        self.lm = lm
        self.progress = progress
        self.max_cache_bytes = max_cache_bytes
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.key_store = key_store
        self._cache: OrderedDict[str, EncodedPassage] = OrderedDict()
        self._cache_bytes = 0
        self._lock = ForkSafeLock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every cached passage (the on-disk key store is untouched)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    def _cache_key(self, p: Passage) -> str:
        return f"{self.lm.name}\x00{p.content_key}"

    def encode(self, passages: Sequence[Passage], *, progress: bool | None = None) -> list[EncodedPassage]:
        """Encoded passages in the given order; only passages not cached are run through the LM.

        ``progress``: None uses the encoder's own setting.
        """
        found: dict[int, EncodedPassage] = {}
        todo: list[int] = []
        with self._lock:
            for i, p in enumerate(passages):
                hit = self._cache.get(self._cache_key(p))
                if hit is None and self.key_store is not None:
                    hit = self.key_store.get(p.content_key)
                    if hit is not None and not _covers(hit, p):
                        hit = None  # stored by a version that cut passages at 512 tokens: read it again
                    if hit is not None:
                        self._put(self._cache_key(p), hit)
                if hit is not None:
                    self._cache.move_to_end(self._cache_key(p))
                    found[i] = hit
                    self.hits += 1
                else:
                    todo.append(i)
            self.misses += len(todo)
        show = self.progress if progress is None else progress
        todo_passages = [passages[i] for i in todo]
        # On a CPU on the decode thread, where the forwards run (decode_thread.py says why).
        fresh = call_on_cpu(self.lm.device, lambda: self._encode_uncached(todo_passages, show)) if todo else []
        for i, enc in zip(todo, fresh, strict=True):
            found[i] = enc
            with self._lock:
                self._put(self._cache_key(passages[i]), enc)
        if fresh and self.key_store is not None and self.key_store.writable:
            self.key_store.add([passages[i] for i in todo], fresh)
        return [found[i] for i in range(len(passages))]

    def _put(self, key: str, enc: EncodedPassage) -> None:
        if key in self._cache:
            return
        self._cache[key] = enc
        self._cache_bytes += enc.nbytes
        while self._cache_bytes > self.max_cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes

    @torch.inference_mode()
    def _encode_uncached(self, passages: Sequence[Passage], progress: bool) -> list[EncodedPassage]:
        """Every token of every passage gets a key. A passage longer than ``max_passage_tokens``
        is read in overlapping windows of that many tokens (``WINDOW_OVERLAP`` tokens of left
        context carried into each next window); each position's key comes from the first window
        that gives it that much context (or starts the passage)."""
        from tqdm.auto import tqdm

        tok = self.lm.tokenizer
        prepared = []
        windows: list[tuple[int, int]] = []  # (passage index, first token) of each window read
        size = self.max_passage_tokens
        stride = max(1, size - min(WINDOW_OVERLAP, size // 2))
        for i, p in enumerate(passages):
            text, text_offset = encoded_string(p)
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            token_ids = enc["input_ids"]
            prepared.append((token_ids, np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2), text_offset))
            windows += [(i, start) for start in range(0, max(1, len(token_ids) - size + stride), stride)]
        hidden_of: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in range(len(passages))}
        # Longest first, so padding inside a batch is small and memory peaks early.
        order = sorted(windows, key=lambda w: -len(prepared[w[0]][0][w[1] : w[1] + size]))
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="Encoding passages", unit="batch", disable=not progress):
            rows = [prepared[i][0][start : start + size] for i, start in batch]
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, tokens in enumerate(rows):
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[row, : len(tokens)] = 1
            # The backbone alone: keys need no logits, and the LM head over every position is costly.
            hidden = self.lm.model.base_model(
                input_ids=ids.to(self.lm.device),
                attention_mask=mask.to(self.lm.device),
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states[-2]  # (B, T, D)
            hidden = hidden.float().cpu()
            for row, ((i, start), tokens) in enumerate(zip(batch, rows, strict=True)):
                keep_from = 0 if start == 0 else size - stride  # positions an earlier window read with less context
                hidden_of[i].append((start + keep_from, hidden[row, keep_from : len(tokens)]))
        out = []
        for i, (token_ids, spans, text_offset) in enumerate(prepared):
            states = torch.cat([h for _, h in sorted(hidden_of[i], key=lambda w: w[0])])  # (n, D)
            first_key = _first_key_position(spans, text_offset)
            n = len(token_ids)
            out.append(
                EncodedPassage(
                    token_ids=torch.tensor(token_ids, dtype=torch.long),
                    char_spans=spans,
                    text_offset=text_offset,
                    first_key=first_key,
                    keys=states[first_key : max(first_key, n - 1)].clone(),
                )
            )
        return out


def _covers(enc: EncodedPassage, p: Passage) -> bool:
    """Whether an encoding's tokens reach the end of the passage (older versions cut long ones)."""
    text, _ = encoded_string(p)
    return len(enc.char_spans) > 0 and int(enc.char_spans[-1, 1]) >= len(text.rstrip())


def _first_key_position(spans: np.ndarray, text_offset: int) -> int:
    """First key position whose value (the next token) lies in the passage text, not the title."""
    for t in range(len(spans)):
        if spans[t, 1] > text_offset:
            return max(t - 1, 0)
    return max(len(spans) - 1, 0)


_CONTINUES = ",;:.!?)]}'’-–—…"  # a text starting with one of these goes on from text before it


def opens_a_sentence(text: str) -> bool:
    """Whether ``text`` starts as a sentence does: not with a lowercase letter or a closing mark."""
    first = text.lstrip()[:1]
    return bool(first) and not first.islower() and first not in _CONTINUES


class TokenIndex:
    """One query's token-level datastore: keys of the retrieved passages, searchable by L2."""

    def __init__(
        self,
        encoded: Sequence[EncodedPassage],
        device: torch.device,
        relevance: torch.Tensor | None = None,
        sources: Sequence[Passage] | None = None,
    ) -> None:
        """``relevance``: per passage, 0-1 relative to the best (see ``relevance.py``).

        ``sources``: the passages that were encoded, in the same order. Passages of one document
        with char offsets that overlap (overlapping chunks) hold the same text twice: each such
        key is searched and copied once, in the first passage that holds it.
        """
        self.passages = list(encoded)
        self.device = device
        self.relevance = (relevance if relevance is not None else torch.ones(len(self.passages))).to(device)
        counts = [e.keys.shape[0] for e in self.passages]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if sum(counts) == 0:
            self.keys = torch.zeros((0, 0), device=device)
            self.values = torch.zeros(0, dtype=torch.long, device=device)
        else:
            # float32 once here, not per search (a bfloat16 model's keys were converted every step)
            self.keys = torch.cat([e.keys for e in self.passages if e.keys.shape[0]]).to(device, torch.float32)
            self.values = torch.cat(
                [e.token_ids[e.first_key + 1 : e.first_key + 1 + c] for e, c in zip(self.passages, counts, strict=True)]
            ).to(device)
        self.key_passage = torch.repeat_interleave(
            torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long)
        ).to(device)
        self.key_position = torch.cat(
            [torch.arange(e.first_key, e.first_key + c) for e, c in zip(self.passages, counts, strict=True)]
            or [torch.zeros(0, dtype=torch.long)]
        ).to(device)
        # The token each key was computed at (the left context a copy would continue from), and
        # whether the key's value is the first token of the passage text (a copy from there starts it).
        self.key_tokens = torch.cat(
            [e.token_ids[e.first_key : e.first_key + c] for e, c in zip(self.passages, counts, strict=True)]
            or [torch.zeros(0, dtype=torch.long)]
        ).to(device)
        # A chunk that a splitter cut mid-sentence ("which was performed ...") does not start one.
        opens = [True] * len(self.passages) if sources is None else [opens_a_sentence(p.text) for p in sources]
        self.key_starts_text = torch.cat(
            [
                (torch.arange(c) == 0)
                & bool(opens[i] and e.text_offset > 0 and e.char_spans[e.first_key, 1] <= e.text_offset)
                for i, (e, c) in enumerate(zip(self.passages, counts, strict=True))
            ]
            or [torch.zeros(0, dtype=torch.bool)]
        ).to(device)
        self.key_sq_norms = (self.keys**2).sum(-1) if len(self) else torch.zeros(0, device=device)
        self.masked = torch.zeros(len(self), dtype=torch.bool, device=device)
        # canonical[k]: the key holding k's text first (k itself unless an earlier passage overlaps it).
        self.canonical = _canonical_keys(self.passages, self.offsets, sources)
        self.duplicate = torch.from_numpy(self.canonical != np.arange(len(self))).to(device)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def search(
        self, queries: torch.Tensor, r: int, only: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared L2 distances (n, k) ascending and key indices (n, k) of the k = min(r, N) nearest keys.

        Masked (copied) keys, and keys outside ``only`` (bool (N,)) when given, come last
        with infinite distance.
        """
        q = queries.to(self.device, torch.float32)  # (n, D)
        d = (q**2).sum(-1, keepdim=True) - 2 * q @ self.keys.T + self.key_sq_norms  # (n, N)
        unusable = self.masked | self.duplicate
        if only is not None:
            unusable = unusable | ~only
        d = d.clamp_(min=0.0).masked_fill_(unusable, float("inf"))
        k = min(r, len(self))
        dist, idx = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        return dist, idx

    def key_index(self, passage: int, position: int) -> int | None:
        """Index of the key at ``position`` of ``passage``, if it has one."""
        e = self.passages[passage]
        local = position - e.first_key
        if 0 <= local < e.keys.shape[0]:
            return int(self.offsets[passage] + local)
        return None

    def mask_copied(self, passage: int, token_positions: Sequence[int]) -> None:
        """Mask the keys whose values are the given (copied) token positions of ``passage``."""
        for pos in token_positions:
            k = self.key_index(passage, pos - 1)
            if k is not None:
                self.masked[int(self.canonical[k])] = True

    def is_copied(self, passage: int, token_position: int) -> bool:
        """Whether the token at ``token_position`` of ``passage`` (or the same text in an overlapping
        passage) was copied (its key is masked)."""
        k = self.key_index(passage, token_position - 1)
        return k is not None and bool(self.masked[int(self.canonical[k])])

    @property
    def all_masked(self) -> bool:
        """Whether no key can be found any more (all copied)."""
        return bool((self.masked | self.duplicate).all().item()) if len(self) else True


def _canonical_keys(
    passages: Sequence[EncodedPassage], offsets: np.ndarray, sources: Sequence[Passage] | None
) -> np.ndarray:
    """Per key, the first key whose value is the same document character (overlapping chunks)."""
    canonical = np.arange(int(offsets[-1]), dtype=np.int64)
    if sources is None:
        return canonical
    first_at: dict[tuple[str, int, int], int] = {}
    for i, (enc, src) in enumerate(zip(passages, sources, strict=True)):
        if src.document_id is None or src.start is None:
            continue
        n = enc.keys.shape[0]
        values = enc.token_ids[enc.first_key + 1 : enc.first_key + 1 + n].tolist()
        # Document char where each key's value token starts.
        starts = (enc.char_spans[enc.first_key + 1 : enc.first_key + 1 + n, 0] - enc.text_offset + src.start).tolist()
        for local, (value, start) in enumerate(zip(values, starts, strict=True)):
            if start < src.start:
                continue  # a title token
            key = int(offsets[i]) + local
            canonical[key] = first_at.setdefault((src.document_id, start, value), key)
    return canonical


KEY_STORE_FORMAT_VERSION = 2
_STORE_FILE = "keystore.json"
_ARRAYS = ("keys", "tokens", "spans")


class KeyStore:
    """Passage keys on disk (numpy + JSON, no pickle), reused across processes and runs.

    Layout: ``keystore.json`` (format version, model, dim) and parts ``part-*/``, each written
    once and atomically: ``manifest.json`` (per-passage rows and a CRC-32 of every array file
    and of the rows), ``keys.npy`` (float32, as fresh keys: a stored passage gives bit-identical
    distances), ``tokens.npy`` (int64), ``spans.npy`` (int64 (L, 2)); arrays are memory-mapped.
    Every part is verified on open. Build one for a corpus with :meth:`build`; a store opened
    with ``writable=True`` also gains a part whenever its encoder encodes passages it lacks.

    Raises (on open): IndexNotFoundError (no store there), CorruptStoreError (a truncated or
    altered part, another format version, or keys of another model).
    """

    def __init__(self, directory: Path, model: str, dim: int, *, writable: bool = False) -> None:
        self.directory = directory
        self.model = model
        self.dim = dim
        self.writable = writable
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._entries: dict[str, tuple[int, list[int]]] = {}  # content key -> (part, row)
        self._lock = ForkSafeLock()
        for part in sorted(directory.glob("part-*")):
            self._load_part(part)

    @classmethod
    def open(
        cls, directory: str | Path, *, model: str | None = None, dim: int | None = None, writable: bool = False
    ) -> KeyStore:
        """Open the store in ``directory``; ``writable`` creates it (with ``model`` and ``dim``) if absent."""
        from .errors import CorruptStoreError, IndexNotFoundError

        d = Path(directory)
        head = d / _STORE_FILE
        if not head.is_file():
            if not writable:
                raise IndexNotFoundError(
                    f"{d} is not a NEST key store (no {_STORE_FILE}); build one with `nest index`."
                )
            if model is None or dim is None:
                raise ValueError("Creating a key store needs the model name and the key dimension.")
            d.mkdir(parents=True, exist_ok=True)
            _write_atomically(
                head, json.dumps({"format_version": KEY_STORE_FORMAT_VERSION, "model": model, "dim": dim})
            )
        try:
            meta = json.loads(head.read_text(encoding="utf-8"))
            version, stored_model, stored_dim = meta.get("format_version"), str(meta["model"]), int(meta["dim"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptStoreError(f"{head} is unreadable ({e}); delete {d} and rebuild it.") from e
        if version != KEY_STORE_FORMAT_VERSION:
            raise CorruptStoreError(
                f"{d} is a key store of format {version}, this version reads {KEY_STORE_FORMAT_VERSION}; "
                "delete it and rebuild it."
            )
        if model is not None and stored_model != model:
            raise CorruptStoreError(
                f"{d} holds keys of model {stored_model!r}, not {model!r}; rebuild it for this model."
            )
        return cls(d, stored_model, stored_dim, writable=writable)

    @classmethod
    def for_model(cls, store: KeyStore | str | Path, model: str) -> KeyStore:
        """``store`` itself when it is an open store, else the store in that directory (read-only).

        Raises CorruptStoreError when it holds the keys of another model than ``model``, and
        what :meth:`open` raises for a directory.
        """
        from .errors import CorruptStoreError

        if not isinstance(store, KeyStore):
            return cls.open(store, model=model)
        if store.model != model:
            raise CorruptStoreError(
                f"The key store in {store.directory} holds keys of model {store.model!r}, not {model!r}; "
                "open or build one for this model."
            )
        return store

    @classmethod
    def build(
        cls, encoder: PassageEncoder, passages: Sequence[Passage], directory: str | Path, *, progress: bool = True
    ) -> KeyStore:
        """Encode those of ``passages`` the store in ``directory`` lacks with ``encoder``, and write them."""
        store = cls.open(directory, model=encoder.lm.name, dim=encoder.lm.hidden_size, writable=True)
        unique = [p for p in {p.content_key: p for p in passages}.values() if p.content_key not in store._entries]
        chunk = 256
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            store.add(part, encoder.encode(part, progress=progress))
        return store

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, content_key: object) -> bool:
        return content_key in self._entries

    def get(self, content_key: str) -> EncodedPassage | None:
        """The stored encoding of the passage with this ``content_key``, or None."""
        found = self._entries.get(content_key)
        if found is None:
            return None
        part, (k0, nk, t0, nt, text_offset, first_key) = found
        keys, tokens, spans = self._parts[part]
        return EncodedPassage(
            token_ids=torch.from_numpy(np.array(tokens[t0 : t0 + nt], dtype=np.int64)),
            char_spans=np.array(spans[t0 : t0 + nt], dtype=np.int64),
            text_offset=int(text_offset),
            first_key=int(first_key),
            keys=torch.from_numpy(np.array(keys[k0 : k0 + nk], dtype=np.float32)),
        )

    def add(self, passages: Sequence[Passage], encoded: Sequence[EncodedPassage]) -> int:
        """Write the passages the store lacks as one new part; returns how many were added.

        A read-only store, or a directory that cannot be written (the error is swallowed: the
        keys stay in memory only), adds nothing.
        """
        if not self.writable:
            return 0
        with self._lock:
            todo: dict[str, EncodedPassage] = {}
            for p, e in zip(passages, encoded, strict=True):
                if p.content_key not in self._entries:
                    todo[p.content_key] = e
            if not todo:
                return 0
            try:
                part = _write_part(self.directory, self.dim, todo)
            except OSError:
                self.writable = False
                return 0
            self._load_part(part)
            return len(todo)

    def _load_part(self, part: Path) -> None:
        from .errors import CorruptStoreError

        try:
            manifest = json.loads((part / "manifest.json").read_text(encoding="utf-8"))
            entries: dict[str, list[int]] = manifest["entries"]
            sums: dict[str, int] = manifest["checksums"]
            for name in _ARRAYS:
                if _crc_file(part / f"{name}.npy") != sums[name]:
                    raise CorruptStoreError(f"{part / name}.npy does not match its checksum")
            if _crc_bytes(json.dumps(entries, sort_keys=True).encode()) != sums["entries"]:
                raise CorruptStoreError(f"{part}/manifest.json's entries do not match their checksum")
            arrays = tuple(np.load(part / f"{name}.npy", mmap_mode="r") for name in _ARRAYS)
        except CorruptStoreError as e:
            raise CorruptStoreError(f"Key store {self.directory} is corrupt: {e}; delete it and rebuild it.") from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptStoreError(
                f"Key store {self.directory} is corrupt or truncated ({part.name}: {e}); delete it and rebuild it."
            ) from e
        keys = arrays[0]
        if keys.dtype != np.float32 or keys.ndim != 2 or keys.shape[1] != self.dim:
            raise CorruptStoreError(f"Key store {self.directory}: {part.name} has keys {keys.dtype} {keys.shape}.")
        index = len(self._parts)
        self._parts.append(arrays)
        for content_key, row in entries.items():
            self._entries.setdefault(content_key, (index, row))


def _crc_bytes(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _crc_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_part(directory: Path, dim: int, encoded: dict[str, EncodedPassage]) -> Path:
    """Write one part in a temporary directory and rename it into place (readers never see half a part)."""
    entries: dict[str, list[int]] = {}
    key_row = tok_row = 0
    for content_key, e in encoded.items():
        n_keys, n_tok = e.keys.shape[0], e.token_ids.shape[0]
        entries[content_key] = [key_row, n_keys, tok_row, n_tok, e.text_offset, e.first_key]
        key_row, tok_row = key_row + n_keys, tok_row + n_tok
    values = list(encoded.values())
    arrays = {
        "keys": np.concatenate([e.keys.float().numpy() for e in values]) if key_row else np.zeros((0, dim), np.float32),
        "tokens": np.concatenate([e.token_ids.numpy() for e in values]).astype(np.int64),
        "spans": np.concatenate([e.char_spans for e in values]).astype(np.int64).reshape(-1, 2),
    }
    tmp = directory / f".part-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        sums = {}
        for name, array in arrays.items():
            data = _npy_bytes(np.ascontiguousarray(array))
            (tmp / f"{name}.npy").write_bytes(data)
            sums[name] = _crc_bytes(data)
        sums["entries"] = _crc_bytes(json.dumps(entries, sort_keys=True).encode())
        manifest = {"format_version": KEY_STORE_FORMAT_VERSION, "entries": entries, "checksums": sums}
        (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        target = directory / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
