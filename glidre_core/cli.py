"""``glidre``: the command-line interface. Every command is a thin wrapper over library calls."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """GLiDRE: document-level relation extraction with relation labels given as strings."""
    _setup_logging(verbose)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value")
def train(config_path: str, overrides: tuple[str, ...]) -> None:
    """Train a model locally from a YAML config (best dev checkpoint kept)."""
    from glidre_core.training import Trainer, load_training_config

    cfg = load_training_config(config_path, list(overrides))
    result = Trainer(cfg).train()
    click.echo(json.dumps({"best_dir": str(result.best_dir), "dev_f1": result.best_f1,
                           "threshold": result.best_threshold}, indent=2))


@main.command()
@click.option("--model", "model_ref", default="default", show_default=True, help="directory or 'default'")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["docred", "glidre", "conll04", "jsonl"]), default="docred", show_default=True)
@click.option("--train-facts", type=click.Path(exists=True, dir_okay=False), help="training file for Ign F1 (same format)")
@click.option("--threshold", type=float, default=None, help="override the stored dev threshold")
@click.option("--limit", type=int, default=None, help="evaluate on the first N documents")
@click.option("--output-json", type=click.Path(dir_okay=False), default=None)
def evaluate(model_ref, data_path, fmt, train_facts, threshold, limit, output_json) -> None:
    """Official F1 / Ign F1 (+ per-relation, intra/inter) of MODEL on labelled DATA."""
    from glidre_core.evaluation import evaluate_model
    from glidre_core.metrics import train_fact_names
    from glidre_core.model_loading import load_model
    from glidre_core.readers import read_documents

    model = load_model(model_ref)
    docs = read_documents(data_path, fmt, limit=limit)
    facts = train_fact_names(read_documents(train_facts, fmt)) if train_facts else None
    result = evaluate_model(model, docs, train_facts=facts, threshold=threshold)
    result["model"] = model_ref
    result["data"] = str(data_path)
    click.echo(format_metrics(result))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {output_json}")


def format_metrics(result: dict) -> str:
    lines = [
        f"docs {result['docs']}  ({result['docs_per_second']:.2f} docs/s)  threshold {result['threshold']:.3f}",
        f"{'':12s} {'P':>7s} {'R':>7s} {'F1':>7s}",
        f"{'all':12s} {100*result['precision']:7.2f} {100*result['recall']:7.2f} {100*result['f1']:7.2f}",
        f"{'Ign':12s} {100*result['ign_precision']:7.2f} {100*result['recall']:7.2f} {100*result['ign_f1']:7.2f}",
    ]
    for key in ("intra", "inter", "frequent", "long_tail"):
        if key in result:
            r = result[key]
            lines.append(f"{key:12s} {100*r['precision']:7.2f} {100*r['recall']:7.2f} {100*r['f1']:7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
