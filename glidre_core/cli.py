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
@click.option("--ray", "use_ray", is_flag=True, help="run on Ray Train even when scaling.num_workers is 0 (1 worker)")
@click.option("--run-name", default=None, help="Ray Train / MLflow run name (same name = resume); default storage.run_name")
def train(config_path: str, overrides: tuple[str, ...], use_ray: bool, run_name: str | None) -> None:
    """Train a model from a YAML config (best dev checkpoint kept).

    In-process when scaling.num_workers is 0; on Ray Train workers (checkpoints, resume,
    retries) when it is 1 or more or with --ray. MLflow tracking when the config has an
    'mlflow' section."""
    from glidre_core.ray_train import train as run_training
    from glidre_core.training import load_training_config

    cfg = load_training_config(config_path, list(overrides))
    if use_ray and cfg.scaling.num_workers == 0:
        cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 1})})
    result = run_training(cfg, run_name=run_name)
    click.echo(json.dumps(result.summary(), indent=2, default=str))


@main.command()
@click.option("--model", "model_ref", default="default", show_default=True, help="directory, 'default', or llm:CONFIG.yaml (an LLM, RHF baseline)")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["docred", "glidre", "conll04", "jsonl"]), default="docred", show_default=True)
@click.option("--train-facts", type=click.Path(exists=True, dir_okay=False), help="training file for Ign F1 (same format)")
@click.option("--threshold", type=float, default=None, help="override the stored dev threshold")
@click.option("--limit", type=int, default=None, help="evaluate on the first N documents")
@click.option("--output-json", type=click.Path(dir_okay=False), default=None)
@click.option("--task", type=click.Choice(["relation", "ner", "joint"]), default="relation", show_default=True,
              help="relation: given entities; ner: entity recognition; joint: relations from raw text")
@click.option("--entity-threshold", type=float, default=None, help="override the stored entity threshold")
@click.option("--entity-labels", default=None, help="comma-separated entity types (default: the data's own)")
@click.option("--match", type=click.Choice(["strict", "relaxed"]), default="strict", show_default=True,
              help="joint: a predicted entity matches a gold one by equal mention sets, or best overlap")
@click.option("--typed/--untyped", default=None,
              help="joint: entity types must match too (default: typed for conll04, untyped otherwise)")
@click.option("--head-precision", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="precision of the pair/span heads (default: the model's, 'auto' = bf16 where native)")
@click.option("--encoder-precision", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="precision of the document encoder at inference (default: the model's, 'auto' = bf16 on a "
                   "bf16 GPU, fp32 on CPU; bfloat16 on a CPU without native bf16 is emulated and slow)")
@click.option("--entity-recognizer", type=click.Choice(["model", "spacy"]), default="model", show_default=True,
              help="joint: entities from the model's span head, or from spaCy (optional [spacy] extra)")
@click.option("--coreference", type=click.Choice(["rules", "none"]), default=None,
              help="joint: group predicted mentions into entities (default: none for conll04, whose "
                   "entities are single mentions by definition; the model's own mode otherwise)")
@click.option("--spans", type=click.Choice(["chars", "tokens"]), default=None,
              help="ner/joint: compare mentions character-exact, or over the corpus tokens (predicted mentions "
                   "widened to whole whitespace-delimited tokens; default: tokens for conll04, SpERT's unit, "
                   "chars otherwise)")
@click.option("--label-descriptions", default=None,
              help="'docred' or a JSON / YAML file {label: description}: described labels are encoded as "
                   "'label: description' (added to the model's own; glidre_core/modeling/label_text.py)")
