"""Single-process training loop (it runs unchanged inside a Ray Train worker).

Why it is shaped this way, for two CPU cores:

* Frozen lower encoder layers are run **once** per document and their outputs cached
  (``cache_frozen_layers``); each step then runs only the trainable top layers and the heads.
* The label encoder is frozen by default, so each label string is encoded once for the whole run.
* bf16 autocast is optional (this CPU has bf16 units).

Model selection uses dev data only: every ``eval_every`` steps the dev set is scored, the decision
threshold is swept, and the best checkpoint is saved together with its threshold.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glidre_core.documents import Document
from glidre_core.evaluation import dev_sweep
from glidre_core.modeling import GLiDRE, PreparedDocument
from glidre_core.readers import read_documents, relation_labels
from glidre_core.training.config import TrainingConfig

logger = logging.getLogger(__name__)

EvalCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainingResult:
    best_dir: Path
    best_f1: float
    best_threshold: float
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def split_train_dev(cfg: TrainingConfig) -> tuple[list[Document], list[Document]]:
    """Train and dev documents. Without a dev file, the last ``dev_holdout`` docs of a seeded
    shuffle of the training file are held out."""
    train = read_documents(cfg.train.path, cfg.train.format, on_error="skip", limit=cfg.train.limit)
    if cfg.dev is not None:
        dev = read_documents(cfg.dev.path, cfg.dev.format, on_error="skip", limit=cfg.dev.limit)
        return train, dev
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    if cfg.dev_holdout >= len(train):
        raise ValueError(f"dev_holdout={cfg.dev_holdout} leaves no training documents ({len(train)} read)")
    dev_idx = set(order[-cfg.dev_holdout :])
    return [d for i, d in enumerate(train) if i not in dev_idx], [d for i, d in enumerate(train) if i in dev_idx]


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


class Trainer:
    """Owns model, data, optimizer and the loop. ``on_eval`` receives each dev record."""

    def __init__(self, cfg: TrainingConfig, on_eval: EvalCallback | None = None):
        self.cfg = cfg
        self.on_eval = on_eval
        self.output_dir = Path(cfg.output_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.train_docs, self.dev_docs = split_train_dev(cfg)
        if not self.train_docs:
            raise ValueError(f"no usable training documents in {cfg.train.path}")
        labels = relation_labels(self.train_docs + self.dev_docs)
        if not labels:
            raise ValueError("the training data has no relations")
        model_cfg = cfg.model.model_copy(update={"labels": labels})
        self.model = GLiDRE(model_cfg)
        self.labels = labels
        self.prepared: dict[str, PreparedDocument] = {}
        for d in self.train_docs + self.dev_docs:
            self.prepared[d.doc_id] = self.model.prepare(d)
        self.cache: dict[str, list[torch.Tensor]] | None = None
        if cfg.cache_frozen_layers and self.model.frozen_split > 0:
            self.cache = self._cache_lower()
        logger.info(
            "training on %d docs, dev %d docs, %d labels, frozen layers %d (cached: %s)",
            len(self.train_docs), len(self.dev_docs), len(labels), self.model.frozen_split, self.cache is not None,
        )

    @torch.no_grad()
    def _cache_lower(self) -> dict[str, list[torch.Tensor]]:
        start = time.perf_counter()
        self.model.eval()
        cache = {}
        for doc_id, p in self.prepared.items():
            cache[doc_id] = [s.clone() for s in self.model.encoder.lower(self.model.encoder.window_ids(p.tokens), self.model.frozen_split)]
        logger.info("cached frozen layers for %d docs in %.1fs", len(cache), time.perf_counter() - start)
        return cache

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [
            {"params": self.model.encoder_parameters(), "lr": self.cfg.lr_encoder},
            {"params": self.model.head_parameters(), "lr": self.cfg.lr_heads},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=self.cfg.weight_decay)

    def total_steps(self) -> int:
        per_epoch = math.ceil(len(self.train_docs) / (self.cfg.batch_size * self.cfg.grad_accum))
        total = per_epoch * self.cfg.epochs
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def evaluate_dev(self) -> tuple[float, float]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            sweep = dev_sweep(
                self.model, self.dev_docs, self.model.encode_labels(self.labels),
                cached_lower=self.cache, prepared=self.prepared, batch_size=self.cfg.batch_size,
            )
        return sweep.best_f1, sweep.best_threshold

    def train(self) -> TrainingResult:
        cfg, model = self.cfg, self.model
        self.output_dir.mkdir(parents=True, exist_ok=True)
        optimizer = self._optimizer()
        total = self.total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, int(cfg.warmup_ratio * total)))
        rng = random.Random(cfg.seed)
        history: list[dict[str, Any]] = []
        best_f1, best_thr = -1.0, model.config.threshold
        best_dir = self.output_dir / "best"
        step, micro, running, seen_docs = 0, 0, [], 0
        start = time.perf_counter()
        model.train()
        stop = False
        params = [p for p in model.parameters() if p.requires_grad]
        for epoch in range(cfg.epochs):
            order = [d.doc_id for d in self.train_docs]
            rng.shuffle(order)
            for b in range(0, len(order), cfg.batch_size):
                ids = order[b : b + cfg.batch_size]
                batch = [self.prepared[i] for i in ids]
                cache = [self.cache[i] for i in ids] if self.cache else None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    labels = model.encode_labels(self.labels)
                    loss = model.loss(batch, labels, cache) / cfg.grad_accum
                loss.backward()
                running.append(loss.item() * cfg.grad_accum)
                seen_docs += len(batch)
                micro += 1
                if micro % cfg.grad_accum:
                    continue
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed = time.perf_counter() - start
                if step % 20 == 0:
                    logger.info(
                        "epoch %d step %d/%d loss %.4f %.2f docs/s elapsed %.1f min",
                        epoch, step, total, sum(running[-20:]) / len(running[-20:]), seen_docs / elapsed, elapsed / 60,
                    )
                out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
                last = step >= total or out_of_time
                if step % cfg.eval_every == 0 or last:
                    f1, thr = self.evaluate_dev()
                    record = {
                        "step": step, "epoch": epoch, "minutes": elapsed / 60,
                        "train_loss": sum(running) / len(running), "dev_f1": f1, "dev_threshold": thr,
                        "lr_heads": scheduler.get_last_lr()[-1],
                    }
                    running = []
                    if f1 > best_f1:
                        best_f1, best_thr = f1, thr
                        model.config.threshold = thr
                        model.save_pretrained(best_dir)
                        record["saved"] = True
                    history.append(record)
                    logger.info("dev: %s", json.dumps(record))
                    (self.output_dir / "history.json").write_text(json.dumps(history, indent=1))
                    if self.on_eval:
                        self.on_eval(record)
                    model.train()
                if last:
                    stop = True
                    break
            if stop:
                break
        return TrainingResult(best_dir, best_f1, best_thr, history)
