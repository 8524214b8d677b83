"""The embedded model is de-quantised from its GGUF once, then loaded from a safetensors copy."""

import pytest
import torch

from nest_integrations.lm import embedded_cache_dir, find_embedded_gguf, load_lm, load_tokenizer


@pytest.mark.slow
def test_second_load_reads_the_cached_copy_with_identical_weights_and_tokenizer(tmp_path, monkeypatch, lm) -> None:
    monkeypatch.setenv("NEST_CACHE_DIR", str(tmp_path))
    cached = embedded_cache_dir(find_embedded_gguf())
    assert cached.is_relative_to(tmp_path) and not cached.exists()
    first = load_lm(device="cpu", dtype="float32")  # from the GGUF: writes the cache
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert not list(cached.parent.glob(".saving-*"))  # written in a temporary directory, then renamed
    again = load_lm(device="cpu", dtype="float32")  # from the cache
    assert again.name == first.name == "SmolLM2-135M-Instruct"
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.model.lm_head.weight.data_ptr() == again.model.model.embed_tokens.weight.data_ptr()  # still tied
    assert again.eos_token_ids == first.eos_token_ids and again.context_length == first.context_length
    tok = load_tokenizer()
    messages = [{"role": "user", "content": "Tell me about Robert Boulter, né 1980 ?"}]
    for t in (again.tokenizer, tok):
        assert t.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
            first.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
        text = "Hello wörld \n\n  3.14 <|im_end|>"
        assert t(text)["input_ids"] == first.tokenizer(text)["input_ids"]
        assert t.all_special_ids == first.tokenizer.all_special_ids
    ids = torch.tensor([first.tokenizer("The Zorblax reactor")["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, again.model(ids).logits)
