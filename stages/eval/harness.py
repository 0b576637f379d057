"""Public benchmarks through lm-evaluation-harness (``lm-eval``).

    tasks = prepare(cfg.harness)                 # index and load each task once, before any model
    tasks.available, tasks.skipped               # skipped: {task: reason} (dataset not loadable, unknown)
    metrics, details = evaluate(tasks, cfg.harness, model=loaded, seed=0)

Each task is loaded on its own, so one task whose dataset cannot be fetched (no network, not in
the local cache) is reported as skipped with the reason and the others still run; skipped tasks
have no metrics, so a gate rule on them fails as "not measured", never passes. Each task is also
evaluated on its own, so a backend that cannot serve one request type (an endpoint without
logprobs given a multiple-choice task) skips that task with the error as its reason.

Metric names: ``lm_eval/<task>/<metric>`` (``<metric>_<filter>`` for filters other than "none").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from stages.eval.config import HarnessSuite

log = logging.getLogger(__name__)


@dataclass
class HarnessTasks:
    manager: object                     # lm_eval.tasks.TaskManager
    available: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    offline: bool = False


def hub_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Load datasets from the local cache only. ``datasets`` and ``huggingface_hub`` read their offline
    switches at import, so the module constants are flipped too (and restored)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_offline(cfg: HarnessSuite) -> bool:
    return cfg.offline == "on" or (cfg.offline == "auto" and not hub_reachable())


def _reason(e: BaseException) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text[:300]


def _load_failure(e: BaseException, offline: bool) -> str:
    if isinstance(e, KeyError) and "not a registered task" in str(e):
        return "unknown task: " + _reason(e)
    if offline:
        return "dataset not loadable offline (no network, not in the local cache): " + _reason(e)
    return "dataset not loadable: " + _reason(e)


def prepare(cfg: HarnessSuite, echo: Callable[[str], None] = print) -> HarnessTasks:
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    offline = _is_offline(cfg)
    manager = TaskManager(include_path=cfg.include_path, include_defaults=cfg.include_defaults, verbosity="ERROR")
    tasks = HarnessTasks(manager, offline=offline)
    with hub_offline(offline):
        for name in cfg.tasks:
            try:
                manager.load([name])
            except Exception as e:  # noqa: BLE001 - any loading failure is this task's skip reason
                tasks.skipped[name] = _load_failure(e, offline)
                continue
            tasks.available.append(name)
    echo(f"lm-eval: {len(tasks.available)} task(s) ready, {len(tasks.skipped)} skipped"
         f"{' (offline)' if offline else ''} in {time.perf_counter() - t0:.0f}s"
         + "".join(f"\n  skipped {k}: {v}" for k, v in tasks.skipped.items()))
    return tasks


def build_lm(cfg: HarnessSuite, model, model_dir, seed: int):
    """The lm-eval ``LM`` for the configured backend."""
    if cfg.backend == "whale":
        from stages.eval.whale_lm import WhaleLM

        return WhaleLM(model, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed)
    from lm_eval.api.registry import get_model

    if cfg.backend == "hf":
        args = {"pretrained": str(model_dir), "dtype": "float32", "device": "cpu", **cfg.model_args}
    else:
        args = {"base_url": cfg.base_url, "model": "whale", "tokenizer": str(model_dir),
                "tokenizer_backend": "huggingface", "tokenized_requests": False, "max_retries": 1,
                **cfg.model_args}
    try:
        cls = get_model(cfg.backend)
    except ImportError as e:
        raise RuntimeError(f"lm-eval's {cfg.backend!r} backend cannot be imported ({e}); "
                           f"{'pip install accelerate, or ' if cfg.backend == 'hf' else ''}use backend: whale") from e
    return cls.create_from_arg_obj(args, {"batch_size": cfg.batch_size})


def evaluate(tasks: HarnessTasks, cfg: HarnessSuite, *, model=None, model_dir=None, seed: int = 0,
             echo: Callable[[str], None] = print) -> tuple[dict[str, float], dict]:
    from lm_eval import simple_evaluate

    metrics: dict[str, float] = {}
    skipped = dict(tasks.skipped)
    lm = build_lm(cfg, model, model_dir, seed) if tasks.available else None
    with hub_offline(tasks.offline):
        for name in tasks.available:
            t0 = time.perf_counter()
            try:
                res = simple_evaluate(model=lm, tasks=[name], task_manager=tasks.manager, limit=cfg.limit,
                                      num_fewshot=cfg.num_fewshot, log_samples=False, bootstrap_iters=0,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, verbosity="ERROR")
            except Exception as e:  # noqa: BLE001 - one task failing must not hide the others
                skipped[name] = "evaluation failed: " + _reason(e)
                echo(f"lm-eval: {name} failed: {skipped[name]}")
                continue
            found = flatten_results(res["results"])
            if not found:
                skipped[name] = "lm-eval returned no numeric metric"
            metrics.update(found)
            mine = {k.split("/", 2)[-1]: v for k, v in found.items() if k.startswith(f"lm_eval/{name}/")}
            echo(f"lm-eval: {name} in {time.perf_counter() - t0:.0f}s: "
                 + ", ".join(f"{k} {v:.4g}" for k, v in mine.items()))
    metrics["lm_eval/tasks_run"] = len(tasks.available) - sum(1 for t in tasks.available if t in skipped)
    metrics["lm_eval/tasks_skipped"] = len(skipped)
    return metrics, {"skipped": skipped, "backend": cfg.backend, "offline": tasks.offline}


_NOT_METRICS = {"alias", "sample_len", "sample_count"}
# MLflow metric names allow alphanumerics, _ - . space : and /
_INVALID_NAME_CHARS = re.compile(r"[^\w\-. :/]")


def flatten_results(results: dict) -> dict[str, float]:
    """{"task": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}} -> {"lm_eval/task/acc": 0.5}."""
    out = {}
    for task, values in results.items():
        for key, v in values.items():
            metric, _, filt = key.partition(",")
            if ("_stderr" in metric or metric in _NOT_METRICS or isinstance(v, bool)
                    or not isinstance(v, (int, float))):
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            out[_INVALID_NAME_CHARS.sub("_", f"lm_eval/{task}/{name}")] = float(v)
    return out
