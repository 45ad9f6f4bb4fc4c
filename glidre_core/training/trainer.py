"""Single-process training loop (it runs unchanged inside a Ray Train worker).

Why it is shaped this way, for two CPU cores:

* Frozen lower encoder layers are run **once** per document and their outputs cached
  (``cache_frozen_layers``); each step then runs only the trainable top layers and the heads.
* The label encoder is frozen by default, so each label string is encoded once for the whole run.
* bf16 autocast is optional, and only where the hardware runs bf16 natively (:attr:`Trainer.precision`).

Model selection uses dev data only: every ``eval_every`` steps the dev set is scored, the decision
threshold is swept, and the best checkpoint is saved together with its threshold.

Distributed use (Ray Train, :mod:`glidre_core.ray_train`) adds, all optional and off by default:
``rank``/``world_size`` (each rank trains on its own shard of the training documents, padded so
every rank runs the same number of steps; gradients are averaged by DDP; rank 0 alone evaluates
and saves), ``resume_from`` (a checkpoint directory: weights, optimizer, scheduler, RNG and the
position in the epoch), ``on_checkpoint`` (called on every rank at every evaluation point) and
``on_step``. With the defaults the loop does exactly what it did before these existed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glidre_core.documents import Document
from glidre_core.evaluation import dev_predictor, dev_train_facts, entity_threshold_sweep, evaluate_dev
from glidre_core.modeling import GLiDRE, PreparedDocument
from glidre_core.modeling.batch import ModelBatch
from glidre_core.modeling.cache import EncoderCache
from glidre_core.modeling.label_text import load_label_descriptions
from glidre_core.modeling.precision import native_bf16
from glidre_core.modeling.targets import joint_loss, training_batch
from glidre_core.readers import read_documents, relation_labels
from glidre_core.training.checkpoint import (
    BEST_DIR,
    MODEL_DIR,
    RankState,
    TrainState,
    load_model_weights,
    load_rank_state,
    load_train_state,
    save_checkpoint,
)
from glidre_core.training.calibration import calibrate_saved_model
from glidre_core.training.config import TrainingConfig
from glidre_core.training.label_phrasings import LabelPhraser, load_label_phrasings
from glidre_core.training.label_sampler import LabelSampler

logger = logging.getLogger(__name__)

EvalCallback = Callable[[dict[str, Any]], None]
#: called on every rank at every evaluation point with (trainer, dev record or None off rank 0)
CheckpointCallback = Callable[["Trainer", "dict[str, Any] | None"], None]
#: called on every rank after every optimizer step with the step number
StepCallback = Callable[[int], None]


@dataclass
class TrainingResult:
    best_dir: Path
    best_f1: float
    best_threshold: float
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def subset_documents(pool: list[Document], n: int, seed: int) -> list[Document]:
    """``n`` documents of ``pool``: the first ``n`` of a ``random.Random(seed)`` shuffle, returned
    in pool order (the rule of :class:`~glidre_core.training.config.SubsetSection`: same subset
    for every arm, nested across ``n`` for one seed)."""
    if n > len(pool):
        raise ValueError(f"subset.n={n} is larger than the training pool ({len(pool)} documents after the dev hold-out)")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    keep = set(order[:n])
    return [d for i, d in enumerate(pool) if i in keep]


def without_labels(docs: list[Document], labels: set[str]) -> list[Document]:
    """``docs`` with every relation whose label is in ``labels`` removed (entities untouched)."""
    if not labels:
        return docs
    return [
        d.model_copy(update={"relations": [r for r in d.relations if r.label not in labels]})
        if any(r.label in labels for r in d.relations) else d
        for d in docs
    ]


def split_train_dev(
    cfg: TrainingConfig, corpus_of: dict[str, int] | None = None
) -> tuple[list[Document], list[Document]]:
    """Train and dev documents. Without a dev file, the last ``dev_holdout`` docs of a seeded
    shuffle (``holdout_seed``, else ``seed``) of the training file are held out; ``subset`` then
    keeps n documents of what is left. ``exclude_labels`` are removed from every document. With
    ``refit`` the dev documents are appended to the training documents too.
    ``corpus_of`` (filled if given) maps each doc id to its corpus: 0 for ``train``/``dev``, i+1
    for ``extra_train[i]``/``extra_dev[i]``."""
    corpus_of = {} if corpus_of is None else corpus_of
    excluded = set(cfg.exclude_labels)
    removed: Counter[str] = Counter()

    def read(data, corpus: int) -> list[Document]:
        docs = read_documents(data.path, data.format, on_error="skip", limit=data.limit)
        corpus_of.update((d.doc_id, corpus) for d in docs)
        removed.update(r.label for d in docs for r in d.relations if r.label in excluded)
        return without_labels(docs, excluded)

    train = read(cfg.train, 0)
    extra_train = [d for i, data in enumerate(cfg.extra_train) for d in read(data, i + 1)]
    extra_dev = [d for i, data in enumerate(cfg.extra_dev) for d in read(data, i + 1)]
    if cfg.dev is not None:
        train, dev = train, read(cfg.dev, 0)
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed if cfg.holdout_seed is None else cfg.holdout_seed).shuffle(order)
        if cfg.dev_holdout >= len(train):
            raise ValueError(f"dev_holdout={cfg.dev_holdout} leaves no training documents ({len(train)} read)")
        dev_idx = set(order[-cfg.dev_holdout :])
        train, dev = [d for i, d in enumerate(train) if i not in dev_idx], [d for i, d in enumerate(train) if i in dev_idx]
    if cfg.subset is not None:
        train = subset_documents(train, cfg.subset.n, cfg.subset.seed)
    if excluded:
        absent = sorted(excluded - set(removed))
        logger.info("exclude_labels: removed %d facts (%s)", sum(removed.values()),
                    ", ".join(f"{k} {v}" for k, v in sorted(removed.items())) or "none")
        if absent:
            logger.warning("exclude_labels: %s never occur in the training/dev data", absent)
    train, dev = train + extra_train, dev + extra_dev
    ids = [d.doc_id for d in train + dev]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"document ids repeat across the training/dev corpora: {dup}")
    if cfg.refit is not None:
        # the refit protocol (RefitSection): dev joins training; it is still returned as dev so
        # that the run logs how well the final weights fit it, flagged as seen data
        train = train + dev
    return train, dev


def shard_documents(docs: list[Document], rank: int, world_size: int) -> list[Document]:
    """Rank ``rank``'s fixed shard (every ``world_size``-th document), padded by repeating its own
    documents so that all shards have the same length: DDP needs every rank to run the same
    number of steps, or the ranks that finish early leave the others waiting in an all-reduce."""
    if world_size == 1:
        return docs
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if len(docs) < world_size:
        raise ValueError(f"{len(docs)} training documents cannot be sharded over {world_size} workers")
    shard = docs[rank::world_size]
    size = math.ceil(len(docs) / world_size)
    return shard + shard[: size - len(shard)]


def _mean(values: list[torch.Tensor]) -> float:
    """Mean of on-device scalars, read back once (NaN for none)."""
    return float(torch.stack(values).float().mean()) if values else float("nan")


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


class _LossModule(nn.Module):
    """The training loss as a ``forward`` (what DDP wraps: it synchronises gradients of the
    parameters reached from ``forward``'s output)."""

    def __init__(self, model: GLiDRE):
        super().__init__()
        self.model = model

    def forward(self, batch: ModelBatch, labels: list[str] | None, entity_types: list[str] | None = None) -> torch.Tensor:
        types = self.model.encode_entity_types(entity_types) if entity_types else None
        rel = self.model.encode_labels(labels) if labels is not None else None
        loss = joint_loss(self.model, batch, self.model(batch, rel, types))
        weight = self.model.config.label_anchor_weight
        if labels is not None and weight > 0:
            loss = loss + weight * self.model.label_anchor_penalty(labels)
        return loss


class Trainer:
    """Owns model, data, optimizer and the loop. ``on_eval`` receives each dev record."""

    def __init__(
        self,
        cfg: TrainingConfig,
        on_eval: EvalCallback | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        resume_from: str | Path | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        on_step: StepCallback | None = None,
    ):
        self.cfg = cfg
        self.on_eval = on_eval
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.on_checkpoint = on_checkpoint
        self.on_step = on_step
        self.output_dir = Path(cfg.output_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.bf16 and not cfg.force_bf16 and not native_bf16(self.device):
            logger.warning("bf16: true, but %s has no native bf16 (AVX512-BF16/AMX or a bf16 GPU): training in "
                           "fp32, which is about 13x faster here than emulated bf16 (force_bf16: true to override)",
                           self.device)
        seed_everything(cfg.seed)
        corpus_of: dict[str, int] = {}
        all_train, self.dev_docs = split_train_dev(cfg, corpus_of)
        #: main-corpus dev documents: the ones unseen-label calibration reads again
        self.main_dev_ids = [d.doc_id for d in self.dev_docs if corpus_of.get(d.doc_id, 0) == 0]
        #: outcome of the unseen-label calibration (``unseen_calibration_labels``), after train()
        self.unseen_calibration: dict[str, Any] | None = None
        if not all_train:
            raise ValueError(f"no usable training documents in {cfg.train.path}")
        labels = relation_labels(all_train + self.dev_docs)
        if not labels:
            raise ValueError("the training data has no relations")
        if cfg.pretraining.enabled:
            # distilled corpora spell one type several ways (PLAYS_FOR, plays for): one label each
            labels = sorted({cfg.model.normalize_label(lab) for lab in labels})
        self.all_train_docs = all_train
        self.train_docs = shard_documents(all_train, rank, world_size)
        update: dict[str, Any] = {"labels": labels}
        self.entity_labels: list[str] = []
        if cfg.model.span_head:
            self.entity_labels = sorted(
                {lab for d in all_train + self.dev_docs for e in d.entities if (lab := cfg.model.entity_label(e.type))}
            )
            if not self.entity_labels:
                raise ValueError("span_head is on but no training entity has a type")
            update["entity_labels"] = self.entity_labels
        if cfg.refit is not None:
            update["threshold"] = cfg.refit.threshold
            if cfg.refit.entity_threshold is not None:
                update["entity_threshold"] = cfg.refit.entity_threshold
        if cfg.label_descriptions is not None:
            loaded = load_label_descriptions(cfg.label_descriptions)
            described = {cfg.model.normalize_label(k) for k in loaded}
            covered = [lab for lab in labels if cfg.model.normalize_label(lab) in described]
            if not covered:
                raise ValueError(
                    f"label_descriptions {cfg.label_descriptions!r} describes none of the {len(labels)} "
                    f"training labels (e.g. {labels[:3]})"
                )
            logger.info("label descriptions: %d of %d training labels have one (%d in the set)",
                        len(covered), len(labels), len(loaded))
            update["label_descriptions"] = {**cfg.model.label_descriptions, **loaded}
        model_cfg = cfg.model.model_copy(update=update)
        self.model = GLiDRE(model_cfg).to(self.device)
        if cfg.init_from:
            self._init_from(cfg.init_from)
        if cfg.train_only is not None:
            for name, param in self.model.named_parameters():
                param.requires_grad_(any(name.startswith(prefix) for prefix in cfg.train_only))
            if not any(p.requires_grad for p in self.model.parameters()):
                raise ValueError(f"train_only={cfg.train_only} matches no parameter")
        self.labels = labels
        self.relation_heads_trained = any(
            p.requires_grad for n, p in self.model.named_parameters() if n.startswith("scorer.")
        )
        # the span loss reaches the span head, the type side of the label encoder and the encoder
        span_reach = ("span_head.", "encoder.", "word_projection.", "label_encoder.projection.", "label_encoder.model.")
        self.span_head_trained = cfg.model.span_loss_weight > 0 and any(
            p.requires_grad for n, p in self.model.named_parameters() if n.startswith(span_reach)
        )
        self.sampler: LabelSampler | None = None
        if cfg.pretraining.enabled:
            norm = model_cfg.normalize_label
            counts = Counter(norm(r.label) for d in all_train for r in d.relations)
            pt = cfg.pretraining
            self.sampler = LabelSampler(
                labels, pt.negatives_per_batch, pt.max_labels_per_batch,
                seed=cfg.seed + 7919 * rank, weighting=pt.negative_sampling, counts=counts,
            )
        self.phraser: LabelPhraser | None = None
        if cfg.label_phrasings is not None:
            self.phraser = LabelPhraser(
                load_label_phrasings(cfg.label_phrasings.source), cfg.label_phrasings.probability,
                seed=cfg.seed, rank=rank, normalize=model_cfg.normalize_label,
            )
            covered = self.phraser.covered(labels)
            if not covered:
                raise ValueError(
                    f"label_phrasings {cfg.label_phrasings.source!r} has phrasings for none of the "
                    f"{len(labels)} training labels (e.g. {labels[:3]})"
                )
            logger.info("label phrasings: %d of %d training labels have phrasings (p=%.2f)",
                        len(covered), len(labels), cfg.label_phrasings.probability)
        self.prepared: dict[str, PreparedDocument] = {}
        # only rank 0 evaluates, so only rank 0 prepares (and caches) the dev documents
        for d in self.train_docs + (self.dev_docs if rank == 0 else []):
            self.prepared[d.doc_id] = self.model.prepare(d)
        if self.entity_labels:
            # each corpus teaches only the entity types it annotates: CoNLL04 has no "time", so
            # its dates must not become negatives for the "time" type Re-DocRED teaches
            scope: dict[int, set[str]] = {}
            for d in all_train + self.dev_docs:
                scope.setdefault(corpus_of.get(d.doc_id, 0), set()).update(
                    t for e in d.entities if (t := cfg.model.entity_label(e.type)))
            for doc_id, p in self.prepared.items():
                p.entity_type_scope = frozenset(scope.get(corpus_of.get(doc_id, 0), ()))
        corpus_weight = [cfg.train.relation_weight] + [d.relation_weight for d in cfg.extra_train]
        for doc_id, p in self.prepared.items():
            corpus = corpus_of.get(doc_id, 0)  # dev-only corpora have no training weight
            p.relation_weight = corpus_weight[corpus] if corpus < len(corpus_weight) else 1.0
        self.cache: EncoderCache | None = None
        encoder_frozen = not any(p.requires_grad for p in self.model.encoder.parameters())
        if cfg.cache_frozen_layers and encoder_frozen:
            self.cache = EncoderCache(self.model, self.prepared, "encoded", cfg.batch_size)
        elif cfg.cache_frozen_layers and self.model.frozen_split > 0:
            if self.model.encoder.bert_like:
                self.cache = EncoderCache(self.model, self.prepared, "lower", cfg.batch_size)
            else:  # the lower layers are frozen but run in every step (the generic encoder path)
                logger.warning("cache_frozen_layers: %s is not BERT-like, so its frozen lower layers "
                               "cannot be cached; they run in every step", type(self.model.encoder.model).__name__)
        self.last_dev_eval: dict[str, Any] | None = None
        self._train_fact_names: set[tuple[str, str, str]] | None = None
        self._live: dict[str, Any] = {}
        logger.info(
            "training on %d docs (rank %d of %d, %d in total), dev %d docs, %d labels, frozen layers %d (cached: %s)",
            len(self.train_docs), rank, world_size, len(all_train), len(self.dev_docs), len(labels),
            self.model.frozen_split, self.cache is not None,
        )

    def _init_from(self, source: str) -> None:
        """Start from saved weights; tensors of parts the saved model lacks (a span head added
        in this run) keep their fresh initialisation."""
        from glidre_core.modeling.persistence import DEFAULT_MODEL_DIR, WEIGHTS_NAME

        directory = DEFAULT_MODEL_DIR if source == "default" else Path(source)
        self.model.load_weights(directory / WEIGHTS_NAME, allow_missing=("span_head.",))
        self.model.label_encoder.clear_cache()
        logger.info("initialised from %s", directory)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with one learning rate for the encoders and one for the heads, in torch's fused
        implementation on every device: the same update (summation order aside) in one kernel
        group per step instead of a few ops per parameter. On CUDA that is fewer launches paid
        on the host; on the CPU the per-parameter loop was about 3,000 aten ops per step, most
        of the step's ops, in a profile of the default recipe's step. Checkpoints hold the same
        optimizer state either way."""
        groups = [
            {"params": self.model.encoder_parameters(), "lr": self.cfg.lr_encoder},
            {"params": self.model.head_parameters(), "lr": self.cfg.lr_heads},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=self.cfg.weight_decay, fused=True)

    def epochs_to_run(self) -> int:
        """``epochs``, or more when ``min_steps`` asks for more optimizer steps than that."""
        if not self.cfg.min_steps:
            return self.cfg.epochs
        per_epoch = math.ceil(len(self.train_docs) / (self.cfg.batch_size * self.cfg.grad_accum))
        return max(self.cfg.epochs, math.ceil(self.cfg.min_steps / per_epoch))

    def total_steps(self) -> int:
        per_epoch = math.ceil(len(self.train_docs) / (self.cfg.batch_size * self.cfg.grad_accum))
        total = per_epoch * self.epochs_to_run()
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    @property
    def precision(self) -> str:
        """``"bf16"`` or ``"fp32"``: what :meth:`autocast` runs. ``cfg.bf16`` asks for bf16's
        speed, so it is granted only where bf16 is native (``modeling.precision.native_bf16``);
        on other hardware emulated bf16 would be about 13x slower than fp32. ``cfg.force_bf16``
        turns autocast on anyway. Every dev record carries the value, since fp32 and bf16 runs
        of one config differ slightly in their numbers."""
        if self.cfg.force_bf16 or (self.cfg.bf16 and native_bf16(self.device)):
            return "bf16"
        return "fp32"

    def autocast(self) -> torch.autocast:
        """The training precision context (bf16 autocast when :attr:`precision` is bf16)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def dev_train_facts(self) -> set[tuple[str, str, str]]:
        """The training facts dev Ign F1 discounts (computed once)."""
        if self._train_fact_names is None:
            self._train_fact_names = dev_train_facts(self.model, self.all_train_docs)
        return self._train_fact_names

    def dev_evaluation(self) -> dict[str, Any]:
        """Dev threshold sweep plus P/R/F1 and Ign F1 at the chosen threshold (rank 0 only).

        Relations are scored by :func:`glidre_core.evaluation.evaluate_dev` on the candidates of
        :func:`glidre_core.evaluation.dev_predictor` (the model's label set; its docstring says
        why that set), the very call the final evaluation of the best checkpoint makes
        (:func:`glidre_core.ray_train.finalize`): the dev F1 recorded for a checkpoint is the F1
        that checkpoint gets, reloaded, at the threshold saved with it. The threshold is chosen
        here when the relation heads train; a stage that does not train them keeps the stored
        one, and is scored at it.

        Runs through the public inference layer (:class:`glidre_core.inference.Predictor`), so
        label and type embeddings are encoded in eval mode: with dropout on they would be
        noisy, and so would checkpoint selection and the saved thresholds. And it scores the
        weights as they will be saved (rounded to ``config.save_dtype``,
        :meth:`GLiDRE.weights_as_saved`), so the checkpoint chosen is the model written.
        """
        dev = [self.prepared[d.doc_id] for d in self.dev_docs]
        # scored as saved: the weights rounded to the checkpoint's dtype (GLiDRE.weights_as_saved),
        # label and type embeddings included (the predictor encodes them when it is built)
        with self.autocast(), self.model.weights_as_saved():
            predictor = dev_predictor(
                self.model, entity_labels=self.entity_labels or None,
                batch_size=self.cfg.batch_size, encoder_cache=self.cache,
            )
            sweep = self.relation_heads_trained and self.cfg.refit is None
            rel = evaluate_dev(predictor, self.dev_docs, prepared=dev, train_facts=self.dev_train_facts(),
                               threshold="sweep" if sweep else None)
            spans = predictor.score_spans(dev) if self.entity_labels else None
        result = {
            "f1": rel["f1"], "threshold": rel["threshold"], "curve": rel["curve"],
            "precision": rel["precision"], "recall": rel["recall"], "ign_f1": rel["ign_f1"],
            "score": rel["f1"],
        }
        if spans is not None:
            # a refit scores at its given entity threshold: its dev data cannot choose one
            grid = {} if self.cfg.refit is None else {"grid": [self.model.config.entity_threshold]}
            ent = entity_threshold_sweep(self.model, spans, self.dev_docs, predictor.entity_types, **grid)
            result.update(entity_f1=ent["f1"], entity_threshold=ent["threshold"])
            select = self.cfg.select_on or "mean"
            result["score"] = {"relation": rel["f1"], "entity": ent["f1"], "mean": (rel["f1"] + ent["f1"]) / 2}[select]
        self.last_dev_eval = result
        return self.last_dev_eval

    def evaluate_dev(self) -> tuple[float, float]:
        result = self.dev_evaluation()
        return result["f1"], result["threshold"]

    # -- checkpoints ---------------------------------------------------------------------------
    def step_now(self) -> int:
        """The optimizer step the loop has reached (0 before train())."""
        return int(self._live.get("step", 0))

    def save_checkpoint(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write this rank's part of a checkpoint of the loop (from on_checkpoint, or after
        train() returned: the state it ended in)."""
        live = self._live
        if not live:
            raise RuntimeError("save_checkpoint is only valid once train() has started")
        rank_state = RankState(
            epoch_rng=live["epoch_rng"],
            sampler_rng=self.sampler.get_state() if self.sampler else None,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
        )
        state = None
        if self.rank == 0:
            state = TrainState(
                step=live["step"], epoch=live["epoch"], batch_offset=live["batch_offset"],
                best_f1=live["best_f1"], best_threshold=live["best_thr"], seen_docs=live["seen_docs"],
                elapsed_seconds=time.perf_counter() - live["start"], world_size=self.world_size,
                history=live["history"], scheduler=live["scheduler"].state_dict(), extra=dict(extra or {}),
            )
        return save_checkpoint(
            directory, rank=self.rank, model=self.model if self.rank == 0 else None,
            optimizer=live["optimizer"] if self.rank == 0 else None, state=state,
            rank_state=rank_state, best_dir=live["best_dir"],
        )

    def _restore(self, optimizer, scheduler, rng: random.Random, best_dir: Path) -> TrainState:
        directory = self.resume_from
        state, opt_state = load_train_state(directory)
        load_model_weights(self.model, directory / MODEL_DIR)
        self.model.config.threshold = state.best_threshold
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state.scheduler)
        rank_state = load_rank_state(directory, self.rank)
        if state.world_size != self.world_size or rank_state is None:
            logger.warning(
                "checkpoint was taken with %d workers, now %d: resuming at step %d from the start of epoch %d",
                state.world_size, self.world_size, state.step, state.epoch,
            )
            state.batch_offset = 0
            rng.seed(self.cfg.seed + 7919 * self.rank + state.epoch)
        else:
            rng.setstate(rank_state.epoch_rng)
            torch.set_rng_state(rank_state.torch_rng)
            if rank_state.cuda_rng is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rank_state.cuda_rng)
            if self.sampler and rank_state.sampler_rng is not None:
                self.sampler.set_state(rank_state.sampler_rng)
        if self.rank == 0 and (directory / BEST_DIR).is_dir():
            shutil.copytree(directory / BEST_DIR, best_dir, dirs_exist_ok=True)
        logger.info("resumed from %s at step %d (epoch %d, batch offset %d)", directory, state.step, state.epoch, state.batch_offset)
        return state

    # -- the loop ------------------------------------------------------------------------------
    def loss_module(self) -> nn.Module:
        """The loss as a module's ``forward``, wrapped in DDP when there are several ranks."""
        net = _LossModule(self.model)
        if self.world_size > 1:
            # every rank builds the same seeded model and resumes from the same weights; DDP also
            # broadcasts rank 0's parameters when it wraps the module
            device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=True)
        return net

    def _agree(self, flag: bool) -> bool:
        """Ranks must stop together: any rank out of time stops all of them."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def train(self) -> TrainingResult:
        cfg, model = self.cfg, self.model
        self.output_dir.mkdir(parents=True, exist_ok=True)
        optimizer = self.build_optimizer()
        total = self.total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, int(cfg.warmup_ratio * total)))
        rng = random.Random(cfg.seed if self.rank == 0 else cfg.seed + 7919 * self.rank)
        history: list[dict[str, Any]] = []
        best_f1, best_thr = -1.0, model.config.threshold
        best_dir = self.output_dir / "best"
        step, micro, running, seen_docs, dev_total = 0, 0, [], 0, 0.0
        start_epoch, start_offset, elapsed_before = 0, 0, 0.0
        if self.resume_from is not None:
            st = self._restore(optimizer, scheduler, rng, best_dir)
            step, micro, seen_docs = st.step, st.step * cfg.grad_accum, st.seen_docs
            best_f1, best_thr, history = st.best_f1, st.best_threshold, st.history
            start_epoch, start_offset, elapsed_before = st.epoch, st.batch_offset, st.elapsed_seconds
        net = self.loss_module()
        start = time.perf_counter() - elapsed_before
        live = self._live = {
            "optimizer": optimizer, "scheduler": scheduler, "history": history, "best_dir": best_dir,
            "start": start, "step": step, "epoch": start_epoch, "batch_offset": start_offset,
            "best_f1": best_f1, "best_thr": best_thr, "seen_docs": seen_docs, "epoch_rng": rng.getstate(),
        }
        model.train()
        stop = step >= total
        params = [p for p in model.parameters() if p.requires_grad]
        for epoch in range(start_epoch, self.epochs_to_run()):
            if stop:
                break
            live["epoch_rng"] = rng.getstate()
            order = [d.doc_id for d in self.train_docs]
            rng.shuffle(order)
            first = start_offset if epoch == start_epoch else 0
            for b in range(first, len(order), cfg.batch_size):
                ids = order[b : b + cfg.batch_size]
                docs = [self.prepared[i] for i in ids]
                if self.sampler is not None:
                    labels = self.sampler.sample(lab for p in docs for _, lab, _ in p.relations)
                else:
                    labels = self.labels
                # a zero relation weight (a stage that trains the span head alone) skips pair scoring
                rel_labels = labels if cfg.model.relation_loss_weight > 0 else None
                # and so does a span head that cannot learn (zero weight, or frozen by train_only:
                # a stage that trains the relation heads alone)
                span_types = (self.entity_labels or None) if self.span_head_trained else None
                batch = training_batch(model, docs, rel_labels, span_types)
                # targets follow label positions; only the strings the labels are encoded under change
                enc_labels = (self.phraser.draw(rel_labels, micro)
                              if self.phraser is not None and rel_labels is not None else rel_labels)
                if self.cache is not None:
                    batch = self.cache.attach(batch)
                sync = (micro + 1) % cfg.grad_accum == 0
                no_sync = net.no_sync() if (self.world_size > 1 and not sync) else contextlib.nullcontext()
                with no_sync:
                    with self.autocast():
                        loss = net(batch, enc_labels, span_types) / cfg.grad_accum
                    loss.backward()
                # kept on the device: reading a loss back every step would stall a GPU
                running.append(loss.detach() * cfg.grad_accum)
                seen_docs += len(docs)
                micro += 1
                if micro % cfg.grad_accum:
                    continue
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                live.update(step=step, epoch=epoch, batch_offset=b + cfg.batch_size, seen_docs=seen_docs)
                if self.on_step:
                    self.on_step(step)
                elapsed = time.perf_counter() - start
                if step % 20 == 0:
                    recent = running[-20:]
                    logger.info(
                        "epoch %d step %d/%d loss %.4f %.2f docs/s elapsed %.1f min",
                        epoch, step, total, _mean(recent), seen_docs / elapsed, elapsed / 60,
                    )
                out_of_time = self._agree(cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60)
                last = step >= total or out_of_time
                if step % cfg.eval_every == 0 or last:
                    record = None
                    if self.rank == 0:
                        dev_start = time.perf_counter()
                        dev = self.dev_evaluation()
                        dev_seconds = time.perf_counter() - dev_start
                        dev_total += dev_seconds
                        f1, thr = dev["score"], dev["threshold"]
                        record = {
                            "step": step, "epoch": epoch, "minutes": elapsed / 60,
                            "train_loss": _mean(running),
                            "dev_f1": f1, "dev_threshold": thr,
                            "lr_heads": scheduler.get_last_lr()[-1],
                            "dev_ign_f1": dev["ign_f1"], "dev_precision": dev["precision"],
                            "dev_recall": dev["recall"], "docs_per_second": seen_docs / elapsed,
                            # the cost of a dev evaluation next to the training it interrupts
                            "dev_seconds": dev_seconds,
                            "train_docs_per_second": seen_docs / max(elapsed - (dev_total - dev_seconds), 1e-9),
                        }
                        if "entity_f1" in dev:
                            record.update(dev_relation_f1=dev["f1"], dev_entity_f1=dev["entity_f1"],
                                          dev_entity_threshold=dev["entity_threshold"])
                        record["precision"] = self.precision
                        if self.cfg.refit is not None:
                            record["dev_seen_in_training"] = True
                        # a refit keeps its last weights: dev is training data there, so cannot choose
                        if (last if self.cfg.refit is not None else f1 > best_f1):
                            best_f1, best_thr = f1, (thr if self.relation_heads_trained else model.config.threshold)
                            if self.relation_heads_trained:
                                # a stage that trains the span head alone keeps the relation
                                # threshold its relation model was selected with
                                model.config.threshold = thr
                            if "entity_threshold" in dev:
                                model.config.entity_threshold = dev["entity_threshold"]
                            model.save_pretrained(best_dir)
                            record["saved"] = True
                        history.append(record)
                        live.update(best_f1=best_f1, best_thr=best_thr)
                        logger.info("dev: %s", json.dumps(record))
                        (self.output_dir / "history.json").write_text(json.dumps(history, indent=1))
                        if self.on_eval:
                            self.on_eval(record)
                    running = []
                    if self.on_checkpoint:
                        self.on_checkpoint(self, record)
                    model.train()
                if last:
                    stop = True
                    break
        if self.rank == 0 and cfg.unseen_calibration_labels and (best_dir / "config.json").exists():
            with self.autocast():
                outcome = calibrate_saved_model(cfg, best_dir, self.main_dev_ids, device=self.device)
            self.unseen_calibration = outcome.to_dict()
            model.config.unseen_label_threshold = outcome.threshold
        return TrainingResult(best_dir, best_f1, best_thr, history)
