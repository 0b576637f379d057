"""Teacher choice, one pydantic model per backend, selected by ``kind`` (unknown keys are errors)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ProceduralTeacherConfig(_Strict):
    """The built-in offline teacher: step-by-step traces computed from the problem itself."""

    kind: Literal["procedural"] = "procedural"
    error_rate: float = Field(0.1, ge=0, le=1)         # share of samples with a wrong final answer
    format_error_rate: float = Field(0.0, ge=0, le=1)  # share with a broken format (no box, two think blocks)
    max_trace_tokens: int = Field(300, ge=20)          # longer traces fall back to a terser form
    countdown_dead_ends: int = Field(3, ge=0, le=50)   # failed branches narrated before the solution


class OpenAITeacherConfig(_Strict):
    """Any OpenAI-compatible /v1/chat/completions server: vLLM, SGLang, DeepSeek's API, our serve stage."""

    kind: Literal["openai"] = "openai"
    base_url: str                                       # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"          # name of the env var holding the key; None: no key
    system_prompt: str | None = None
    temperature: float = Field(0.6, ge=0, le=2)         # DeepSeek-R1's recommended sampling
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(4096, ge=1)
    n_per_request: int = Field(1, ge=1, le=64)           # >1 uses the API's `n` (vLLM, SGLang); 1 works everywhere
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0)                   # first retry delay; doubles each retry (with jitter)
    backoff_max_s: float = Field(30.0, ge=0)
    concurrency: int = Field(8, ge=1, le=256)            # requests in flight at once
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


class DatasetTeacherConfig(_Strict):
    """Existing traces (OpenR1-style): JSONL(.gz) or Parquet rows with chat ``messages``.

    The assistant message carries the reasoning as ``reasoning_content`` (or ``reasoning``)
    or inline in ``<think>`` tags. Rows are verified against ``answer_field`` (math) or
    ``tests_field`` + ``entry_point_field`` (code); rows with neither are "unverifiable".
    """

    kind: Literal["dataset"] = "dataset"
    path: str                                   # a file, or a directory of *.jsonl / *.jsonl.gz / *.parquet
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    messages_field: str = "messages"
    problem_field: str = "problem"              # used when a row has no user message
    generations_field: str = "generations"      # OpenR1's extra completions (list of strings), if present
    answer_field: str = "answer"
    tests_field: str = "tests"
    entry_point_field: str = "entry_point"
    id_field: str | None = None
    limit: int | None = Field(None, ge=1)       # rows to read at most


class LocalTeacherConfig(_Strict):
    """A local checkpoint (ours, or a Hugging Face DeepSeek-V3 folder) generating through model.engine."""

    kind: Literal["local"] = "local"
    path: str                                   # folder with config.json + safetensors
    tokenizer_path: str | None = None           # None: the same folder
    system_prompt: str | None = None
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1)             # engine slots: samples of a prompt decoded together
    device: str = "cpu"


TeacherConfig = Annotated[
    ProceduralTeacherConfig | OpenAITeacherConfig | DatasetTeacherConfig | LocalTeacherConfig,
    Field(discriminator="kind"),
]
