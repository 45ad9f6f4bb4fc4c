"""Resource planning for the extraction job: fit the actor pool and the CPU tasks into the Ray
cluster the job runs on, or refuse in seconds with the numbers, instead of hanging.

Why this exists: Ray Data schedules the read, preprocess and write tasks and the model actors
from one pool of logical CPUs. An actor pool that reserves every CPU (two 1-CPU actors on a
2-CPU machine) leaves none for the read tasks, so no document ever reaches the actors and the
job waits forever without a word. The plan is made after Ray is up, from what Ray itself reports
(``ray.cluster_resources()`` and the per-node view, so cgroup limits and remote clusters are
covered alike), before any Ray Data work is submitted.

Rules (decisions, written down):

* Every CPU task of the pipeline (read, preprocess, write) asks for ``preprocess_num_cpus``.
  :data:`TASK_SLOTS` of them (one per stage) must be able to run next to the *minimum* actor
  pool, so the pipeline always makes progress.
* ``actors.num_cpus: null`` (the default) means 1 CPU per actor, which the job may shrink: when
  ``max_size`` actors at 1 CPU do not fit, each actor gets ``(cpus - task reserve) / max_size``
  logical CPUs (rounded down to 0.05), as long as that is at least :data:`MIN_ACTOR_CPUS`. The
  actors then still use one torch thread each (``torch_threads`` unchanged: Ray gives a
  fractional-CPU actor one thread).
* An explicit ``actors.num_cpus`` is never changed: if it does not fit, the job refuses.
* GPUs are never shrunk: ``min_size * actors.num_gpus`` GPUs must exist.
* One actor must fit on one node (CPUs and GPUs), checked against the largest node.
* ``ray.check_resources: false`` skips the plan (a cluster whose autoscaler adds nodes only once
  work is queued looks too small at start); the stall watchdog still catches a pipeline that
  never starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from glidre_core.extraction.config import ExtractConfig
from glidre_core.extraction.errors import ExtractionError

logger = logging.getLogger(__name__)

#: CPU tasks that must be able to run next to the minimum actor pool: read, preprocess, write.
TASK_SLOTS = 3
#: The smallest fractional CPU share the planner gives an actor before refusing.
MIN_ACTOR_CPUS = 0.1


class ResourceError(ExtractionError):
    """The cluster cannot run the requested actor pool and its CPU tasks."""


@dataclass(frozen=True)
class ClusterView:
    """What Ray reports: totals and the largest node (CPUs, GPUs)."""

    cpus: float
    gpus: float
    max_node_cpus: float
    max_node_gpus: float
    nodes: int = 1

    @classmethod
    def from_ray(cls) -> "ClusterView":
        import ray

        total = ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        return cls(
            cpus=float(total.get("CPU", 0.0)), gpus=float(total.get("GPU", 0.0)),
            max_node_cpus=max((float(r.get("CPU", 0.0)) for r in nodes), default=0.0),
            max_node_gpus=max((float(r.get("GPU", 0.0)) for r in nodes), default=0.0),
            nodes=len(nodes),
        )


@dataclass(frozen=True)
class ResourcePlan:
    """The CPUs each actor and each CPU task will ask Ray for."""

    actor_cpus: float
    task_cpus: float
    shrunk: bool  # actor CPUs were reduced from the default to fit

    def describe(self, cfg: ExtractConfig, view: ClusterView) -> str:
        a = cfg.actors
        return (f"{a.min_size}-{a.max_size} actors x {self.actor_cpus:g} CPU"
                f"{f' + {a.num_gpus:g} GPU' if a.num_gpus else ''}, CPU tasks {self.task_cpus:g} CPU each, "
                f"on {view.cpus:g} CPUs / {view.gpus:g} GPUs ({view.nodes} node{'s' if view.nodes != 1 else ''})")


def plan_resources(cfg: ExtractConfig, view: ClusterView) -> ResourcePlan:
    """Fit ``cfg``'s actor pool and CPU tasks into ``view``, or raise :class:`ResourceError`."""
    a = cfg.actors
    task = cfg.preprocess_num_cpus
    reserve = TASK_SLOTS * task
    explicit = a.num_cpus is not None
    flags = "--num-actors / actors.min_size, actors.num_cpus, preprocess_num_cpus or ray.num_cpus"
    if a.num_gpus > 0:
        need = a.min_size * a.num_gpus
        if need > view.gpus + 1e-9:
            raise ResourceError(
                f"the actor pool needs {a.min_size} x {a.num_gpus:g} = {need:g} GPUs but the cluster has "
                f"{view.gpus:g}; lower --num-actors or --num-gpus-per-actor (or add GPU nodes)")
        if a.num_gpus > view.max_node_gpus + 1e-9:
            raise ResourceError(f"one actor needs {a.num_gpus:g} GPUs but the largest node has "
                                f"{view.max_node_gpus:g}; lower --num-gpus-per-actor")
    actor_cpus = a.num_cpus if explicit else 1.0
    shrunk = False
    if a.max_size * actor_cpus + reserve > view.cpus + 1e-9 and not explicit:
        share = math.floor((view.cpus - reserve) / a.max_size * 20) / 20  # down to 0.05
        if share >= MIN_ACTOR_CPUS:
            actor_cpus, shrunk = min(share, 1.0), True
    need = a.min_size * actor_cpus + reserve
    if need > view.cpus + 1e-9:
        raise ResourceError(
            f"not enough CPUs: {a.min_size} actor(s) x {actor_cpus:g} CPU + {TASK_SLOTS} CPU tasks x {task:g} CPU "
            f"(read, preprocess, write) = {need:g} CPUs, but the cluster has {view.cpus:g}. The job would "
            f"hang: change {flags}")
    if actor_cpus > view.max_node_cpus + 1e-9:
        raise ResourceError(f"one actor asks for {actor_cpus:g} CPUs but the largest node has "
                            f"{view.max_node_cpus:g}; lower actors.num_cpus")
    if a.max_size * actor_cpus + reserve > view.cpus + 1e-9:
        logger.warning("only %d of actors.max_size=%d actors fit next to the CPU tasks (%g CPUs); the pool "
                       "will not grow past that", int((view.cpus - reserve) // actor_cpus), a.max_size, view.cpus)
    plan = ResourcePlan(actor_cpus=actor_cpus, task_cpus=task, shrunk=shrunk)
    if shrunk:
        logger.warning("resources: %d actors x 1 CPU + CPU tasks do not fit %g CPUs; each actor gets %g CPUs "
                       "instead (set actors.num_cpus to choose)", a.max_size, view.cpus, actor_cpus)
    logger.info("resources: %s", plan.describe(cfg, view))
    return plan


def unchecked_plan(cfg: ExtractConfig) -> ResourcePlan:
    """The plan when ``ray.check_resources`` is off: exactly what the config asks for."""
    return ResourcePlan(actor_cpus=cfg.actors.num_cpus or 1.0, task_cpus=cfg.preprocess_num_cpus, shrunk=False)


def resource_view_text() -> str:
    """Ray's resource view and its queued work, for a stall diagnosis (best effort)."""
    import ray

    lines = [f"cluster resources: {_fmt(ray.cluster_resources())}",
             f"available now:     {_fmt(ray.available_resources())}"]
    try:
        from ray.util.state import list_actors, list_tasks

        lines.append("tasks (operator, state): " + _by_state(list_tasks(limit=10_000, raise_on_missing_output=False),
                                                              "name"))
        lines.append("actors (class, state): " + _by_state(list_actors(limit=10_000, raise_on_missing_output=False),
                                                            "class_name"))
    except Exception as exc:  # noqa: BLE001 - the state API is a diagnosis aid only
        lines.append(f"(task/actor state unavailable: {type(exc).__name__}: {exc})")
    return "\n".join(lines)


def _by_state(items: Any, name: str) -> str:
    """``"<name> <state>=<count>, ..."`` over Ray state API records."""
    counts: dict[tuple[str, str], int] = {}
    for item in items:
        key = (getattr(item, name, "?") or "?", str(getattr(item, "state", "?")))
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {s}={c}" for (n, s), c in sorted(counts.items())) or "none"


def _fmt(resources: dict[str, Any]) -> str:
    keep = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory", "object_store_memory")}
    return ", ".join(f"{k}={v / 2**30:.1f}GiB" if "memory" in k else f"{k}={v:g}" for k, v in sorted(keep.items()))
