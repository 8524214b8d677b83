import json
from pathlib import Path

import pytest
import torch

from nest_integrations import CorruptStoreError, IndexNotFoundError, KeyStore, Passage
from nest_integrations.token_index import PassageEncoder, TokenIndex, encoded_string, opens_a_sentence


def test_keys_are_second_to_last_hidden_states_and_values_next_tokens(lm, boulter_passages) -> None:
    p = boulter_passages[0]
    (enc,) = PassageEncoder(lm).encode([p])
    text, offset = encoded_string(p)
    assert offset == len(p.title) + 1
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert enc.token_ids.tolist() == ids[0].tolist()
    with torch.inference_mode():
        hidden = lm.model(input_ids=ids.to(lm.device), output_hidden_states=True).hidden_states[-2][0]
    expected = hidden[enc.first_key : len(enc.token_ids) - 1].float().cpu()
    # Keys are kept in float32 whatever the model runs in; a bf16/fp16 model's states carry its rounding.
    tol = 1e-4 if lm.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(enc.keys, expected, atol=tol, rtol=tol)
    index = TokenIndex([enc], lm.device)
    assert index.values.tolist() == enc.token_ids[enc.first_key + 1 :].tolist()
    # Values never come from the title: the first value token reaches into the passage text.
    assert enc.char_spans[enc.first_key + 1, 1] > offset


def test_passage_is_encoded_once_then_cached(lm, boulter_passages) -> None:
    encoder = PassageEncoder(lm)
    first = encoder.encode(boulter_passages[:3])
    again = encoder.encode(boulter_passages[:3])
    assert encoder.misses == 3 and encoder.hits == 3
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_cache_is_bounded_and_evicts_least_recently_used(lm, boulter_passages) -> None:
    encoder = PassageEncoder(lm)
    sizes = [e.nbytes for e in PassageEncoder(lm).encode(boulter_passages[:4])]
    encoder.max_cache_bytes = sizes[2] + sizes[3]
    encoder.encode(boulter_passages[:4])
    assert encoder._cache_bytes <= encoder.max_cache_bytes
    cached = set(encoder._cache)
    assert encoder._cache_key(boulter_passages[3]) in cached
    assert encoder._cache_key(boulter_passages[0]) not in cached


def test_search_matches_brute_force_and_respects_mask(lm, boulter_passages) -> None:
    encoded = PassageEncoder(lm).encode(boulter_passages[:3])
    index = TokenIndex(encoded, lm.device)
    queries = index.keys[[10, 50]] + 0.01
    dist, idx = index.search(queries, r=10)
    brute = torch.cdist(queries, index.keys) ** 2
    expected = brute.topk(10, largest=False)
    # Both ||q||^2 - 2qk + ||k||^2 and cdist cancel float32 terms of size ||q||^2 + ||k||^2 (~1e6 for
    # this model's states), so near zero they agree only to a few float32 ulps of that size;
    # neighbors lie ~1e5 apart, so ranks are unaffected.
    scale = float((queries**2).sum(-1).max() + index.key_sq_norms.max())
    atol = 8 * torch.finfo(torch.float32).eps * scale
    torch.testing.assert_close(dist, expected.values, atol=atol, rtol=1e-3)
    assert idx[:, 0].tolist() == [10, 50]
    passage, position = int(index.key_passage[50]), int(index.key_position[50])
    index.mask_copied(passage, [position + 1])
    _, idx2 = index.search(queries, r=10)
    assert 50 not in idx2[1].tolist() and 10 in idx2[0].tolist()


def test_key_store_round_trip(tmp_path, lm, boulter_passages) -> None:
    encoder = PassageEncoder(lm)
    store = KeyStore.build(encoder, boulter_passages[:2], tmp_path / "keys", progress=False)
    reopened = KeyStore.open(tmp_path / "keys", model=lm.name)
    assert len(reopened) == 2
    direct = encoder.encode(boulter_passages[:2])
    for p, fresh in zip(boulter_passages[:2], direct, strict=True):
        got = reopened.get(p.content_key)
        assert got is not None and got.token_ids.tolist() == fresh.token_ids.tolist()
        assert got.keys.dtype == fresh.keys.dtype == torch.float32
        assert torch.equal(got.keys, fresh.keys)  # stored as computed: no rounding
        assert (got.text_offset, got.first_key) == (fresh.text_offset, fresh.first_key)
        assert (got.char_spans == fresh.char_spans).all()
    cold = PassageEncoder(lm, key_store=store)
    stored = cold.encode(boulter_passages[:2])
    assert cold.misses == 0
    # A key-store-backed index and an in-memory one give identical distances.
    fresh_index, stored_index = TokenIndex(direct, lm.device), TokenIndex(stored, lm.device)
    queries = fresh_index.keys[[3, 40]] + 0.01
    for a, b in zip(fresh_index.search(queries, r=8), stored_index.search(queries, r=8), strict=True):
        assert torch.equal(a, b)
    assert reopened.get(Passage(id="x", text="not stored").content_key) is None


