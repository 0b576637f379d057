"""The stage graph: order, fingerprints, selection, and where each output lives.

Fingerprint = hash(stage name, its config section, upstream fingerprints, code version), so a
changed config or code reruns that stage and everything downstream, nothing upstream. Output
folder: ``<output_root>/<stage>/<fingerprint>/``; it counts as done only with ``_SUCCESS``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

from pydantic import BaseModel

from pipeline.config import PipelineConfig, stage_hash
from pipeline.stage import Stage
from pipeline.storage import Storage

SUCCESS = "_SUCCESS"
FAILED = "_FAILED"
MANIFEST = "manifest.json"


class DagError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    stage: Stage
    config: BaseModel
    fingerprint: str

    @property
    def name(self) -> str:
        return self.stage.name


class Dag:
    def __init__(self, stages: list[Stage], config: PipelineConfig):
        self.stages = {s.name: s for s in stages}
        if len(self.stages) != len(stages):
            raise DagError("two stages share a name")
        for s in stages:
            missing = [u for u in s.upstream if u not in self.stages]
            if missing:
                raise DagError(f"stage {s.name!r} depends on unknown stage(s) {missing}")
        try:
            self.order = list(TopologicalSorter({s.name: s.upstream for s in stages}).static_order())
        except CycleError as e:
            raise DagError(f"the stages form a cycle: {e.args[1]}") from None
        self.nodes: dict[str, Node] = {}
        for name in self.order:
            stage = self.stages[name]
            section = config[name]
            fp = _fingerprint(stage, section, [self.nodes[u].fingerprint for u in stage.upstream])
            self.nodes[name] = Node(stage, section, fp)

    def __iter__(self):
        return (self.nodes[n] for n in self.order)

    def __getitem__(self, name: str) -> Node:
        if name not in self.nodes:
            raise DagError(f"unknown stage {name!r}; stages: {', '.join(self.order)}")
        return self.nodes[name]

    def upstream(self, name: str) -> tuple[str, ...]:
        return self.stages[name].upstream

    def inputs(self, name: str, storage: Storage) -> dict[str, str]:
        """upstream stage -> fingerprint of the outputs handed to ``name``. A stage that does not
        read its upstream folders gets only those that exist."""
        stage = self.stages[name]
        return {u: self.nodes[u].fingerprint for u in stage.upstream
                if stage.reads_upstream or state(storage, self.nodes[u]) == "cached"}

    def descendants(self, name: str) -> set[str]:
        found: set[str] = set()
        frontier = [name]
        while frontier:
            cur = frontier.pop()
            for s in self.stages.values():
                if cur in s.upstream and s.name not in found:
                    found.add(s.name)
                    frontier.append(s.name)
        return found

    def ancestors(self, name: str) -> set[str]:
        found: set[str] = set()
        frontier = list(self.stages[name].upstream)
        while frontier:
            cur = frontier.pop()
            if cur not in found:
                found.add(cur)
                frontier.extend(self.stages[cur].upstream)
        return found


def _fingerprint(stage: Stage, section: BaseModel, upstream_fps: list[str]) -> str:
    payload = json.dumps({"stage": stage.name, "config": stage_hash(section), "upstream": upstream_fps,
                          "code": stage.code_version()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


# -- output locations and their states -----------------------------------------------------

def state(storage: Storage, node: Node) -> str:
    """cached | failed | incomplete | missing"""
    if storage.exists(node.name, node.fingerprint, SUCCESS):
        return "cached"
    if storage.exists(node.name, node.fingerprint, FAILED):
        return "failed"
    if storage.exists(node.name, node.fingerprint):
        return "incomplete"
    return "missing"


def manifest(storage: Storage, node: Node) -> dict:
    return storage.read_json(node.name, node.fingerprint, MANIFEST)