def evaluate(model_ref, data_path, fmt, train_facts, threshold, limit, output_json, task, entity_threshold,
             entity_labels, match, typed, head_precision=None, encoder_precision=None, entity_recognizer="model",
             coreference=None, spans=None, label_descriptions=None) -> None:
    """Score MODEL on labelled DATA: relation F1 / Ign F1 with given entities (default), strict
    entity recognition F1 (--task ner), or end-to-end relation F1 from raw text (--task joint).

    --model llm:CONFIG.yaml scores an LLM instead (the RHF baseline, glidre_core/llm/rhf), with the
    same data reader and metric, given entities (--task relation) only."""
    if model_ref.startswith("llm:"):
        from glidre_core.llm.rhf import RHFError
        from glidre_core.llm.rhf.runner import evaluate_llm, summary_text

        if (task != "relation" or threshold is not None or head_precision is not None or encoder_precision is not None
                or label_descriptions is not None):
            raise click.UsageError("--model llm:CONFIG scores relations between given entities: --task relation "
                                   "only, and --threshold / --head-precision / --encoder-precision / "
                                   "--label-descriptions do not apply to an LLM")
        try:
            result = evaluate_llm(model_ref[len("llm:"):], data_path, fmt, limit=limit, train_facts_path=train_facts)
        except RHFError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(summary_text(result))
        if output_json:
            Path(output_json).parent.mkdir(parents=True, exist_ok=True)
            Path(output_json).write_text(json.dumps(result, indent=2))
            click.echo(f"wrote {output_json}")
        if not result["reconciled"]:
            raise click.ClickException(f"the RHF counts do not reconcile: {result['reconciliation']}")
        return
    from glidre_core.evaluation import evaluate_entities, evaluate_joint, evaluate_model, evaluation_labels
    from glidre_core.metrics import train_fact_names
    from glidre_core.model_loading import load_model
    from glidre_core.readers import read_documents

    from glidre_core.modeling.precision import encoder_dtype, head_dtype

    model = load_model(model_ref)
    if head_precision is not None:
        model.config.head_precision = head_precision
    if encoder_precision is not None:
        model.config.encoder_precision = encoder_precision
    if label_descriptions is not None:
        from glidre_core.modeling.label_text import load_label_descriptions

        try:
            added = load_label_descriptions(label_descriptions)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--label-descriptions") from exc
        model.config.label_descriptions = {**model.config.label_descriptions, **added}
    docs = read_documents(data_path, fmt, limit=limit)
    types = [t.strip() for t in entity_labels.split(",") if t.strip()] if entity_labels else None
    if task != "relation" and model.span_head is None and not (task == "joint" and entity_recognizer == "spacy"):
        raise click.UsageError(f"--task {task} needs a model with an entity (span) head; {model_ref} has none")
    # CoNLL04 systems predict over the corpus tokens: "Dallas." (a glued sentence-final period) is
    # one token there, and our words split it (glidre_core/joint_metrics.py, "Token-level spans")
    spans = spans or ("tokens" if fmt == "conll04" else "chars")
    if task == "ner":
        result = evaluate_entities(model, docs, types, threshold=entity_threshold, spans=spans)
    elif task == "joint":
        typed = (fmt == "conll04") if typed is None else typed
        # CoNLL04 annotates mentions: two "U.S." in one sentence are two entities, and a relation is
        # right when both argument *mentions* are (SpERT's protocol), so its mentions stay ungrouped
        coreference = coreference or ("none" if fmt == "conll04" else None)
        result = evaluate_joint(model, docs, types, relation_labels_=evaluation_labels(docs, fmt),
                                entity_threshold=entity_threshold, threshold=threshold, match=match, typed=typed,
                                entity_recognizer=entity_recognizer, coreference=coreference, spans=spans)
    else:
        facts = train_fact_names(read_documents(train_facts, fmt)) if train_facts else None
        result = evaluate_model(model, docs, labels=evaluation_labels(docs, fmt), train_facts=facts,
                                threshold=threshold)
    result["model"] = model_ref
    result["data"] = str(data_path)
    result["head_dtype"] = str(head_dtype(model.config.head_precision, model.device)).replace("torch.", "")
    result["encoder_dtype"] = str(encoder_dtype(model.config.encoder_precision, model.device)).replace("torch.", "")
    click.echo(format_metrics(result))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {output_json}")


@main.command()
@click.option("--input", "input_uri", default=None, help="JSON Lines / Parquet file, directory or s3:// prefix")
@click.option("--output", "output_uri", default=None, help="output directory or s3:// prefix")
@click.option("--model", "model_ref", default=None, help="directory, 'default' or models:/NAME@ALIAS")
@click.option("--labels", default=None, help="labels file (one per line) or a named set, e.g. 'redocred'")
@click.option("--entity-labels", default=None,
              help="entity types file or named set for documents without entities (span head models)")