def test_writable_key_store_keeps_new_encodings_for_the_next_process(tmp_path, lm, boulter_passages) -> None:
    where = tmp_path / "keys"
    with pytest.raises(IndexNotFoundError, match="not a NEST key store"):
        KeyStore.open(where, model=lm.name)
    first = PassageEncoder(lm, key_store=KeyStore.open(where, model=lm.name, dim=lm.hidden_size, writable=True))
    first.encode(boulter_passages[:3])
    first.encode(boulter_passages[1:4])  # one new passage: one more part
    assert first.misses == 4 and len(list(where.glob("part-*"))) == 2
    later = PassageEncoder(lm, key_store=KeyStore.open(where, model=lm.name))
    assert len(later.key_store or []) == 4
    later.encode(boulter_passages[:4])
    assert later.misses == 0 and later.hits == 4
    # A read-only store never writes.
    later.encode(boulter_passages[4:5])
    assert len(list(where.glob("part-*"))) == 2


def test_engine_takes_an_open_key_store_or_its_directory(tmp_path, lm, boulter_passages) -> None:
    from nest_integrations import NestEngine

    where = tmp_path / "keys"
    store = KeyStore.open(where, model=lm.name, dim=lm.hidden_size, writable=True)
    engine = NestEngine(lm, key_store=store)
    assert engine.encoder.key_store is store  # used as it is: still writable
    engine.encoder.encode(boulter_passages[:2])
    assert len(store) == 2
    from_directory = NestEngine(lm, key_store=where).encoder.key_store
    assert from_directory is not None and len(from_directory) == 2 and not from_directory.writable
    other = KeyStore.open(tmp_path / "other", model="someone/other-model", dim=lm.hidden_size, writable=True)
    with pytest.raises(CorruptStoreError, match="holds keys of model 'someone/other-model'"):
        NestEngine(lm, key_store=other)


def _one_part(tmp_path, lm, passages) -> tuple[Path, Path]:
    where = tmp_path / "keys"
    KeyStore.build(PassageEncoder(lm), passages, where, progress=False)
    (part,) = where.glob("part-*")
    return where, part


def test_key_store_detects_corrupt_and_truncated_parts(tmp_path, lm, boulter_passages) -> None:
    where, part = _one_part(tmp_path, lm, boulter_passages[:2])
    keys = part / "keys.npy"
    data = bytearray(keys.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the last key
    keys.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"keys\.npy does not match its checksum"):
        KeyStore.open(where, model=lm.name)
    keys.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CorruptStoreError, match="corrupt"):
        KeyStore.open(where, model=lm.name)
    keys.unlink()  # missing
    with pytest.raises(CorruptStoreError, match="corrupt or truncated"):
        KeyStore.open(where, model=lm.name)


def test_key_store_detects_altered_rows_other_formats_and_models(tmp_path, lm, boulter_passages) -> None:
    where, part = _one_part(tmp_path, lm, boulter_passages[:2])
    manifest = json.loads((part / "manifest.json").read_text())
    rows = manifest["entries"]
    first = next(iter(rows))
    rows[first][1] += 1  # claims one key more than was written for it
    (part / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match="entries do not match"):
        KeyStore.open(where, model=lm.name)
    (part / "manifest.json").write_text('{"entries": {')  # truncated JSON
    with pytest.raises(CorruptStoreError, match="corrupt or truncated"):
        KeyStore.open(where, model=lm.name)
    head = json.loads((where / "keystore.json").read_text())
    with pytest.raises(CorruptStoreError, match="holds keys of model"):
        KeyStore.open(where, model="another-model")
    (where / "keystore.json").write_text(json.dumps({**head, "format_version": 1}))
    with pytest.raises(CorruptStoreError, match="format 1"):
        KeyStore.open(where, model=lm.name)


def test_restricted_search_finds_only_the_allowed_keys(lm, boulter_passages) -> None:
    encoded = PassageEncoder(lm).encode(boulter_passages[:3])
    index = TokenIndex(encoded, lm.device)
    queries = index.keys[index.key_passage == 1][:4]  # keys of a passage outside the allowed set
    only = index.key_passage == 2
    dist, idx = index.search(queries, r=len(index), only=only)
    found = idx[torch.isfinite(dist)]
    assert found.numel() and (index.key_passage[found] == 2).all()
    assert int(torch.isfinite(dist).sum(-1).max()) == int(only.sum())


