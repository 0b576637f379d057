"""Token shards: the on-disk format pretraining reads, its writer and its reader.

Layout of a shards folder (the tokenizer stage's ``<out>/shards``)::

    manifest.json                     what is where, token/document/byte counts per split and source
    train/web-00003-000.bin           token ids, raw little-endian uint16 (uint32 if vocab > 65536);
                                      every document is followed by EOS
    train/web-00003-000.idx           int64 offsets of document starts, n_documents + 1 entries
                                      (the last is the shard's token count)
    train/web-00003-000.ids           the curated document ids, one per line
    validation/code-00000-000.*       the same for held-out documents, plus
    validation/code-00000-000.jsonl.gz  their raw text ({"id", "text"}), for bits-per-byte
                                      with any tokenizer

Shard names are ``<source>-<input file index>-<part>``, so the output does not depend on which
worker ran first. Files are written under a temporary name and renamed when complete.

Reading: ``ShardReader(path, split, seq_len)`` presents a split as ``len(reader)`` sequences of
``seq_len + 1`` tokens (inputs and shifted targets). Each shard is cut into consecutive windows
that overlap by one token (the target of one window's last position is the next window's first
input); documents are packed across window boundaries and the shard's tail shorter than a window is
dropped. Sources are blended by weight at read time (the
manifest's training ``mix`` by default), repeating a source's sequences in a fresh order when its
weight asks for more than it has. Order is deterministic given (seed, epoch); ranks of a
data-parallel group each see a disjoint, equally long strided slice.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "whale-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")


class ShardError(RuntimeError):
    """Shards that cannot be read as recorded: missing, truncated, inconsistent."""


# -- writing ---------------------------------------------------------------------------------

@dataclass
class ShardInfo:
    path: str  # relative to the shards root, e.g. "train/web-00003-000.bin"
    tokens: int = 0
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents' text (EOS adds none)
    text: str | None = None  # validation only: the raw text file


class ShardWriter:
    """Appends documents of one (split, source, input file) to numbered shard files.

    ``add`` writes ``ids + [eos]``; a new part starts once a shard holds ``max_tokens``.
    Document ids are stored one per line, with any "\\n" in an id replaced by a space.
    """

    def __init__(self, root: str | Path, split: str, stem: str, dtype: np.dtype, eos_id: int,
                 max_tokens: int = 1 << 26, keep_text: bool = False, flush_tokens: int = 1 << 20):
        self.root = Path(root)
        self.split = split
        self.stem = stem
        self.dtype = np.dtype(dtype)
        self.eos = np.array([eos_id], dtype=self.dtype)
        self.max_tokens = max_tokens
        self.keep_text = keep_text
        self.flush_tokens = flush_tokens
        self.shards: list[ShardInfo] = []
        self._part = -1
        self._open = False

    def _start(self) -> None:
        self._part += 1
        rel = f"{self.split}/{self.stem}-{self._part:03d}"
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self._info = ShardInfo(path=f"{rel}.bin", text=f"{rel}.jsonl.gz" if self.keep_text else None)
        self._bin = open(self.root / f"{rel}.bin.tmp", "wb")
        self._ids = open(self.root / f"{rel}.ids.tmp", "w", encoding="utf-8", newline="")
        self._text = gzip.open(self.root / f"{rel}.jsonl.gz.tmp", "wt", encoding="utf-8") if self.keep_text else None
        self._offsets = [0]
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0
        self._open = True

    def add(self, doc_id: str, ids: Sequence[int] | np.ndarray, n_bytes: int, text: str | None = None) -> None:
        if not self._open:
            self._start()
        arr = np.asarray(ids, dtype=self.dtype)
        self._pending += [arr, self.eos]
        self._pending_tokens += len(arr) + 1
        info = self._info
        info.tokens += len(arr) + 1
        info.documents += 1
        info.bytes += n_bytes
        self._offsets.append(info.tokens)
        self._ids.write(doc_id.replace("\n", " ") + "\n")
        if self._text is not None:
            self._text.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
        if self._pending_tokens >= self.flush_tokens:
            self._flush()
        if info.tokens >= self.max_tokens:
            self._finish()

    def _flush(self) -> None:
        if self._pending:
            self._bin.write(np.concatenate(self._pending).tobytes())
            self._pending, self._pending_tokens = [], 0

    def _finish(self) -> None:
        self._flush()
        self._bin.close()
        self._ids.close()
        if self._text is not None:
            self._text.close()
        rel = self._info.path[:-len(".bin")]
        np.asarray(self._offsets, dtype=np.int64).tofile(self.root / f"{rel}.idx.tmp")
        for ext in (".bin", ".idx", ".ids") + ((".jsonl.gz",) if self._text is not None else ()):
            os.replace(self.root / f"{rel}{ext}.tmp", self.root / f"{rel}{ext}")
        self.shards.append(self._info)
        self._open = False

    def close(self) -> list[ShardInfo]:
        if self._open:
            self._finish()
        return self.shards


# -- the manifest ------------------------------------------------------------------------------

@dataclass
class SourceStats:
    tokens: int = 0
    documents: int = 0
    bytes: int = 0
    shards: list[ShardInfo] = field(default_factory=list)

    def add(self, shards: Sequence[ShardInfo]) -> None:
        for s in shards:
            self.tokens += s.tokens
            self.documents += s.documents
            self.bytes += s.bytes
            self.shards.append(s)


def build_manifest(dtype: np.dtype, vocab_size: int, eos_id: int, mix: Mapping[str, float],
                   splits: Mapping[str, Mapping[str, SourceStats]], **extra) -> dict:
    """The manifest dict; ``splits[split][source]`` holds that part's stats and shards."""
    out = {"format": FORMAT, "version": VERSION, "dtype": np.dtype(dtype).name, "vocab_size": vocab_size,
           "eos_id": eos_id, "mix": dict(mix), **extra, "splits": {}}
    for split, sources in splits.items():
        srcs = {}
        for name, st in sorted(sources.items()):
            st.shards.sort(key=lambda s: s.path)
            srcs[name] = {"tokens": st.tokens, "documents": st.documents, "bytes": st.bytes,
                          "shards": [asdict(s) for s in st.shards]}
        out["splits"][split] = {
            "tokens": sum(s["tokens"] for s in srcs.values()),
            "documents": sum(s["documents"] for s in srcs.values()),
            "bytes": sum(s["bytes"] for s in srcs.values()),
            "sources": srcs,
        }
    return out


