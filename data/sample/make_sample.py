"""Regenerate ``docs.jsonl`` from the DocRED test set (see README.md in this folder).

Usage (from the repository root)::

    python data/sample/make_sample.py /path/to/docred/test.json data/sample/docs.jsonl --limit 40

Documents go through :func:`glidre_core.readers.docred_to_document`, the same converter the
library uses, so character offsets are exactly those the model sees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glidre_core.readers import docred_to_document, load_rel_info


def convert(src: Path, dst: Path, limit: int) -> int:
    records = json.loads(src.read_text(encoding="utf-8"))[:limit]
    info = load_rel_info()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        for i, raw in enumerate(records):
            doc = docred_to_document(raw, f"docred-test-{i}", info)
            row = {
                "doc_id": doc.doc_id,
                "title": doc.title,
                "text": doc.text,
                "entities": [
                    {"id": e.id, "type": e.type, "mentions": [{"start": m.start, "end": m.end} for m in e.mentions]}
                    for e in doc.entities
                ],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--limit", type=int, default=40)
    args = parser.parse_args()
    print(f"wrote {convert(args.src, args.dst, args.limit)} documents to {args.dst}")


if __name__ == "__main__":
    main()
