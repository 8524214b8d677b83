"""Where nest-integrations keeps what it builds once and reuses (indexes, de-quantised models, keys).

``$NEST_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/nest-integrations`` (``~/.cache/nest-integrations``).
Standard library only: the CLI reads it before torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root (not created here)."""
    root = os.environ.get("NEST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nest-integrations"
    )
    return Path(root)