@click.option("--entity-recognizer", type=click.Choice(["auto", "model", "spacy"]), default=None,
              help="entities for documents without them: span head, spaCy, or auto (spaCy when installed)")
@click.option("--num-actors", type=int, default=None, help="model actors (min = max = N)")
@click.option("--batch-size", type=int, default=None, help="documents per forward pass")
@click.option("--num-gpus-per-actor", type=float, default=None, help="GPUs per actor (0 = CPU)")
@click.option("--resume", is_flag=True, help="continue an interrupted run, skipping documents already written")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value")
def extract(input_uri, output_uri, model_ref, labels, num_actors, batch_size, num_gpus_per_actor, resume,
            overwrite, config_path, overrides, entity_labels=None, entity_recognizer=None) -> None:
    """Extract relations from a corpus with Ray Data (starts a local Ray if none is running)."""
    from glidre_core.extraction import (
        ExtractionError, JobInterrupted, cli_values, load_extract_config, run_extraction, summary_text,
    )

    values = cli_values(input=input_uri, output=output_uri, model=model_ref, labels=labels, num_actors=num_actors,
                        batch_size=batch_size, num_gpus_per_actor=num_gpus_per_actor, resume=resume,
                        overwrite=overwrite, entity_labels=entity_labels, entity_recognizer=entity_recognizer)
    try:
        cfg = load_extract_config(config_path, list(overrides), values)
        manifest = run_extraction(cfg)
    except (ExtractionError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except JobInterrupted as exc:  # SIGINT / SIGTERM: Ray is stopped, committed parts are kept
        click.echo(f"extraction {exc}: committed parts are kept, rerun with --resume to continue", err=True)
        sys.exit(exc.exit_code)
    click.echo(summary_text(manifest))
    if not manifest["reconciled"]:
        raise click.ClickException("the output does not reconcile with the input (see the log and _manifest.json)")


def format_metrics(result: dict) -> str:
    from glidre_core.metrics import summary_rows

    task = result.get("task", "relation")
    if task in ("ner", "joint"):
        head = f"docs {result['docs']}  ({result['docs_per_second']:.2f} docs/s)  entity threshold {result['entity_threshold']:.3f}"
        if task == "ner":
            rows = [("entities", result), ("untyped", result["untyped"])]
            rows += [(t, r) for t, r in sorted(result["per_type"].items())]
        else:
            head += f"  threshold {result['threshold']:.3f}  match {result['match']}  typed {result['typed']}"
            rows = [("entities", result["entity"]), ("relations", result)]
        lines = [head, f"{'':14s} {'P':>7s} {'R':>7s} {'F1':>7s}"]
        for name, r in rows:
            lines.append(f"{name[:14]:14s} {100*r['precision']:7.2f} {100*r['recall']:7.2f} {100*r['f1']:7.2f}")
        return "\n".join(lines)
    lines = [
        f"docs {result['docs']}  ({result['docs_per_second']:.2f} docs/s)  threshold {result['threshold']:.3f}",
        f"{'':12s} {'P':>7s} {'R':>7s} {'F1':>7s}",
    ]
    for name, p, r, f in summary_rows(result):
        lines.append(f"{name:12s} {100*p:7.2f} {100*r:7.2f} {100*f:7.2f}")
    return "\n".join(lines)


# -- few-shot (glidre_core.fewshot) --------------------------------------------------------------
def _recipe(overrides: tuple[str, ...], **defaults):
    """The adaptation recipe with ``key=value`` overrides (values parsed as YAML) over ``defaults``."""
    from glidre_core.fewshot.adapt import AdaptationRecipe
    from glidre_core.overrides import parse_overrides

    try:
        return AdaptationRecipe(**{**defaults, **parse_overrides(list(overrides))})
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc


@main.group()
def fewshot() -> None:
    """Few-shot evaluation: FREDo episodes, zero-shot and adapted."""


@fewshot.command("fredo")
@click.option("--split", required=True,
              type=click.Choice(["cross_domain_1", "cross_domain_3", "in_domain_1", "in_domain_3"]),
              help="cross_domain_* = SciERC (clean); in_domain_* is contaminated for models trained on Re-DocRED dev")
@click.option("--model", "model_ref", default="default", show_default=True, help="directory, 'default' or models:/NAME@ALIAS")
@click.option("--data-dir", default="../shared/data/fredo", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", default="100", show_default=True,
              help="seeded sample size (episodes with ids >= 50; 0..49 are the dev slice), or 'all' (the official 3,000)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-cpus", type=int, default=2, show_default=True, help="local Ray CPUs (0 = no Ray, in-process)")
@click.option("--zero-shot/--no-zero-shot", default=True, show_default=True, help="also score the unadapted model")
@click.option("--zero-shot-threshold", type=float, default=None, help="zero-shot decision threshold (default: the model's)")
@click.option("--set", "overrides", multiple=True,
              help="override the adaptation recipe (default: the prototype method): key=value, e.g. margin=0.5, "
                   "or method=finetune then epochs=10")
@click.option("--output-json", type=click.Path(dir_okay=False), default=None)
def fewshot_fredo(split, model_ref, data_dir, episodes, seed, num_cpus, zero_shot, zero_shot_threshold, overrides,
                  output_json) -> None:
    """FREDo episodic evaluation: adapt on each episode's support documents, predict its query
    documents, official macro F1 (percent) with a bootstrap 95% interval over episodes."""
    from glidre_core.fewshot.fredo import FredoConfig, run_fredo

    if split.startswith("in_domain"):
        click.echo(f"WARNING: FREDo {split} documents are DocRED dev documents (the source of Re-DocRED dev/test); "
                   "a model trained on Re-DocRED dev has seen them. Not comparable with published numbers.", err=True)
    k = None if episodes.strip().lower() == "all" else int(episodes)
    cfg = FredoConfig(split=split, model=model_ref, data_dir=data_dir, episodes=k, seed=seed, num_cpus=num_cpus,
                      zero_shot=zero_shot, zero_shot_threshold=zero_shot_threshold, recipe=_recipe(overrides))
    result = run_fredo(cfg)
    line = f"{split}: {result['episodes']} episodes, macro F1 {result['macro_f1']:.2f} " \
           f"[{result['macro_f1_ci95'][0]:.2f}, {result['macro_f1_ci95'][1]:.2f}]"
    if zero_shot:
        line += f"; zero-shot {result['zero_shot_macro_f1']:.2f}"
    click.echo(line + f" (percent; {result['seconds']:.0f}s)")
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {output_json}")


@main.command()
@click.option("--model", "model_ref", default="default", show_default=True, help="directory, 'default' or models:/NAME@ALIAS")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the labelled support documents (entities and relations of the new types)")
@click.option("--format", "fmt", type=click.Choice(["docred", "glidre", "conll04", "jsonl"]), default="jsonl", show_default=True)
@click.option("--labels", default=None, help="comma-separated relation labels, or a file (one per line); default: the data's")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="directory of the adapted model")
@click.option("--set", "overrides", multiple=True,
              help="override the adaptation recipe (default: the prototype method, FREDo's): key=value, e.g. "
                   "max_gap=null, or method=finetune then epochs=10")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@click.option("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI; none = no tracking)")
