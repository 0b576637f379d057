"""Verifiers: is a model's final answer to a Problem correct?

    verdict = verify(problem, "...so the sum is \\boxed{5758}.")
    verdict.correct, verdict.reason            # True, "correct"

- math (arithmetic, linear, dataset math): the answer is taken from the last ``\\boxed{}``
  (else an "answer: ..." line) and compared exactly as a rational number when both sides
  parse as one, else symbolically in a worker process that is killed at a deadline: our sympy AST
  walk, then math-verify (Hugging Face's checker) for what the walk cannot settle. The caller uses no
  signal.alarm (main-thread only), so this works in threads and Ray workers; no sympy
  ``parse_expr``/``eval`` on model output: our own AST walk builds the expression.
- gym (reasoning-gym problems): the dataset's own ``score_answer`` on the extracted answer.
- countdown: the expression is parsed with ``ast`` and only integer literals, + - * / and
  parentheses are accepted; evaluated with exact fractions; each given number used at most once.
- code: the candidate and the problem's tests run in stages.common.sandbox.

Verdict reasons: correct | wrong | no_answer | invalid | timeout | error.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from stages.common.sandbox import SandboxLimits, run_python

__all__ = ["Verdict", "verify", "extract_boxed", "extract_answer", "extract_code", "math_equal",
           "check_countdown", "check_code", "parse_number", "SympyJudge", "CODE_LIMITS"]

REASONS = ("correct", "wrong", "no_answer", "invalid", "timeout", "error")
MAX_ANSWER_CHARS = 300  # longer "answers" are not answers; also bounds parsing work
CODE_LIMITS = SandboxLimits(wall_s=10.0, cpu_s=5.0, memory_mb=1024)


@dataclass
class Verdict:
    correct: bool
    reason: str                 # one of REASONS
    extracted: str | None = None
    detail: str = ""
    sandbox: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "reason": self.reason, "extracted": self.extracted,
                "detail": self.detail}


# ----------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]?\s*(.+)$", re.IGNORECASE)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    matches = list(_BOX.finditer(text))
    for m in reversed(matches):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[m.end(): i - 1].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer: the last \\boxed{}, else the last "answer: ..." / "the answer is ..." line."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    for line in reversed(text.strip().splitlines()):
        m = _ANSWER_LINE.search(line.strip())
        if m:
            return m.group(1).strip().rstrip(".").strip("$ ").strip() or None
    return None


def extract_code(text: str) -> str | None:
    """The last fenced code block (```python, ```py or bare ```), or None."""
    blocks = _CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else None


# ----------------------------------------------------------------------------------------
# math
# ----------------------------------------------------------------------------------------

_LATEX_NOISE = re.compile(r"\\(?:left|right|!|,|;|:|displaystyle)|\$")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_answer(s: str) -> str:
    s = _TEXT.sub(r"\1", s)
    s = _LATEX_NOISE.sub("", s).strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def parse_number(s: str) -> Fraction | None:
    """Exact value of an integer, decimal, a/b or \\frac{a}{b} (optionally signed), else None."""
    s = normalize_answer(s).replace(" ", "")
    m = re.fullmatch(r"([+-]?)\\frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        return (-1 if m.group(1) == "-" else 1) * num / den
    if "/" in s:
        num, _, den = s.partition("/")
        if _NUMBER.fullmatch(num) and _NUMBER.fullmatch(den) and Fraction(den) != 0:
            return Fraction(num) / Fraction(den)
        return None
    if _NUMBER.fullmatch(s):
        return Fraction(s)
    return None


def math_equal(pred: str, gold: str, timeout_s: float = 5.0) -> Verdict:
    """Exact rational comparison when possible, else sympy (in a killable worker process)."""
    if len(pred) > MAX_ANSWER_CHARS:
        return Verdict(False, "invalid", pred[:80], f"answer longer than {MAX_ANSWER_CHARS} chars")
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return Verdict(p == g, "correct" if p == g else "wrong", pred)
    if normalize_answer(pred).replace(" ", "") == normalize_answer(gold).replace(" ", ""):
        return Verdict(True, "correct", pred)
    return default_judge().equal(pred, gold, timeout_s)


# -- the sympy side: runs only inside the worker process ---------------------------------

def latex_to_python(s: str) -> str:
    """A small LaTeX-to-Python rewrite for answers: \\frac, \\sqrt, \\cdot, ^, braces."""
    s = normalize_answer(s)
    s = re.sub(r"\\(?:cdot|times)", "*", s).replace("\\div", "/").replace("\\pi", " pi ")
    for _ in range(10):  # innermost first, so nested \frac{\frac{..}{..}}{..} works
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        new = re.sub(r"\\sqrt\[([^\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", new)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == s:
            break
        s = new
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    s = re.sub(r"(\d)\s*([a-zA-Z(])", r"\1*\2", s)       # 2x, 2(x+1), 2sqrt(3)
    s = re.sub(r"\)\s*([\w(])", r")*\1", s)               # (a)(b), (a)x
    return s.strip()


_FUNCS = ("sqrt", "log", "ln", "exp", "sin", "cos", "tan", "Abs", "abs")


def to_sympy(s: str):
    """Build a sympy expression from a restricted AST: numbers, names, + - * / **, a few functions."""
    import sympy

    tree = ast.parse(latex_to_python(s), mode="eval")

    def conv(node):
        if isinstance(node, ast.Expression):
            return conv(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return sympy.Rational(str(node.value)) if isinstance(node.value, float) else sympy.Integer(node.value)
        if isinstance(node, ast.Name):
            if node.id == "pi":
                return sympy.pi
            if node.id in ("e", "E"):
                return sympy.E
            if re.fullmatch(r"[a-zA-Z]", node.id):
                return sympy.Symbol(node.id)
            raise ValueError(f"name {node.id!r} not allowed")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = conv(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = conv(node.left), conv(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
            if isinstance(node.op, ast.Pow):
                if b.is_number and abs(b) > 10_000:
                    raise ValueError("exponent too large")
                return a**b
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 1 and not node.keywords):
            f = {"ln": sympy.log, "abs": sympy.Abs}.get(node.func.id) or getattr(sympy, node.func.id)
            return f(conv(node.args[0]))
        raise ValueError(f"{type(node).__name__} not allowed in an answer")

    return conv(tree)


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def sympy_equal(pred: str, gold: str) -> bool:
    """Worker-side: symbolic equality; comma-separated answers compare as unordered lists."""
    import sympy

    ps, gs = _split_top_level(normalize_answer(pred)), _split_top_level(normalize_answer(gold))
    if len(ps) != len(gs):
        return False
    if len(ps) > 1:
        remaining = list(gs)
        for p in ps:
            hit = next((g for g in remaining if sympy_equal(p, g)), None)
            if hit is None:
                return False
            remaining.remove(hit)
        return True
    a, b = to_sympy(ps[0]), to_sympy(gs[0])
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if diff.is_number:
        return bool(abs(sympy.N(diff, 30)) < sympy.Float("1e-12"))
    return False


def answers_equal(pred: str, gold: str) -> bool:
    """Worker-side: our sympy AST walk first; what it cannot read (LaTeX it does not know, sets,
    intervals, units) goes to math-verify (Hugging Face's answer checker, what open-r1 uses). What
    our walk refuses as dangerous (huge powers, dunders) is never handed on. Both run in this
    killable process: a runaway is killed at the deadline."""
    try:
        return sympy_equal(pred, gold)   # read both sides: its verdict stands (and stays fast)
    except Exception as e:  # noqa: BLE001 - could not read it, or refused it
        if "too large" in str(e) or "__" in pred + gold:
            raise
        if _math_verify_equal(pred, gold):
            return True
        raise


def _math_verify_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import LatexExtractionConfig, parse, verify

        # LaTeX only: its grammar parser never evaluates text (math-verify's plain-expression path
        # goes through sympy's parse_expr, which eval()s; plain expressions stay with our AST walk)
        latex = [LatexExtractionConfig()]
        g, p = parse(f"${gold}$", latex), parse(f"${pred}$", latex)
        return bool(g and p and verify(g, p))
    except Exception:  # noqa: BLE001 - an unreadable answer is not equal
        return False


def _worker_main():
    """Line protocol on stdin/stdout: {"pred", "gold"} -> {"equal": bool} | {"error": str}."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # blow-ups become MemoryError
    import sympy  # noqa: F401 - import once, before the first request

    # math-verify loads lazily, on the first answer our walk cannot settle: workers start fast

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but protocol lines on the real stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            resp = {"equal": answers_equal(req["pred"], req["gold"])}
        except Exception as e:  # noqa: BLE001 - a bad answer is an answer, not a crash
            resp = {"error": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(resp) + "\n")
        out.flush()


class SympyJudge:
    """A small pool of sympy worker processes; a call that passes its deadline kills its worker.

    Thread-safe. Workers are plain subprocesses (no multiprocessing, no signals), so this
    works from any thread of any process, Ray workers included.
    """

    def __init__(self, max_idle: int = 2, startup_timeout_s: float = 60.0):
        self.max_idle = max_idle
        self.startup_timeout_s = startup_timeout_s
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.timeouts = 0

    def _spawn(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])  # the directory that holds `stages`
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-c", "from stages.common.verify import _worker_main; _worker_main()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, text=True, bufsize=1)
        if self._readline(proc, self.startup_timeout_s) != "ready":
            self._kill(proc)
            raise RuntimeError("the sympy worker did not start")
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen, timeout_s: float) -> str | None:
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line.strip() if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen):
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def equal(self, pred: str, gold: str, timeout_s: float = 5.0) -> Verdict:
        with self._lock:
            proc = self._idle.pop() if self._idle else None
        try:
            proc = proc if proc is not None and proc.poll() is None else self._spawn()
        except (OSError, RuntimeError) as e:
            return Verdict(False, "error", pred, f"sympy worker: {e}")
        try:
            proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")
            proc.stdin.flush()
            line = self._readline(proc, timeout_s)
        except (OSError, ValueError):
            line = None
        if line is None:
            self._kill(proc)
            self.timeouts += 1
            return Verdict(False, "timeout", pred, f"symbolic comparison exceeded {timeout_s}s")
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(proc)
                proc = None
        if proc is not None:
            self._kill(proc)
        resp = json.loads(line)
        if "error" in resp:
            return Verdict(False, "invalid", pred, resp["error"])
        return Verdict(resp["equal"], "correct" if resp["equal"] else "wrong", pred)

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            self._kill(proc)


_JUDGE: SympyJudge | None = None
_JUDGE_LOCK = threading.Lock()


def default_judge() -> SympyJudge:
    global _JUDGE
    with _JUDGE_LOCK:
        if _JUDGE is None:
            _JUDGE = SympyJudge()
        return _JUDGE


# ----------------------------------------------------------------------------------------
# countdown
# ----------------------------------------------------------------------------------------

_CD_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def check_countdown(expr: str | None, numbers: Sequence[int], target: int) -> Verdict:
    """Valid iff only integer literals, + - * / and parentheses; each given number used at most once."""
    if expr is None or not expr.strip():
        return Verdict(False, "no_answer", expr)
    if len(expr) > MAX_ANSWER_CHARS:
        return Verdict(False, "invalid", expr[:80], "expression too long")
    s = normalize_answer(expr)
    s = re.sub(r"\\(?:times|cdot)|×|·", "*", s).replace("\\div", "/").replace("÷", "/")
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"=\s*[+-]?\d+\s*$", "", s).strip()  # "50*7+25 = 375"
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        return Verdict(False, "invalid", expr, "not an arithmetic expression")
    used: list[int] = []

    def ev(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _CD_OPS:
            return _CD_OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"{type(node).__name__} is not allowed (only numbers, + - * / and parentheses)")

    try:
        value = ev(tree.body)
    except ZeroDivisionError:
        return Verdict(False, "invalid", expr, "division by zero")
    except ValueError as e:
        return Verdict(False, "invalid", expr, str(e))
    extra = Counter(used) - Counter(numbers)
    if extra:
        return Verdict(False, "invalid", expr, f"uses numbers not given (or too often): {sorted(extra.elements())}")
    if value != target:
        return Verdict(False, "wrong", expr, f"evaluates to {value}, not {target}")
    return Verdict(True, "correct", expr)


# ----------------------------------------------------------------------------------------
# code
# ----------------------------------------------------------------------------------------

def build_test_source(tests: str | Sequence[str], entry_point: str | None = None, call_check: bool = False) -> str:
    """The tests as one source, run by the sandbox after the candidate (``run_python(tests=...)``).

    ``call_check``: HumanEval style, the tests define ``check(candidate)``; call it on entry_point.
    The sandbox, not a printed nonce, says whether they ran to their end: the tests are never
    written where the candidate could read them, and the completion token is held by the harness.
    """
    test_src = tests if isinstance(tests, str) else "\n".join(tests)
    if call_check:
        if not entry_point:
            raise ValueError("call_check needs an entry_point")
        test_src += f"\ncheck({entry_point})\n"
    return test_src


def check_code(code: str | None, tests: str | Sequence[str], *, entry_point: str | None = None,
               call_check: bool = False, limits: SandboxLimits = CODE_LIMITS) -> Verdict:
    """Run the candidate against its tests in the sandbox; correct iff every test ran and passed."""
    if code is None or not code.strip():
        return Verdict(False, "no_answer", code)
    if entry_point and not re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code) and not call_check:
        return Verdict(False, "wrong", code, f"no function named {entry_point}")
    res = run_python(code, tests=build_test_source(tests, entry_point, call_check), limits=limits)
    info = res.to_dict()
    if res.reason == "ok" and res.tests_completed:
        return Verdict(True, "correct", code, sandbox=info)
    if res.reason == "ok":
        return Verdict(False, "wrong", code, "exited before the tests finished", sandbox=info)
    if res.reason == "timeout":
        return Verdict(False, "timeout", code, f"sandbox {res.detail} timeout", sandbox=info)
    if res.reason == "error":
        return Verdict(False, "error", code, f"sandbox error: {res.detail}", sandbox=info)
    last = res.stderr.strip().splitlines()[-1:] or [""]
    return Verdict(False, "wrong", code, f"sandbox {res.reason}: {last[0][:200]}", sandbox=info)


# ----------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------

def verify(problem: Any, response: str, *, code_limits: SandboxLimits = CODE_LIMITS,
           math_timeout_s: float = 5.0) -> Verdict:
    """Check the final-answer part of a response (not the reasoning) against a Problem.

    ``problem``: a stages.common.problems.Problem or its dict form.
    """
    p = problem.to_dict() if hasattr(problem, "to_dict") else dict(problem)
    kind, data = p["kind"], p.get("data") or {}
    if kind in ("arithmetic", "linear", "math"):
        ans = extract_answer(response)
        if ans is None:
            return Verdict(False, "no_answer")
        return math_equal(ans, str(p["answer"]), timeout_s=math_timeout_s)
    if kind == "countdown":
        return check_countdown(extract_answer(response), data["numbers"], data["target"])
    if kind == "gym":   # reasoning-gym: the dataset's own scorer
        from stages.common.problems.gym import score

        ans = extract_answer(response)
        if ans is None:
            return Verdict(False, "no_answer")
        ok = score(data, ans) >= 1.0
        return Verdict(ok, "correct" if ok else "wrong", ans)
    if kind == "code":
        return check_code(extract_code(response), data["tests"], entry_point=data.get("entry_point"),
                          call_check=bool(data.get("call_check")), limits=code_limits)
    raise ValueError(f"no verifier for problem kind {kind!r}")


def verify_many(items: Sequence[tuple[Mapping | Any, str]], *, workers: int = 4, **kw) -> list[Verdict]:
    """verify() over (problem, response) pairs with a thread pool (sandbox and sympy run in
    their own processes, so threads give real parallelism here)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda it: verify(it[0], it[1], **kw), items))


def verify_distinct(answers: Mapping[tuple[str, str], Any], *, code_limits: SandboxLimits,
                    math_timeout_s: float, workers: int) -> dict[tuple[str, str], Verdict]:
    """Verify each distinct ``(problem id, answer) -> problem`` once, ``workers`` at a time: many
    samples repeat an answer, and sandboxed code runs are the slow part. An empty answer is
    ``no_answer``; problem data the verifier cannot use is an ``error`` verdict, not an exception."""
    from concurrent.futures import ThreadPoolExecutor

    def check(item) -> tuple[tuple[str, str], Verdict]:
        key, problem = item
        if not key[1].strip():
            return key, Verdict(False, "no_answer")
        try:
            return key, verify(problem, key[1], code_limits=code_limits, math_timeout_s=math_timeout_s)
        except (KeyError, ValueError, TypeError) as e:
            return key, Verdict(False, "error", detail=str(e))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(check, answers.items()))
