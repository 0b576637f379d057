"""Teacher from a local checkpoint (ours, or a Hugging Face DeepSeek-V3 folder) via ``model.engine``.

The prompt is rendered with the tokenizer's chat template and the generation prompt
(``<｜Assistant｜>``); the model writes ``<think>...</think>`` and the answer itself.
The n samples of a prompt are n engine requests decoded together, each with its own seed (so they
differ); ids past the tokenizer's vocabulary are never sampled. Generation is serialised with a lock:
one model, CPU- or GPU-bound, shared by the pipeline's threads. Heavy imports (torch, model,
tokenizer) happen when the teacher is built.
"""

from __future__ import annotations

import threading
from pathlib import Path

from stages.common.problems import Problem, stable_hash
from stages.distill.teachers.base import Completion, Teacher, TeacherError, TeacherUnavailable, split_think
from stages.distill.teachers.config import LocalTeacherConfig


class LocalTeacher(Teacher):
    name = "local"

    def __init__(self, cfg: LocalTeacherConfig):
        self.cfg = cfg
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise TeacherUnavailable(f"teacher.path {cfg.path!r} has no config.json (not a model checkpoint)")
        try:
            from model import DeepSeekV3
            from tokenizer import Tokenizer
        except ImportError as e:
            raise TeacherUnavailable(f"the local teacher needs the model and tokenizer libraries: {e}") from e
        self.tokenizer = Tokenizer.load(cfg.tokenizer_path or cfg.path)
        self.model = DeepSeekV3.from_pretrained(path, device=cfg.device).eval()
        if self.model.config.vocab_size < self.tokenizer.vocab_size:
            raise TeacherUnavailable(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                                     f"{self.model.config.vocab_size}: they do not belong together")
        self._lock = threading.Lock()

    def describe(self):
        return {"name": self.name, "path": self.cfg.path, "max_new_tokens": self.cfg.max_new_tokens}

    def complete(self, problem: Problem, n: int, *, seed: int = 0) -> list[Completion]:
        messages = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else [])
        messages.append({"role": "user", "content": problem.prompt})
        prompt = self.tokenizer.encode_chat(messages, add_generation_prompt=True).ids
        from model.engine import Engine, EngineConfig, GenerationParams

        params = [GenerationParams(max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                   top_p=self.cfg.top_p, seed=int(stable_hash([seed, problem.id, i], 8), 16))
                  for i in range(n)]
        try:
            with self._lock:
                length = min(len(prompt) + self.cfg.max_new_tokens, self.model.config.max_position_embeddings)
                engine = Engine(self.model, EngineConfig(num_slots=min(n, self.cfg.batch_size), max_seq_len=length,
                                                         max_num_batched_tokens=max(256, 4 * n), use_mtp=False),
                                eos_token_ids=[self.tokenizer.eos_id], vocab_size=self.tokenizer.vocab_size)
                gens = engine.generate([prompt] * n, params)
        except (RuntimeError, ValueError) as e:  # e.g. prompt longer than the model's context
            raise TeacherError(f"local generation failed: {e}") from e
        out = []
        for g in gens:
            ids = list(g.token_ids)
            if g.finish_reason == "stop" and ids and ids[-1] == g.stop_token_id:
                ids = ids[:-1]
            reasoning, answer, blocks = split_think(self.tokenizer.decode(ids))
            out.append(Completion(reasoning, answer, blocks, g.finish_reason, {}))
        return out
