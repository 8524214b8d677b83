"""Regenerate nest_integrations/data/wikitext103_test.jsonl.gz from the raw WikiText-103 test file.

Usage: python scripts/build_default_corpus.py ../shared/data/wikitext103-test.raw.txt
"""

import gzip
import sys
from pathlib import Path

from nest_integrations.corpus import DEFAULT_CORPUS_FILE, parse_wikitext

raw = Path(sys.argv[1]).read_text(encoding="utf-8")
docs = parse_wikitext(raw)
out = Path(__file__).resolve().parents[1] / "nest_integrations" / "data" / DEFAULT_CORPUS_FILE
with gzip.GzipFile(out, "wb", mtime=0) as f:
    for d in docs:
        f.write((d.model_dump_json() + "\n").encode("utf-8"))
print(f"{len(docs)} articles -> {out}")
