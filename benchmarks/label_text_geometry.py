"""Geometry of the label sentence embeddings: names against "name: description" (README,
zero-shot, "Label descriptions"). Mean pairwise cosine, mean nearest-neighbour cosine, mean norm
and the mean per-dimension spread over the 96 DocRED types, from the default model's label encoder.

    python benchmarks/label_text_geometry.py --output-json benchmarks/results/label_text_geometry.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from glidre_core import GLiDRE
from glidre_core.modeling.label_text import load_label_descriptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    model = GLiDRE.from_pretrained("default")
    model.eval()
    desc = load_label_descriptions("docred")
    names = list(desc)
    out = {}
    with torch.no_grad():
        for key, texts in [("names", names), ("append", [f"{n}: {desc[n]}" for n in names])]:
            pooled = model.label_encoder.pooled(texts).float()
            unit = torch.nn.functional.normalize(pooled, dim=-1)
            sim = unit @ unit.T
            off = sim[~torch.eye(len(names), dtype=torch.bool)]
            nearest = (sim - 2 * torch.eye(len(names))).max(1).values
            out[key] = {"mean_pairwise_cos": float(off.mean()), "mean_nearest_cos": float(nearest.mean()),
                        "mean_norm": float(pooled.norm(dim=-1).mean()), "mean_dim_spread": float(pooled.std(0).mean())}
    Path(args.output_json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
