"""NEST's second stage: token-level keys/values from the LM over the retrieved passages.

The key of position t is ``hidden_states[-2]`` at t, its value the token at t+1 (DESIGN.md,
step 2). ``PassageEncoder`` encodes each passage once per process (LRU cache bounded in bytes,
optionally backed by precomputed keys on disk); ``TokenIndex`` holds one query's keys and
answers squared-L2 k-NN searches with copied positions masked out. No decoding here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
    ) -> None:
        self.lm = lm
        self.max_cache_bytes = max_cache_bytes
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.key_store = key_store
        self._cache: OrderedDict[str, EncodedPassage] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every cached passage (the on-disk key store is untouched)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    def _cache_key(self, p: Passage) -> str:
        return f"{self.lm.name}\x00{p.content_key}"

    def encode(self, passages: Sequence[Passage], *, progress: bool = False) -> list[EncodedPassage]:
        """Encoded passages in the given order; only passages not cached are run through the LM."""
        found: dict[int, EncodedPassage] = {}
        todo: list[int] = []
        with self._lock:
            for i, p in enumerate(passages):
                hit = self._cache.get(self._cache_key(p))
                if hit is None and self.key_store is not None:
                    hit = self.key_store.get(p.content_key)
                    if hit is not None:
                        self._put(self._cache_key(p), hit)
                if hit is not None:
                    self._cache.move_to_end(self._cache_key(p))
                    found[i] = hit
                    self.hits += 1
                else:
                    todo.append(i)
            self.misses += len(todo)
        for i, enc in zip(todo, self._encode_uncached([passages[i] for i in todo], progress), strict=True):
            found[i] = enc
            with self._lock:
                self._put(self._cache_key(passages[i]), enc)
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
        from tqdm.auto import tqdm

        tok = self.lm.tokenizer
        prepared = []
        for p in passages:
            text, text_offset = encoded_string(p)
            enc = tok(
                text,
                add_special_tokens=False,
                return_offsets_mapping=True,
                truncation=True,
                max_length=self.max_passage_tokens,
            )
            prepared.append(
                (enc["input_ids"], np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2), text_offset)
            )
        out: list[EncodedPassage | None] = [None] * len(passages)
        # Longest first, so padding inside a batch is small and memory peaks early.
        order = sorted(range(len(passages)), key=lambda i: -len(prepared[i][0]))
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="Encoding passages", unit="batch", disable=not progress):
            width = max(len(prepared[i][0]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(prepared[i][0])
                ids[row, :n] = torch.tensor(prepared[i][0], dtype=torch.long)
                mask[row, :n] = 1
            # The backbone alone: keys need no logits, and the LM head over every position is costly.
            hidden = self.lm.model.base_model(
                input_ids=ids.to(self.lm.device),
                attention_mask=mask.to(self.lm.device),
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states[-2]  # (B, T, D)
            hidden = hidden.float().cpu()
            for row, i in enumerate(batch):
                token_ids, spans, text_offset = prepared[i]
                first_key = _first_key_position(spans, text_offset)
                n = len(token_ids)
                out[i] = EncodedPassage(
                    token_ids=torch.tensor(token_ids, dtype=torch.long),
                    char_spans=spans,
                    text_offset=text_offset,
                    first_key=first_key,
                    keys=hidden[row, first_key : max(first_key, n - 1)].clone(),
                )
        return [o for o in out if o is not None]


def _first_key_position(spans: np.ndarray, text_offset: int) -> int:
    """First key position whose value (the next token) lies in the passage text, not the title."""
    for t in range(len(spans)):
        if spans[t, 1] > text_offset:
            return max(t - 1, 0)
    return max(len(spans) - 1, 0)


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
            self.keys = torch.cat([e.keys for e in self.passages if e.keys.shape[0]]).to(device)
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
        self.key_starts_text = torch.cat(
            [
                (torch.arange(c) == 0) & bool(e.text_offset > 0 and e.char_spans[e.first_key, 1] <= e.text_offset)
                for e, c in zip(self.passages, counts, strict=True)
            ]
            or [torch.zeros(0, dtype=torch.bool)]
        ).to(device)
        self.key_sq_norms = (self.keys.float() ** 2).sum(-1) if len(self) else torch.zeros(0, device=device)
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
        d = (q**2).sum(-1, keepdim=True) - 2 * q @ self.keys.float().T + self.key_sq_norms  # (n, N)
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


class KeyStore:
    """Precomputed passage keys on disk (numpy + JSON, no pickle), for a whole corpus.

    Layout: ``manifest.json`` (model, dim, per-passage rows), ``keys.npy`` (float16, memory-mapped),
    ``tokens.npy`` and ``spans.npy``. Build it once with :meth:`build`; load with :meth:`open`.
    """

    def __init__(self, directory: Path, manifest: dict[str, object]) -> None:
        self.directory = directory
        self.model = str(manifest["model"])
        self._entries: dict[str, list[int]] = manifest["entries"]  # type: ignore[assignment]
        self._keys = np.load(directory / "keys.npy", mmap_mode="r")
        self._tokens = np.load(directory / "tokens.npy", mmap_mode="r")
        self._spans = np.load(directory / "spans.npy", mmap_mode="r")

    @classmethod
    def open(cls, directory: str | Path, *, model: str | None = None) -> KeyStore:
        d = Path(directory)
        manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        if model is not None and manifest["model"] != model:
            raise ValueError(
                f"{d} holds keys of model {manifest['model']!r}, not {model!r}; rebuild it for this model."
            )
        return cls(d, manifest)

    @classmethod
    def build(
        cls, encoder: PassageEncoder, passages: Sequence[Passage], directory: str | Path, *, progress: bool = True
    ) -> KeyStore:
        """Encode ``passages`` with ``encoder`` and write the store."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        unique = list({p.content_key: p for p in passages}.values())
        entries: dict[str, list[int]] = {}
        keys, tokens, spans = [], [], []
        key_row = tok_row = 0
        chunk = 256
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            for p, e in zip(part, encoder.encode(part, progress=progress), strict=True):
                n_keys, n_tok = e.keys.shape[0], e.token_ids.shape[0]
                entries[p.content_key] = [key_row, n_keys, tok_row, n_tok, e.text_offset, e.first_key]
                keys.append(e.keys.numpy().astype(np.float16))
                tokens.append(e.token_ids.numpy())
                spans.append(e.char_spans)
                key_row, tok_row = key_row + n_keys, tok_row + n_tok
        dim = encoder.lm.hidden_size
        np.save(d / "keys.npy", np.concatenate(keys) if keys else np.zeros((0, dim), np.float16))
        np.save(d / "tokens.npy", np.concatenate(tokens) if tokens else np.zeros(0, np.int64))
        np.save(d / "spans.npy", np.concatenate(spans) if spans else np.zeros((0, 2), np.int64))
        manifest = {
            "model": encoder.lm.name,
            "dim": dim,
            "entries": entries,
            "checksum": hashlib.sha1("".join(sorted(entries)).encode()).hexdigest(),
        }
        (d / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        return cls(d, manifest)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, content_key: str) -> EncodedPassage | None:
        row = self._entries.get(content_key)
        if row is None:
            return None
        k0, nk, t0, nt, text_offset, first_key = row
        return EncodedPassage(
            token_ids=torch.from_numpy(np.array(self._tokens[t0 : t0 + nt], dtype=np.int64)),
            char_spans=np.array(self._spans[t0 : t0 + nt], dtype=np.int64),
            text_offset=int(text_offset),
            first_key=int(first_key),
            keys=torch.from_numpy(np.array(self._keys[k0 : k0 + nk], dtype=np.float32)),
        )