def test_key_tokens_are_the_left_context_of_values(lm, boulter_passages) -> None:
    encoded = PassageEncoder(lm).encode(boulter_passages[:2])
    index = TokenIndex(encoded, lm.device)
    for k in (0, 7, len(index) - 1):
        tokens = encoded[int(index.key_passage[k])].token_ids
        position = int(index.key_position[k])
        assert int(index.key_tokens[k]) == int(tokens[position]) and int(index.values[k]) == int(tokens[position + 1])
    # Exactly one key per titled passage has the passage text's first token as its value.
    assert int(index.key_starts_text.sum()) == 2
    first = int(index.key_starts_text.nonzero()[0])
    enc = encoded[0]
    assert (
        enc.char_spans[int(index.key_position[first]) + 1, 1]
        > enc.text_offset
        >= enc.char_spans[int(index.key_position[first]), 1]
    )


def test_a_chunk_cut_mid_sentence_does_not_start_one(lm) -> None:
    # A splitter's chunk that begins "which was performed ..." continues a sentence: a copy from its
    # first token does not open a sentence of the answer (the context guard's sentence starts).
    passages = [
        Passage(id="a", title="rb.txt", text="Boulter starred in the play Herons."),
        Passage(id="b", title="rb.txt", text="which was performed in 2001 at the Royal Court Theatre."),
        Passage(id="c", title="rb.txt", text=", and in 2002 he had a guest role."),
        Passage(id="d", title="rb.txt", text="\u201cHerons\u201d was performed in 2001."),
    ]
    index = TokenIndex(PassageEncoder(lm).encode(passages), lm.device, sources=passages)
    starts = {passages[int(index.key_passage[k])].id for k in index.key_starts_text.nonzero().flatten().tolist()}
    assert starts == {"a", "d"}
    assert int(TokenIndex(PassageEncoder(lm).encode(passages), lm.device).key_starts_text.sum()) == 4
    assert opens_a_sentence("  Boulter") and opens_a_sentence("1990 was") and not opens_a_sentence("")
    assert not opens_a_sentence("which") and not opens_a_sentence("; and") and not opens_a_sentence("\u2019s")


def test_a_passage_longer_than_the_window_gets_a_key_for_every_token(lm, boulter_passages) -> None:
    # Windows of 48 tokens over a ~200-token passage: every token is read (none cut off), each
    # key equals the second-to-last hidden state of its window, and the first window's keys are
    # those of the whole passage read at once (the same left context).
    p = Passage(id="long", title="Robert Boulter", text=" ".join(b.text for b in boulter_passages[:2]))
    text, _ = encoded_string(p)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 48
    (whole,) = PassageEncoder(lm, max_passage_tokens=4096).encode([p])
    (windowed,) = PassageEncoder(lm, max_passage_tokens=48).encode([p])
    assert windowed.token_ids.tolist() == whole.token_ids.tolist() == ids
    assert windowed.keys.shape == whole.keys.shape == (len(ids) - 1 - whole.first_key, whole.keys.shape[1])
    tol = 1e-4 if lm.dtype == torch.float32 else 2e-2
    first = 48 - 1 - whole.first_key  # keys whose position the first window reads
    torch.testing.assert_close(windowed.keys[:first], whole.keys[:first], atol=tol, rtol=tol)
    stride = 48 - 24  # a window re-reads min(64, 48 // 2) tokens of the one before it
    start = 2 * stride  # the third window: its positions past the re-read ones are its keys
    with torch.inference_mode():
        window = torch.tensor([ids[start : start + 48]], device=lm.device)
        hidden = lm.model(input_ids=window, output_hidden_states=True).hidden_states[-2][0].float().cpu()
    at = start + 24  # the first position the third window gives
    torch.testing.assert_close(windowed.keys[at - whole.first_key], hidden[24], atol=tol, rtol=tol)


def test_a_key_store_entry_cut_short_by_an_older_version_is_read_again(tmp_path, lm, boulter_passages) -> None:
    # Versions before windowed reading cut passages at 512 tokens; such a stored entry is not used.
    from dataclasses import replace

    p = Passage(id="long", title="Robert Boulter", text=" ".join(b.text for b in boulter_passages[:2]))
    (full,) = PassageEncoder(lm, max_passage_tokens=4096).encode([p])
    n = 60
    cut = replace(
        full, token_ids=full.token_ids[:n], char_spans=full.char_spans[:n], keys=full.keys[: n - 1 - full.first_key]
    )
    store = KeyStore.open(tmp_path / "keys", model=lm.name, dim=lm.hidden_size, writable=True)
    store.add([p], [cut])
    encoder = PassageEncoder(lm, key_store=KeyStore.open(tmp_path / "keys", model=lm.name))
    (again,) = encoder.encode([p])
    assert encoder.misses == 1 and again.token_ids.tolist() == full.token_ids.tolist()
