"""Small Python function tasks with unit tests, from a bank of templated families.

Each family is a task with a parameter grid ("sum of the numbers divisible by {k}"); one
problem per parameter setting. For each problem we keep the reference solution (the
canonical answer), a plausible buggy solution (what the procedural teacher emits when it
is told to be wrong), a short plan (its reasoning) and assert-style tests whose expected
values come from running the reference solution on inputs drawn from a seeded stream.

Train and held-out code problems come from disjoint *families*: two parameter settings of
one family differ in a word or two, which an n-gram overlap check rightly calls a leak.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from stages.common.problems.base import CODE_INSTRUCTION, Problem, make_problem, rng_for


class CodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.1, ge=0)  # the bank is finite (~200 problems)
    families: list[str] | None = None      # None: the whole bank
    n_tests: int = Field(6, ge=1, le=50)   # asserts per problem


@dataclass(frozen=True)
class Family:
    name: str
    grid: list[dict[str, Any]]                     # one problem per entry
    signature: str                                 # "sum_multiples(nums)"
    describe: Callable[[dict], str]                # -> the question
    solution: Callable[[dict], str]                # -> reference source
    buggy: Callable[[dict], str]                   # -> plausible wrong source
    plan: Callable[[dict], str]                    # -> one or two sentences of reasoning
    inputs: Callable[[random.Random], tuple]       # -> one argument tuple

    @property
    def entry_point(self) -> str:
        return self.signature.split("(")[0]


def _ints(rng: random.Random, lo=-20, hi=30, n=(0, 8)) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _words(rng: random.Random, n=(0, 6)) -> str:
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 7)))
                    for _ in range(rng.randint(*n)))


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + "  ,.!") for _ in range(rng.randint(0, 20)))


class _Mode(NamedTuple):
    """One variant of a family with modes: what it asks, the reference body, a buggy body, the plan."""
    ask: str
    body: str
    buggy: str
    plan: str


_WORD_MODES = {
    "reverse_order": _Mode("returns the words of s in reverse order, joined by single spaces",
                           "return ' '.join(reversed(s.split()))",
                           "return ' '.join(s.split())",
                           "Split on whitespace, reverse the list of words, join with spaces."),
    "reverse_each": _Mode("returns s with every word reversed, in the original order, joined by single spaces",
                          "return ' '.join(w[::-1] for w in s.split())",
                          "return ' '.join(s.split()[::-1])",
                          "Split on whitespace, reverse each word, join with spaces."),
    "capitalize": _Mode("returns s with the first letter of every word upper-cased and the rest lower-cased, "
                        "joined by single spaces",
                        "return ' '.join(w.capitalize() for w in s.split())",
                        "return ' '.join(w.upper() for w in s.split())",
                        "Split on whitespace, capitalize each word, join with spaces."),
    "sort_words": _Mode("returns the words of s sorted alphabetically, joined by single spaces",
                        "return ' '.join(sorted(s.split()))",
                        "return ' '.join(sorted(s.split(), reverse=True))",
                        "Split on whitespace, sort the words, join with spaces."),
    "longest": _Mode("returns the longest word of s (the first one on ties), or '' if s has no words",
                     "return max(s.split(), key=len, default='')",
                     "return min(s.split(), key=len, default='')",
                     "Split on whitespace and take max by length; max keeps the first of equal keys."),
}

_DIGIT_MODES = {
    "digit_sum": _Mode("the sum of the decimal digits of abs(n)",
                       "return sum(int(d) for d in str(abs(n)))",
                       "return sum(int(d) for d in str(n) if d.isdigit()) + 1",
                       "Sum the digits of str(abs(n))."),
    "digital_root": _Mode("the digital root of abs(n): repeatedly sum the decimal digits until one digit remains",
                          "n = abs(n)\n    while n >= 10:\n        n = sum(int(d) for d in str(n))\n    return n",
                          "return sum(int(d) for d in str(abs(n)))",
                          "Keep replacing n by its digit sum while n has two or more digits."),
    "digit_product": _Mode("the product of the decimal digits of abs(n)",
                           "p = 1\n    for d in str(abs(n)):\n        p *= int(d)\n    return p",
                           "p = 0\n    for d in str(abs(n)):\n        p *= int(d)\n    return p",
                           "Multiply the digits of str(abs(n)), starting from 1."),
    "count_digits": _Mode("the number of decimal digits of abs(n)",
                          "return len(str(abs(n)))",
                          "return len(str(n))",
                          "Count the characters of str(abs(n))."),
}

# running scans: (what, update, buggy update); the accumulator starts at nums[0]
_SCAN_MODES = {
    "sum": ("running sums", "acc += x", "acc = x"),
    "max": ("running maxima", "acc = max(acc, x)", "acc = x"),
    "min": ("running minima", "acc = min(acc, x)", "acc = max(acc, x)"),
    "product": ("running products", "acc *= x", "acc += x"),
}


def _fn(sig: str, body: str) -> str:
    return f"def {sig}:\n    {body}\n"


def _fizzbuzz(p: dict, stop: str) -> str:
    return (f"def fizzbuzz(n):\n    out = []\n    for i in range(1, {stop}):\n"
            f"        s = ({p['wa']!r} if i % {p['a']} == 0 else '') + ({p['wb']!r} if i % {p['b']} == 0 else '')\n"
            f"        out.append(s or str(i))\n    return out\n")


def _running(update: str) -> str:
    return ("def running(nums):\n    out = []\n    for i, x in enumerate(nums):\n        if i == 0:\n"
            f"            acc = x\n        else:\n            {update}\n        out.append(acc)\n    return out\n")


_RUN_LENGTH = ("def run_length(s):\n    runs = []\n    for c in s:\n        if runs and runs[-1][0] == c:\n"
               "            runs[-1][1] += 1\n        else:\n            runs.append([c, 1])\n"
               "    return {sep!r}.join(c + str(n) for c, n in runs)\n")
_DEDUPE_FIRST = ("seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n"
                 "            out.append(x)\n    return out")
_DEDUPE_LAST = ("out = []\n    for i, x in enumerate(items):\n        if x not in items[i + 1:]:\n"
                "            out.append(x)\n    return out")
_PALINDROME_CASES = ["", "Aba", "abA", "No lemon, no melon", "ab", "a", "Taco cat!", "abcba", "xY yx"]
_ORDINAL = {2: "second", 3: "third", 4: "fourth"}
_WORD_PAIRS = [("Fizz", "Buzz"), ("Foo", "Bar"), ("Ping", "Pong")]


def _rotate(k: int, result: str) -> str:
    return f"if not items:\n        return []\n    k = {k} % len(items)\n    return {result}"


def _kth(k: int) -> str:
    return f"    return vals[{k - 1}] if len(vals) >= {k} else None"


def _ask(signature: str, what: str) -> str:
    return f"Write a Python function `{signature}` that {what}"


FAMILIES: list[Family] = [
    Family(
        "sum_multiples", [{"k": k} for k in range(2, 10)], "sum_multiples(nums)",
        describe=lambda p: _ask("sum_multiples(nums)", "returns the sum of the numbers in the list nums "
                                f"that are divisible by {p['k']}."),
        solution=lambda p: _fn("sum_multiples(nums)", f"return sum(x for x in nums if x % {p['k']} == 0)"),
        buggy=lambda p: _fn("sum_multiples(nums)", f"return sum(x for x in nums if x % {p['k']} != 0)"),
        plan=lambda p: f"Keep x when x % {p['k']} == 0 and add them up; an empty list gives 0.",
        inputs=lambda r: (_ints(r),)),
    Family(
        "count_chars", [{"chars": c} for c in ("aeiou", "aeiouy", "xyz", "rst", "lmn")], "count_chars(s)",
        describe=lambda p: _ask("count_chars(s)", "returns how many characters of the string s are one of the "
                                f"letters '{p['chars']}', ignoring case."),
        solution=lambda p: _fn("count_chars(s)", f"return sum(1 for c in s.lower() if c in {p['chars']!r})"),
        buggy=lambda p: _fn("count_chars(s)", f"return sum(1 for c in s if c in {p['chars']!r})"),
        plan=lambda p: f"Lower-case s, then count the characters that appear in {p['chars']!r}.",
        inputs=lambda r: (_text(r),)),
    Family(
        "transform_words", [{"mode": m} for m in _WORD_MODES], "transform_words(s)",
        describe=lambda p: _ask("transform_words(s)", _WORD_MODES[p["mode"]].ask + "."),
        solution=lambda p: _fn("transform_words(s)", _WORD_MODES[p["mode"]].body),
        buggy=lambda p: _fn("transform_words(s)", _WORD_MODES[p["mode"]].buggy),
        plan=lambda p: _WORD_MODES[p["mode"]].plan,
        inputs=lambda r: (_words(r),)),
    Family(
        "fizzbuzz", [{"a": a, "b": b, "wa": wa, "wb": wb}
                     for (a, b), (wa, wb) in itertools.product(itertools.combinations(range(2, 8), 2), _WORD_PAIRS)],
        "fizzbuzz(n)",
        describe=lambda p: _ask("fizzbuzz(n)", "returns a list of strings for the numbers 1 to n: "
                                f"'{p['wa']}{p['wb']}' if the number is divisible by both {p['a']} and {p['b']}, "
                                f"'{p['wa']}' if only by {p['a']}, '{p['wb']}' if only by {p['b']}, "
                                "else the number itself as a string."),
        solution=lambda p: _fizzbuzz(p, "n + 1"),
        buggy=lambda p: _fizzbuzz(p, "n"),
        plan=lambda p: f"For i from 1 to n, build the word from the divisibility by {p['a']} and {p['b']}; "
                       "fall back to str(i).",
        inputs=lambda r: (r.randint(0, 30),)),
    Family(
        "caesar", [{"k": k} for k in range(1, 26)], "caesar(s)",
        describe=lambda p: _ask("caesar(s)", f"shifts every lowercase letter of s forward by {p['k']} places in the "
                                "alphabet (wrapping from z to a) and leaves all other characters unchanged."),
        solution=lambda p: _fn("caesar(s)", f"return ''.join(chr((ord(c) - 97 + {p['k']}) % 26 + 97) "
                                            "if 'a' <= c <= 'z' else c for c in s)"),
        buggy=lambda p: _fn("caesar(s)", f"return ''.join(chr(ord(c) + {p['k']}) "
                                         "if 'a' <= c <= 'z' else c for c in s)"),
        plan=lambda p: f"Map each lowercase c to chr((ord(c) - 97 + {p['k']}) % 26 + 97); keep the rest.",
        inputs=lambda r: (_text(r).lower(),)),
    Family(
        "clamp_list", [{"lo": lo, "hi": hi} for lo in (-5, 0, 1) for hi in (5, 10, 100)], "clamp_list(nums)",
        describe=lambda p: _ask("clamp_list(nums)", f"returns a new list where every number of nums below {p['lo']} "
                                f"becomes {p['lo']} and every number above {p['hi']} becomes {p['hi']}."),
        solution=lambda p: _fn("clamp_list(nums)", f"return [min(max(x, {p['lo']}), {p['hi']}) for x in nums]"),
        buggy=lambda p: _fn("clamp_list(nums)", f"return [max(min(x, {p['lo']}), {p['hi']}) for x in nums]"),
        plan=lambda p: f"Clamp each x with min(max(x, {p['lo']}), {p['hi']}).",
        inputs=lambda r: (_ints(r, -30, 150),)),
    Family(
        "rotate_left", [{"k": k} for k in range(1, 6)], "rotate_left(items)",
        describe=lambda p: _ask("rotate_left(items)", f"returns the list items rotated left by {p['k']} positions "
                                "(wrapping around; an empty list stays empty)."),
        solution=lambda p: _fn("rotate_left(items)", _rotate(p["k"], "items[k:] + items[:k]")),
        buggy=lambda p: _fn("rotate_left(items)", _rotate(p["k"], "items[-k:] + items[:-k]")),
        plan=lambda p: f"Reduce {p['k']} modulo the length, then concatenate items[k:] and items[:k].",
        inputs=lambda r: (_ints(r, 0, 9),)),
    Family(
        "chunk", [{"k": k} for k in range(2, 6)], "chunk(items)",
        describe=lambda p: _ask("chunk(items)", f"splits the list items into consecutive sublists of length {p['k']} "
                                "(the last one may be shorter) and returns the list of sublists."),
        solution=lambda p: _fn("chunk(items)", f"return [items[i:i + {p['k']}] "
                                               f"for i in range(0, len(items), {p['k']})]"),
        buggy=lambda p: _fn("chunk(items)", f"return [items[i:i + {p['k']}] "
                                            f"for i in range(0, len(items) - {p['k']}, {p['k']})]"),
        plan=lambda p: f"Slice items[i:i+{p['k']}] for i stepping by {p['k']}.",
        inputs=lambda r: (_ints(r, 0, 9, (0, 11)),)),
    Family(
        "digits", [{"mode": m} for m in _DIGIT_MODES], "digits(n)",
        describe=lambda p: _ask("digits(n)", f"returns {_DIGIT_MODES[p['mode']].ask}, for an integer n."),
        solution=lambda p: _fn("digits(n)", _DIGIT_MODES[p["mode"]].body),
        buggy=lambda p: _fn("digits(n)", _DIGIT_MODES[p["mode"]].buggy),
        plan=lambda p: _DIGIT_MODES[p["mode"]].plan,
        inputs=lambda r: (r.randint(-99999, 99999),)),
    Family(
        "dedupe", [{"keep": k} for k in ("first", "last")], "dedupe(items)",
        describe=lambda p: _ask("dedupe(items)", f"returns the list items without duplicates, keeping the {p['keep']} "
                                "occurrence of each value and the order of the kept values."),
        solution=lambda p: _fn("dedupe(items)", _DEDUPE_FIRST if p["keep"] == "first" else _DEDUPE_LAST),
        buggy=lambda p: _fn("dedupe(items)", "return sorted(set(items))"),
        plan=lambda p: ("Walk the list once, remembering values already kept." if p["keep"] == "first"
                        else "Keep x at position i only when it does not appear again after i."),
        inputs=lambda r: (_ints(r, 0, 6, (0, 10)),)),
    Family(
        "run_length", [{"sep": s} for s in ("", "-")], "run_length(s)",
        describe=lambda p: _ask("run_length(s)", "returns the run-length encoding of the string s: each maximal run "
                                "of one character becomes the character followed by the run length"
                                + (f", runs joined by '{p['sep']}'" if p["sep"] else "")
                                + f" (e.g. 'aaab' gives {p['sep'].join(['a3', 'b1'])!r})."),
        solution=lambda p: _RUN_LENGTH.format(sep=p["sep"]),
        buggy=lambda p: _fn("run_length(s)", f"return {p['sep']!r}.join(c + str(s.count(c)) "
                                             "for c in dict.fromkeys(s))"),
        plan=lambda p: "Scan s, extending the last run when the character repeats, then format each run.",
        inputs=lambda r: ("".join(r.choice("aab") * r.randint(1, 3) for _ in range(r.randint(0, 6))),)),
    Family(
        "kth_largest", [{"k": k} for k in (2, 3, 4)], "kth_largest(nums)",
        describe=lambda p: _ask("kth_largest(nums)", f"returns the {_ORDINAL[p['k']]} largest distinct value in the "
                                f"list nums, or None if there are fewer than {p['k']} distinct values."),
        solution=lambda p: _fn("kth_largest(nums)", f"vals = sorted(set(nums), reverse=True)\n{_kth(p['k'])}"),
        buggy=lambda p: _fn("kth_largest(nums)", f"vals = sorted(nums, reverse=True)\n{_kth(p['k'])}"),
        plan=lambda p: f"Sort the distinct values in descending order and index {p['k'] - 1}.",
        inputs=lambda r: (_ints(r, 0, 9, (0, 8)),)),
    Family(
        "palindrome", [{"strict": s} for s in (False, True)], "is_palindrome(s)",
        describe=lambda p: _ask("is_palindrome(s)", "returns True if the string s reads the same forwards and backwards"
                                + (" exactly (every character counts)." if p["strict"] else
                                   ", ignoring case and every character that is not a letter or digit, else False.")),
        solution=lambda p: _fn("is_palindrome(s)", "return s == s[::-1]" if p["strict"]
                               else "t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]"),
        buggy=lambda p: _fn("is_palindrome(s)", "return s.lower() == s[::-1].lower()" if p["strict"]
                            else "t = [c for c in s if c.isalnum()]\n    return t == t[::-1]"),
        plan=lambda p: ("Compare s with s[::-1]." if p["strict"]
                        else "Keep alphanumerics lower-cased, compare with the reverse."),
        inputs=lambda r: (r.choice(_PALINDROME_CASES),)),
    Family(
        "count_long_words", [{"k": k} for k in range(1, 7)], "count_long_words(s)",
        describe=lambda p: _ask("count_long_words(s)", "returns how many whitespace-separated words of the string s "
                                f"are longer than {p['k']} characters."),
        solution=lambda p: _fn("count_long_words(s)", f"return sum(1 for w in s.split() if len(w) > {p['k']})"),
        buggy=lambda p: _fn("count_long_words(s)", f"return sum(1 for w in s.split() if len(w) >= {p['k']})"),
        plan=lambda p: f"Split on whitespace and count words with len(w) > {p['k']}.",
        inputs=lambda r: (_words(r, (0, 8)),)),
    Family(
        "running", [{"mode": m} for m in _SCAN_MODES], "running(nums)",
        describe=lambda p: _ask("running(nums)", f"returns the list of {_SCAN_MODES[p['mode']][0]} of the list nums "
                                "(element i covers nums[0..i])."),
        solution=lambda p: _running(_SCAN_MODES[p["mode"]][1]),
        buggy=lambda p: _running(_SCAN_MODES[p["mode"]][2]),
        plan=lambda p: f"Keep an accumulator starting at nums[0]; update it with {_SCAN_MODES[p['mode']][1]!r} "
                       "and record it each step.",
        inputs=lambda r: (_ints(r, -9, 9),)),
    Family(
        "quadratic", [{"a": a, "b": b, "c": c} for a in (1, 2, 3) for b in range(-2, 3) for c in range(-2, 3)], "f(x)",
        describe=lambda p: _ask("f(x)", f"returns {p['a']}*x**2 + ({p['b']})*x + ({p['c']}) for a number x."),
        solution=lambda p: _fn("f(x)", f"return {p['a']} * x * x + {p['b']} * x + {p['c']}"),
        buggy=lambda p: _fn("f(x)", f"return {p['a']} * x * 2 + {p['b']} * x + {p['c']}"),
        plan=lambda p: "Evaluate the polynomial directly.",
        inputs=lambda r: (r.randint(-10, 10),)),
]
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


def reference(family: Family, params: dict) -> Callable:
    """The reference solution as a callable (our own trusted source, executed in-process)."""
    ns: dict[str, Any] = {}
    exec(compile(family.solution(params), f"<reference {family.name}>", "exec"), ns)  # noqa: S102
    return ns[family.entry_point]


def build_problem(family: Family, params: dict, n_tests: int) -> Problem:
    fn = reference(family, params)
    rng = rng_for(0, "code-tests", family.name, repr(sorted(params.items())))
    cases, seen = [], set()
    for _ in range(50 * n_tests):
        if len(cases) >= n_tests:
            break
        args = family.inputs(rng)
        if repr(args) not in seen:
            seen.add(repr(args))
            cases.append(args)
    tests = [f"assert {family.entry_point}({', '.join(map(repr, args))}) == {fn(*args)!r}" for args in cases]
    question = family.describe(params)
    return make_problem("code", ["code", family.name, params], question, CODE_INSTRUCTION,
                        family.solution(params),
                        {"family": family.name, "params": params, "entry_point": family.entry_point,
                         "tests": tests, "buggy": family.buggy(params), "plan": family.plan(params)})


def generate(cfg: CodeConfig, rng: random.Random, families: list[str] | None = None) -> Iterator[Problem]:
    """Each (family, parameters) problem once, in a seeded order; finite (the bank's size)."""
    names = families if families is not None else (cfg.families or [f.name for f in FAMILIES])
    unknown = sorted(set(names) - set(FAMILY_BY_NAME))
    if unknown:
        raise ValueError(f"unknown code families {unknown}; the bank has {sorted(FAMILY_BY_NAME)}")
    items = [(FAMILY_BY_NAME[n], p) for n in names for p in FAMILY_BY_NAME[n].grid]
    rng.shuffle(items)
    for family, params in items:
        yield build_problem(family, params, cfg.n_tests)