def write_manifest(root: str | Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no token shards at {root}: {MANIFEST} is missing "
                         f"(expected the tokenizer stage's <out>/shards folder)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path} has format version {manifest.get('version')}; this reader reads "
                         f"version {VERSION}: re-run the tokenizer stage")
    return manifest


# -- reading ---------------------------------------------------------------------------------

class _Shard:
    """One shard file, validated against its manifest entry, memory-mapped on first use."""

    def __init__(self, root: Path, info: Mapping, dtype: np.dtype):
        self.path = root / info["path"]
        self.idx_path = self.path.with_suffix(".idx")
        self.tokens = int(info["tokens"])
        self.documents = int(info["documents"])
        self.dtype = dtype
        self._data: np.memmap | None = None
        expected = {self.path: self.tokens * dtype.itemsize, self.idx_path: (self.documents + 1) * 8}
        for p, size in expected.items():
            if not p.is_file():
                raise ShardError(f"shard file {p} is missing (listed in {root / MANIFEST})")
            actual = p.stat().st_size
            if actual != size:
                raise ShardError(f"shard file {p} has {actual:,} bytes, the manifest says {size:,}: "
                                 f"truncated or overwritten; re-run the tokenizer stage")

    def __getstate__(self) -> dict:  # never pickle the mapped data, only where it lives
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._data

    def offsets(self) -> np.ndarray:
        offsets = np.fromfile(self.idx_path, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != self.tokens or np.any(np.diff(offsets) <= 0):
            raise ShardError(f"document index {self.idx_path} is inconsistent with {self.path}")
        return offsets


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum to exactly ``total``."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


class ShardReader:
    """Random access to a split as fixed-length training sequences.

    Args:
        path: the shards folder (``<tokenizer stage out>/shards``).
        split: "train" or "validation".
        seq_len: tokens per training sequence; items hold ``seq_len + 1`` tokens.
        sources: which sources to read (default: all in the split).
        mix: source weights. None: the manifest's mix for "train", "natural" otherwise;
            "natural": every sequence exactly once; a mapping: the share of items per source
            (a source is repeated, reshuffled each time round, when its share exceeds its size).
        seed, epoch: the order is a pure function of these (and the data).
        shuffle: permute items; with shuffle=False and a natural mix, sources come in order and
            each source's sequences in file order.
        rank, world_size: data-parallel slicing; rank r gets items r, r + world_size, ... and
            every rank gets ``total // world_size`` of them.

    ``reader[i]`` is an ``np.int64`` array of ``seq_len + 1`` token ids.
    """

    def __init__(self, path: str | Path, split: str = "train", seq_len: int = 2048, *,
                 sources: Sequence[str] | None = None, mix: Mapping[str, float] | str | None = None,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.root = Path(path)
        self.manifest = read_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ShardError(f"split {split!r} is not in {self.root / MANIFEST} (has {sorted(splits)})")
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a data-parallel group of {world_size}")
        self.split, self.seq_len, self.seed, self.epoch = split, seq_len, seed, epoch
        self.rank, self.world_size = rank, world_size
        self._shuffle = shuffle
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos_id = int(self.manifest["eos_id"])
        available = splits[split]["sources"]
        self.sources = list(sources) if sources is not None else sorted(available)
        missing = [s for s in self.sources if s not in available]
        if missing:
            raise ShardError(f"split {split!r} has no source {missing} (has {sorted(available)})")

        # per source: its shards and the number of windows each shard holds
        self._shards: list[list[_Shard]] = []
        self._cum_windows: list[np.ndarray] = []
        for s in self.sources:
            shards = [_Shard(self.root, info, self.dtype) for info in available[s]["shards"]]
            self._shards.append(shards)
            self._cum_windows.append(np.cumsum([max(0, (sh.tokens - 1) // seq_len) for sh in shards]))
        self.sequences_per_source = {s: int(c[-1]) if len(c) else 0
                                     for s, c in zip(self.sources, self._cum_windows, strict=True)}
        total = sum(self.sequences_per_source.values())
        if total == 0:
            raise ShardError(f"split {split!r} ({', '.join(self.sources)}) holds "
                             f"{splits[split]['tokens']:,} tokens: too few for one sequence of "
                             f"{seq_len + 1} tokens per shard")
        self.mix = self._resolve_mix(mix, split)
        self._source, self._window = self._order(total)
        self._len = total // world_size

    def _resolve_mix(self, mix, split) -> dict[str, float]:
        natural = {s: n / sum(self.sequences_per_source.values()) for s, n in self.sequences_per_source.items()}
        explicit = mix is not None
        if mix is None:
            mix = self.manifest.get("mix") if split == "train" else "natural"
        if mix == "natural" or mix is None:
            self._natural = True
            return natural
        if isinstance(mix, str):
            raise ValueError(f"mix={mix!r}: expected None, 'natural' or a mapping of source weights")
        unknown = sorted(s for s, w in mix.items() if s not in self.sources and w > 0)
        if unknown and explicit:
            raise ShardError(f"mix gives weight to {unknown}, which split {split!r} does not hold or "
                             f"were not selected (sources: {self.sources})")
        self._natural = False
        weights = {s: float(mix.get(s, 0.0)) for s in self.sources}
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"mix weights must be non-negative with a positive sum, got {weights}")
        empty = [s for s, w in weights.items() if w > 0 and self.sequences_per_source[s] == 0]
        if empty:
            raise ShardError(f"mix gives weight to {empty}, which hold no complete sequence of "
                             f"{self.seq_len + 1} tokens in split {self.split!r}")
        total = sum(weights.values())
        return {s: w / total for s, w in weights.items()}

    def _order(self, total: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, window index within source) of every item, before rank slicing."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self._natural:
            counts = np.array([self.sequences_per_source[s] for s in self.sources], dtype=np.int64)
        else:
            counts = _largest_remainder(np.array([self.mix[s] for s in self.sources]), total)
        labels = np.repeat(np.arange(len(self.sources), dtype=np.int32), counts)
        if self._shuffle:
            labels = rng.permutation(labels)
        elif not self._natural:
            # interleave so every prefix holds each source's share: sort by (k + 0.5) / count_s
            when = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
            labels = labels[np.argsort(when, kind="stable")]
        windows = np.empty(total, dtype=np.int64)
        for s, n in enumerate(self.sequences_per_source[name] for name in self.sources):
            where = np.flatnonzero(labels == s)
            if not len(where):
                continue
            rounds = -(-len(where) // n)
            if self._shuffle:
                order = np.concatenate([rng.permutation(n) for _ in range(rounds)])
            else:
                order = np.tile(np.arange(n), rounds)
            windows[where] = order[:len(where)]
        return labels, windows

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self._len <= i < self._len:
            raise IndexError(f"sequence {i} out of range for {self._len} sequences")
        g = (i % self._len) * self.world_size + self.rank
        s, w = int(self._source[g]), int(self._window[g])
        cum = self._cum_windows[s]
        k = int(np.searchsorted(cum, w, side="right"))
        start = (w - (int(cum[k - 1]) if k else 0)) * self.seq_len
        return np.array(self._shards[s][k].data[start:start + self.seq_len + 1], dtype=np.int64)

    def source_of(self, i: int) -> str:
        return self.sources[int(self._source[(i % self._len) * self.world_size + self.rank])]

    def repeats(self) -> dict[str, float]:
        """How many times each source's sequences are used per pass (>1: upsampled)."""
        total = len(self._source)
        return {s: (self.mix[s] * total / n if n else 0.0)
                for s, n in self.sequences_per_source.items()}

    def documents(self, source: str) -> Iterator[tuple[str, np.ndarray]]:
        """(document id, its token ids without the closing EOS) for every document of a source."""
        shards = self._shards[self.sources.index(source)]
        for sh in shards:
            offsets = sh.offsets()
            ids_path = sh.path.with_suffix(".ids")
            try:  # bytes, split on "\n" only: ids may hold other line-breaking characters
                ids = ids_path.read_bytes().decode("utf-8").split("\n")[:-1]
            except (OSError, UnicodeDecodeError) as e:
                raise ShardError(f"document ids {ids_path} are unreadable: {e}") from None
            if len(ids) != sh.documents:
                raise ShardError(f"{ids_path} lists {len(ids)} ids for {sh.documents} documents")
            for j, doc_id in enumerate(ids):
                yield doc_id, np.asarray(sh.data[offsets[j]:offsets[j + 1] - 1])


def iter_validation_text(path: str | Path, source: str) -> Iterator[dict]:
    """The held-out documents' raw text ({"id", "text"}) of a source, in shard order."""
    root = Path(path)
    manifest = read_manifest(root)
    try:
        shards = manifest["splits"]["validation"]["sources"][source]["shards"]
    except KeyError:
        raise ShardError(f"{root / MANIFEST} has no validation text for source {source!r}") from None
    for info in shards:
        p = root / info["text"]
        try:
            with gzip.open(p, "rt", encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)
        except (OSError, EOFError, json.JSONDecodeError) as e:
            raise ShardError(f"validation text {p} is unreadable: {e}") from None
