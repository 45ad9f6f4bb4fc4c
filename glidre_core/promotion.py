"""Gated promotion of a registered model version to an alias (e.g. ``champion``).

The gate compares *recorded* evaluations (version tags written at registration, see
:func:`glidre_core.registry.evaluation_tags`): the candidate must beat the current alias holder by
at least ``min_delta`` on the chosen metric, measured on the *same* evaluation data (same
documents fingerprint). Evaluations on different data are not comparable, so such a promotion is
refused even with ``force``; ``force`` (which needs a reason) only overrides the metric gate.
Every promotion records who, why and what as tags on the promoted version; ``dry_run`` decides
and explains without changing anything.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from glidre_core.registry import EVAL_TAG
from glidre_core.tracking import client

logger = logging.getLogger(__name__)

FINGERPRINT_TAG = f"{EVAL_TAG}data_fingerprint"
DATA_TAG = f"{EVAL_TAG}data"


class PromotionError(ValueError):
    """The request itself is invalid (unknown version, missing evaluation, force without reason)."""


@dataclass
class PromotionDecision:
    name: str
    alias: str
    metric: str
    candidate_version: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    delta: float | None
    min_delta: float
    candidate_data: str
    champion_data: str | None
    same_data: bool
    promote: bool  # the gate's verdict (with force applied)
    forced: bool
    dry_run: bool
    applied: bool  # the alias was actually moved
    explanation: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> str:
        """The comparison a person reads in the terminal."""
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        head = "DRY RUN: " if self.dry_run else ""
        verdict = ("would promote" if self.dry_run else "promoted") if self.promote else "refused"
        lines = [
            f"{head}{self.name}@{self.alias}: candidate v{self.candidate_version} vs "
            f"{'v' + self.champion_version if self.champion_version else 'no current holder'}",
            f"  {'':10s} {'candidate':>10s} {'champion':>10s}",
            f"  {self.metric:10s} {fmt(self.candidate_value):>10s} {fmt(self.champion_value):>10s}"
            f"   delta {fmt(self.delta)} (min {self.min_delta:.4f})",
            f"  eval data  candidate: {self.candidate_data}",
            f"             champion:  {self.champion_data or '-'}"
            f"   ({'same documents' if self.same_data else 'DIFFERENT documents'})",
            f"  decision: {verdict}{' (forced)' if self.forced else ''}: {self.explanation}",
        ]
        return "\n".join(lines)


def _recorded(tags: dict[str, str], metric: str, name: str, version: str) -> tuple[float, str, str]:
    key = f"{EVAL_TAG}{metric}"
    if key not in tags or FINGERPRINT_TAG not in tags:
        raise PromotionError(
            f"{name} version {version} has no recorded evaluation ({key!r} and {FINGERPRINT_TAG!r} tags); "
            "register it through training or record one with glidre_core.registry.record_evaluation"
        )
    try:
        value = float(tags[key])
    except ValueError:
        raise PromotionError(f"{name} version {version}: tag {key}={tags[key]!r} is not a number") from None
    return value, tags[FINGERPRINT_TAG], tags.get(DATA_TAG, "?")


def promote(
    name: str,
    version: str | int,
    *,
    alias: str = "champion",
    metric: str = "f1",
    min_delta: float = 0.0,
    force: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    actor: str | None = None,
    tracking_uri: str | None = None,
) -> PromotionDecision:
    """Move ``alias`` to ``version`` if its recorded ``metric`` beats the current holder's by at
    least ``min_delta`` on the same evaluation data (higher is better), or when forced with a
    reason. Returns the decision; raises :class:`PromotionError` for invalid requests."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    if force and not (reason and reason.strip()):
        raise PromotionError("--force needs a --reason (it is recorded on the promoted version)")
    c = client(tracking_uri)
    try:
        cand = c.get_model_version(name, version)
    except MlflowException as exc:
        raise PromotionError(f"{name} version {version} does not exist: {exc.message}") from None
    cand_value, cand_fp, cand_data = _recorded(cand.tags, metric, name, version)

    holder = None
    try:
        holder = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None  # nobody holds the alias yet

    champ_value = champ_fp = champ_data = None
    delta = None
    same = True
    if holder is not None:
        champ_value, champ_fp, champ_data = _recorded(holder.tags, metric, name, holder.version)
        same = champ_fp == cand_fp
        delta = cand_value - champ_value

    if holder is not None and str(holder.version) == version:
        ok, why = False, f"version {version} already holds @{alias}"
    elif holder is None:
        ok, why = True, f"no version holds @{alias} yet"
    elif not same:
        ok, why = False, (
            f"the candidate was evaluated on different documents ({cand_data}, fingerprint {cand_fp[:12]}) "
            f"than the champion v{holder.version} ({champ_data}, fingerprint {champ_fp[:12]}); "
            "their scores are not comparable. Evaluate both on the same data and record it "
            "(glidre_core.registry.record_evaluation) before promoting"
        )
    elif delta >= min_delta:
        ok, why = True, f"{metric} {cand_value:.4f} beats {champ_value:.4f} by {delta:+.4f} (>= {min_delta:.4f})"
    elif force:
        ok, why = True, f"forced: {reason} ({metric} delta {delta:+.4f} < {min_delta:.4f})"
    else:
        ok, why = False, f"{metric} {cand_value:.4f} vs {champ_value:.4f}: delta {delta:+.4f} is below min-delta {min_delta:.4f}"
    forced = bool(force and ok and holder is not None and same and delta is not None and delta < min_delta)

    who = actor or os.environ.get("GLIDRE_ACTOR") or _user()
    tags = {}
    if ok:
        prefix = f"promotion.{alias}."
        tags = {
            prefix + "by": who,
            prefix + "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            prefix + "why": reason if reason else why,
            prefix + "what": f"@{alias}: {('v' + str(holder.version)) if holder else 'none'} -> v{version}",
            prefix + "forced": str(forced).lower(),
            prefix + "comparison": json.dumps({
                "metric": metric, "candidate": cand_value, "champion": champ_value, "delta": delta,
                "min_delta": min_delta, "eval_data": cand_data, "eval_fingerprint": cand_fp,
            }),
        }
    decision = PromotionDecision(
        name=name, alias=alias, metric=metric, candidate_version=version, candidate_value=cand_value,
        champion_version=str(holder.version) if holder else None, champion_value=champ_value, delta=delta,
        min_delta=min_delta, candidate_data=cand_data, champion_data=champ_data, same_data=same,
        promote=ok, forced=forced, dry_run=dry_run, applied=False, explanation=why, tags=tags,
    )
    if ok and not dry_run:
        c.set_registered_model_alias(name, alias, version)
        for k, v in tags.items():
            c.set_model_version_tag(name, version, k, v)
        if holder is not None:
            c.set_model_version_tag(name, str(holder.version), f"promotion.{alias}.replaced_by", f"v{version} by {who}")
        decision.applied = True
        logger.info("promoted %s v%s to @%s (%s)", name, version, alias, why)
    return decision


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"
