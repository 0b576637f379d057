"""The trace-dataset teacher: OpenR1-style rows from JSONL and Parquet, bad rows counted."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.distill.rejection import RejectionConfig, rejection_sample_dataset
from stages.distill.teachers import DatasetTeacherConfig, TeacherUnavailable, build_teacher

Q = "What is 2 + 2? Put the final answer in \\boxed{}."
ROWS = [
    # reasoning in a separate field (DeepSeek API / SGLang style)
    {"messages": [{"role": "user", "content": Q},
                  {"role": "assistant", "reasoning_content": "two plus two", "content": "\\boxed{4}"}], "answer": "4"},
    # inline <think> (OpenR1-Math `messages`), plus extra generations, one of them wrong
    {"problem": "What is 3 * 3?", "answer": "9",
     "messages": [{"role": "user", "content": "What is 3 * 3?"},
                  {"role": "assistant", "content": "<think>\nthree threes\n</think>\n\nSo \\boxed{9}."}],
     "generations": ["<think>\nthree threes\n</think>\n\nSo \\boxed{9}.", "<think>\noops\n</think>\n\\boxed{6}"]},
    # a system message, `reasoning` field (vLLM style), a wrong answer
    {"messages": [{"role": "system", "content": "You are a tutor."}, {"role": "user", "content": "1 + 1?"},
                  {"role": "assistant", "reasoning": "one and one", "content": "\\boxed{3}"}], "answer": "2"},
    # code with tests
    {"messages": [{"role": "user", "content": "Write double(x)."},
                  {"role": "assistant", "reasoning_content": "multiply by two",
                   "content": "```python\ndef double(x):\n    return 2 * x\n```"}],
     "tests": ["assert double(2) == 4", "assert double(-1) == -2"], "entry_point": "double"},
    # nothing to verify against
    {"messages": [{"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "reasoning_content": "hmm", "content": "No."}]},
    # malformed: no assistant message; messages not a list
    {"messages": [{"role": "user", "content": "hello"}], "answer": "1"},
    {"messages": "not a list", "answer": "1"},
]


def write_jsonl(path, rows, extra_lines=()):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


def test_jsonl_rows_are_parsed_verified_and_counted(tmp_path):
    path = tmp_path / "traces.jsonl.gz"
    write_jsonl(path, ROWS, extra_lines=["{not json"])
    res = rejection_sample_dataset(DatasetTeacherConfig(path=str(path)), RejectionConfig(keep_per_prompt=4))
    st = res.stats
    assert st["rows"] == 8 and st["malformed_rows"] == 3
    assert st["dropped"]["malformed:invalid_json"] == 1
    assert st["dropped"]["malformed:no_assistant_message"] == 1
    assert st["dropped"]["malformed:messages_not_a_list"] == 1
    assert st["dropped"]["wrong_answer"] == 2          # 3*3=6 and 1+1=3
    assert st["dropped"]["duplicate"] == 1             # the generation that repeats the message
    assert st["dropped"]["unverifiable"] == 1          # the joke
    kept = {r["messages"][-2]["content"]: r for r in res.rows}
    assert set(kept) == {Q, "What is 3 * 3?", "Write double(x)."}
    assert kept["What is 3 * 3?"]["messages"][-1] == {"role": "assistant", "reasoning_content": "three threes",
                                                      "content": "So \\boxed{9}."}
    assert st["received"] == st["kept"] + sum(v for k, v in st["dropped"].items() if not k.startswith("malformed"))


def test_system_message_of_the_row_is_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{**ROWS[2], "answer": "3"}])
    [row] = rejection_sample_dataset(DatasetTeacherConfig(path=str(path)), RejectionConfig()).rows
    assert row["messages"][0] == {"role": "system", "content": "You are a tutor."}


def test_unverified_rows_can_be_kept_on_request(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [ROWS[4]])
    res = rejection_sample_dataset(DatasetTeacherConfig(path=str(path)), RejectionConfig(keep_unverified=True))
    assert res.stats["kept"] == 1


def test_parquet_directory_and_limit(tmp_path):
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1),
             "messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"<think>\nadd one\n</think>\n\\boxed{{{i + 1}}}"}]}
            for i in range(10)]
    (tmp_path / "d").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:6]), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), tmp_path / "d" / "b.parquet")
    res = rejection_sample_dataset(DatasetTeacherConfig(path=str(tmp_path / "d")), RejectionConfig())
    assert res.stats["kept"] == 10
    limited = rejection_sample_dataset(DatasetTeacherConfig(path=str(tmp_path / "d"), limit=4), RejectionConfig())
    assert limited.stats["rows"] == 4


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherUnavailable, match="does not exist"):
        build_teacher(DatasetTeacherConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherUnavailable, match="no .*jsonl"):
        build_teacher(DatasetTeacherConfig(path=str(tmp_path / "empty")))
