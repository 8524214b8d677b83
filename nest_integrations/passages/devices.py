"""Where the first stage runs: the sentence encoder's torch device and the dense index's FAISS device.

CUDA is used when present (like the LM). The dense index moves to the GPUs only when the
installed FAISS is a GPU build that sees one (``faiss.get_num_gpus() > 0``); ``faiss-cpu``
is the default dependency, and docs/first-stages.md gives the swap to the official ``faiss-gpu``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..errors import ConfigError

DenseDevice = Literal["auto", "cpu", "cuda"]
DENSE_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
GPU_FAISS_HOWTO = (
    "install the official GPU build of FAISS in place of faiss-cpu: "
    "pip uninstall -y faiss-cpu && pip install faiss-gpu (CUDA 12 wheels; see docs/first-stages.md)"
)


def resolve_torch_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else ``cuda`` when torch sees a GPU, else ``cpu``.

    Raises :class:`ConfigError` for a name torch does not know or ``cuda`` on a build without it.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {device!r} was asked for, but this torch build sees no CUDA GPU; use 'cpu'.")
    return resolved


def faiss_gpu_count(faiss: Any = None) -> int:
    """GPUs the installed FAISS can use: 0 for ``faiss-cpu`` (or a GPU build on a machine without one)."""
    if faiss is None:
        import faiss
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if callable(get_num_gpus) else 0


def check_dense_device(dense_device: str) -> str:
    """``dense_device`` if it is ``auto``, ``cpu`` or ``cuda``; else :class:`ConfigError`."""
    if dense_device not in DENSE_DEVICES:
        raise ConfigError(f"dense_device must be one of {', '.join(DENSE_DEVICES)}, not {dense_device!r}.")
    return dense_device


def use_gpu_faiss(dense_device: str, num_gpus: int) -> bool:
    """Whether the dense index goes to the GPUs: ``auto`` when FAISS sees one, ``cuda`` always, ``cpu`` never.

    Raises :class:`ConfigError` for another value, or ``cuda`` when FAISS sees no GPU.
    """
    check_dense_device(dense_device)
    if dense_device == "cuda" and num_gpus == 0:
        raise ConfigError(f"dense_device='cuda' needs FAISS with GPU support, and it sees no GPU: {GPU_FAISS_HOWTO}.")
    return dense_device == "cuda" or (dense_device == "auto" and num_gpus > 0)


def dense_index_on(index: Any, dense_device: str, faiss: Any = None) -> tuple[Any, bool]:
    """``(search_index, on_gpu)``: ``index`` copied to every GPU FAISS sees, or ``index`` itself on CPU."""
    if faiss is None:
        import faiss
    if not use_gpu_faiss(dense_device, faiss_gpu_count(faiss)):
        return index, False
    return faiss.index_cpu_to_all_gpus(index), True
