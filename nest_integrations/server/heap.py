"""Startup-heap freezing for serving processes (a habit of vLLM's servers, ``freeze_gc_heap``).

A loaded model, tokenizer and index leave a few hundred thousand long-lived Python objects;
every full garbage collection walks all of them (~0.2 s on a 2-core CPU, at a moment no one
chooses: inside some request's decoding step). Moving them to the permanent generation once
the server is ready makes later collections walk only what requests create.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect garbage, then exempt every surviving object from future collections; returns how many.

    Call once, after the model and index are loaded and before serving. Objects created later
    are collected as usual; the frozen ones (the server's own state) are never freed, which is
    what a serving process wants.
    """
    gc.collect()  # garbage frozen now could never be freed
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d startup objects out of the garbage collector's scans", frozen)
    return frozen