@click.option("--experiment", default="glidre-fewshot", show_default=True, help="MLflow experiment")
@click.option("--run-name", default=None, help="MLflow run name")
def adapt(model_ref, data_path, fmt, labels, output, overrides, overwrite, tracking_uri, experiment, run_name) -> None:
    """Add relation types to MODEL from a few (1-10) labelled documents; writes a model directory
    (by default the unchanged weights plus prototypes of the new labels)."""
    from glidre_core.fewshot.workflow import adapt_to_documents
    from glidre_core.readers import read_documents

    names = None
    if labels:
        p = Path(labels)
        raw = p.read_text(encoding="utf-8").splitlines() if p.is_file() else labels.split(",")
        names = [x.strip() for x in raw if x.strip()]
    try:
        record = adapt_to_documents(model_ref, read_documents(data_path, fmt), names, output,
                                    _recipe(overrides),
                                    overwrite=overwrite, tracking_uri=tracking_uri, experiment=experiment,
                                    run_name=run_name)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({k: record[k] for k in ("labels", "examples", "threshold", "seconds")}, indent=2))
    click.echo(f"wrote {output}")


@main.command("syntax-labels")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="documents with given entities and sentence spans (their own relations are replaced)")
@click.option("--format", "fmt", type=click.Choice(["docred", "glidre", "conll04", "jsonl"]), default="docred", show_default=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSON Lines corpus for pretraining")
@click.option("--exclude", default=None,
              help="label names never written (comma-separated, or a file with one per line): a zero-shot protocol's held-out types")
@click.option("--min-count", type=int, default=1, show_default=True, help="keep labels seen at least this often")
@click.option("--max-path-words", type=int, default=4, show_default=True)
@click.option("--limit", type=int, default=None, help="the first N documents")
@click.option("--overwrite", is_flag=True)
def syntax_labels(data_path, fmt, output, exclude, min_count, max_path_words, limit, overwrite) -> None:
    """Open relation labels from dependency paths (glidre_core/training/syntactic_labels.py): a
    pretraining corpus with thousands of label strings from an unlabelled corpus with entities."""
    from glidre_core.readers import read_documents
    from glidre_core.training.syntactic_labels import SyntacticLabeller, load_spacy_parser, write_syntax_corpus

    names: list[str] = []
    if exclude:
        p = Path(exclude)
        raw = p.read_text(encoding="utf-8").splitlines() if p.is_file() else exclude.split(",")
        names = [x.strip() for x in raw if x.strip()]
    try:
        labeller = SyntacticLabeller(load_spacy_parser(), min_count=min_count, max_path_words=max_path_words,
                                     exclude=names)
        manifest = write_syntax_corpus(read_documents(data_path, fmt, limit=limit), output, labeller,
                                       overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({k: manifest[k] for k in ("documents_written", "documents_with_relations",
                                                    "relations_written", "labels", "seconds")}, indent=2))
    click.echo(f"wrote {output}")


# -- model registry ------------------------------------------------------------------------------
@main.command()
@click.option("--name", required=True, help="registered model name")
@click.option("--version", "version", required=True, help="candidate version")
@click.option("--alias", default="champion", show_default=True)
@click.option("--metric", default="f1", show_default=True, help="recorded evaluation metric (higher is better)")
@click.option("--min-delta", type=float, default=0.0, show_default=True, help="required improvement over the holder")
@click.option("--force", is_flag=True, help="promote even if the metric gate fails (needs --reason)")
@click.option("--reason", default=None, help="why (recorded on the version; required with --force)")
@click.option("--dry-run", is_flag=True, help="compare and explain, change nothing")
@click.option("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
def promote(name, version, alias, metric, min_delta, force, reason, dry_run, tracking_uri) -> None:
    """Move ALIAS to VERSION if its recorded evaluation beats the current holder's on the same data."""
    from glidre_core.promotion import PromotionError, promote as do_promote

    try:
        decision = do_promote(name, version, alias=alias, metric=metric, min_delta=min_delta, force=force,
                              reason=reason, dry_run=dry_run, tracking_uri=tracking_uri)
    except PromotionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(decision.report())
    if not decision.promote:
        sys.exit(1)


# -- clusters and jobs ---------------------------------------------------------------------------
@main.group()
def cluster() -> None:
    """Ray cluster launcher (ray up/down/exec/dashboard) on a cluster YAML (cluster/*.yaml)."""


def _cluster_action(action: str, config_path: str, dry_run: bool, **kw) -> None:
    from glidre_core.cluster import launcher_command, validate_launcher_config

    try:
        validate_launcher_config(config_path)
    except Exception as exc:  # noqa: BLE001 - Ray raises jsonschema / ValueError / KeyError
        raise click.ClickException(f"{config_path}: invalid cluster config: {exc}") from exc
    cmd = launcher_command(action, config_path, **kw)
    click.echo(("DRY RUN: " if dry_run else "") + cmd.shell())
    rc = cmd.run(dry_run)
    if rc:
        sys.exit(rc)


_cluster_config = click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
_dry_run = click.option("--dry-run", is_flag=True, help="print the command, run nothing")


@cluster.command("up")
@_cluster_config
@_dry_run
@click.option("--no-config-cache", is_flag=True)
def cluster_up(config_path, dry_run, no_config_cache) -> None:
    """Start or update the cluster."""
    _cluster_action("up", config_path, dry_run, no_config_cache=no_config_cache)


@cluster.command("down")
@_cluster_config
@_dry_run
def cluster_down(config_path, dry_run) -> None:
    """Tear the cluster down."""
    _cluster_action("down", config_path, dry_run)


@cluster.command("status")
@_cluster_config
@_dry_run
def cluster_status(config_path, dry_run) -> None:
    """Nodes, resources and autoscaler state (ray status on the head)."""
    _cluster_action("status", config_path, dry_run)


@cluster.command("dashboard")
@_cluster_config
@_dry_run
@click.option("--port", type=int, default=None, help="local port (Ray's default 8265)")
def cluster_dashboard(config_path, dry_run, port) -> None:
    """Port-forward the dashboard (and Jobs API) of the head to localhost."""
    _cluster_action("dashboard", config_path, dry_run, port=port)


@cluster.command("validate")
@_cluster_config
def cluster_validate(config_path) -> None:
    """Validate a cluster launcher YAML offline against Ray's schema."""
    from glidre_core.cluster import validate_launcher_config

    try:
        prepared = validate_launcher_config(config_path)
    except Exception as exc:  # noqa: BLE001
        raise click.ClickException(f"{config_path}: invalid cluster config: {exc}") from exc
    types = prepared.get("available_node_types", {})
    click.echo(f"{config_path}: valid ({prepared['cluster_name']}; node types: {', '.join(types)})")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("kind", type=click.Choice(["extract", "train"]))
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="job config, inside the working dir (e.g. configs/finetune.yaml)")
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value")
@click.option("--address", default=None, help="Jobs API address (default $RAY_ADDRESS or http://127.0.0.1:8265)")
@click.option("--working-dir", default=".", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--runtime-env", "runtime_env_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML runtime env merged into the default one")
@click.option("--env", "env_items", multiple=True, help="extra job environment variable KEY=VALUE")
@click.option("--submission-id", default=None)
@click.option("--no-wait", is_flag=True, help="return after submitting instead of streaming logs")
@click.option("--auth-mode", type=click.Choice(["token", "disabled"]), default="token", show_default=True)
@click.option("--auth-token-file", type=click.Path(dir_okay=False), default=None,
              help="cluster token file (default $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
@_dry_run
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
def submit(kind, config_path, overrides, address, working_dir, runtime_env_file, env_items, submission_id,
           no_wait, auth_mode, auth_token_file, dry_run, job_args) -> None:
    """Submit jobs/KIND.py to a Ray cluster through the Jobs API (ray job submit).

    Arguments after the options (e.g. -- --resume) are passed to the job script."""
    import os

    from glidre_core.cluster import DEFAULT_DASHBOARD, submit_command

    extra_env = {}
    for item in env_items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        k, v = item.split("=", 1)
        extra_env[k] = v
    try:
        cmd = submit_command(
            kind, config_path, address=address or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD,
            working_dir=working_dir, overrides=overrides, job_args=job_args, runtime_env_file=runtime_env_file,
            extra_env=extra_env, submission_id=submission_id, no_wait=no_wait, auth_mode=auth_mode,
            auth_token_file=auth_token_file,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(("DRY RUN: " if dry_run else "") + cmd.shell())
    rc = cmd.run(dry_run)
    if rc:
        sys.exit(rc)


# -- experiments on Ray Tune (glidre_core.experiments) ---------------------------------------------
@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="experiment YAML (configs/experiments/*.yaml)")
@click.option("--set", "overrides", multiple=True, help="override an experiment value: key.sub=value")
@click.option("--max-trials", type=int, default=None,
              help="stop after this many trials end in this invocation (rerun the command to continue)")
@click.option("--overwrite", is_flag=True, help="delete the experiment's stored state and start over")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="where results.json / results.md go (default report.output_dir, else the experiment directory)")
def experiment(config_path, overrides, max_trials, overwrite, report_dir) -> None:
    """Run (or resume) a grid / search of training trials on Ray Tune; one results table.

    Running the same command again resumes an interrupted experiment: finished trials are kept,
    the others run."""
    from glidre_core.experiments import ExperimentConfigError, load_experiment_config
    from glidre_core.experiments.runner import run_experiment

    try:
        cfg = load_experiment_config(config_path, list(overrides))
        outcome = run_experiment(cfg, overwrite=overwrite, max_trials=max_trials, report_dir=report_dir)
    except (ExperimentConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(outcome.markdown_path.read_text())
    click.echo(f"wrote {outcome.json_path} and {outcome.markdown_path}")
    if outcome.interrupted:
        click.echo("stopped before the end" + (" (trial budget)" if outcome.budget_reached else "")
                   + f": rerun the same command to resume {outcome.path}", err=True)
        if not outcome.budget_reached:
            sys.exit(130)


# -- LLM stage: distill, serve ------------------------------------------------------------------
@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML config (configs/distill.yaml)")
@click.option("--input", "input_uri", default=None, help="JSON Lines ({doc_id, text}) file, directory or s3:// prefix")
@click.option("--output", "output_uri", default=None, help="output directory or s3:// prefix")
@click.option("--teacher", default=None,
              help="model:DIR | model:default (GLiDRE teacher) | hf:DIR | gguf:PATH (in-process LLM); else the YAML's")
@click.option("--resume", is_flag=True, help="continue an interrupted run, skipping documents already written")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value")
def distill(config_path, input_uri, output_uri, teacher, resume, overwrite, overrides) -> None:
    """Label a raw corpus with a teacher (an LLM or a GLiDRE model): GLiDRE training data out."""
    from glidre_core.extraction.session import JobInterrupted
    from glidre_core.llm.config import load_distill_config
    from glidre_core.llm.distill import DistillError, run_distill, summary_text

    try:
        cfg = load_distill_config(config_path, list(overrides), {
            "input": input_uri, "output": output_uri, "teacher": teacher, "resume": True if resume else None,
            "overwrite": True if overwrite else None})
        manifest = run_distill(cfg)
    except (DistillError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except JobInterrupted as exc:
        click.echo(f"distill {exc}: committed parts are kept, rerun with --resume to continue", err=True)
        sys.exit(exc.exit_code)
    click.echo(summary_text(manifest))
    if not manifest["reconciled"]:
        raise click.ClickException("the output does not reconcile with the input (see the log and _manifest.json)")


@main.group()
def llm() -> None:
    """LLM backends: serve a local model over the OpenAI API."""


@llm.command("serve")
@click.option("--model", default="gemma-3-270m", show_default=True,
              help="built-in name (gemma-3-270m), a transformers directory or a .gguf file")
@click.option("--served-name", default=None, help="the model name clients send (default: --model)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="sequences per generate() call")
@click.option("--max-queue", type=int, default=256, show_default=True, help="waiting requests before 429")
@click.option("--torch-threads", type=int, default=None)
def llm_serve(model, served_name, host, port, batch_size, max_queue, torch_threads) -> None:
    """Serve an in-process transformers model at http://HOST:PORT/v1 (chat and completions)."""
    from glidre_core.llm.config import TransformersBackendConfig
    from glidre_core.llm.local import TransformersBackend
    from glidre_core.llm.server import OpenAIServer

    backend = TransformersBackend(TransformersBackendConfig(model=model, batch_size=batch_size,
                                                            torch_threads=torch_threads))
    server = OpenAIServer(backend, served_name or model, host, port, max_batch=batch_size, max_queue=max_queue)
    click.echo(f"serving {served_name or model} at {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
