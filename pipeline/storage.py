"""The one path helper: every output location goes through ``Storage``, local path or fsspec URI.

Stages always work on a local folder (sentencepiece, torch.save and friends want real paths).
For a remote ``output_root`` (``s3://bucket/prefix``) the runner gives the stage a local
staging folder and uploads it after the stage returns; upstream outputs are downloaded into a
local cache once. For a local root the stage writes in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec


def is_remote(uri: str) -> bool:
    proto = fsspec.utils.get_protocol(str(uri))
    return proto not in ("file", "local")


class Storage:
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.remote = is_remote(root)
        if not self.remote:
            root = str(Path(root).expanduser().resolve())
        self.fs, self._root = fsspec.core.url_to_fs(root)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # -- addressing -----------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """User-facing location (a local path or a URI with protocol)."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def local_path(self, *parts: str) -> Path:
        if self.remote:
            raise ValueError(f"{self.root} is remote; use a staging folder")
        return Path(self._path(*parts))

    # -- queries --------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._path(*parts))

    def listdir(self, *parts: str) -> list[str]:
        p = self._path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(Path(x.rstrip("/")).name for x in self.fs.ls(p, detail=False))

    # -- small files ----------------------------------------------------------------------
    def read_text(self, *parts: str) -> str:
        with self.fs.open(self._path(*parts), "r") as f:
            return f.read()

    def write_text(self, text: str, *parts: str) -> None:
        """Atomic on local disks (write a temp file, then rename); object stores put whole."""
        path = self._path(*parts)
        if self.remote:
            with self.fs.open(path, "w") as f:
                f.write(text)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_text(json.dumps(obj, indent=2, default=str) + "\n", *parts)

    def remove(self, *parts: str) -> None:
        p = self._path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # -- folders --------------------------------------------------------------------------
    def upload(self, local_dir: Path, *parts: str) -> None:
        dest = self._path(*parts)
        for src in sorted(Path(local_dir).rglob("*")):
            if src.is_file():
                self.fs.put_file(str(src), f"{dest}/{src.relative_to(local_dir).as_posix()}")

    def download(self, local_dir: Path, *parts: str) -> Path:
        src = self._path(*parts)
        local_dir = Path(local_dir)
        tmp = local_dir.with_name(local_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in self.fs.find(src):
            rel = f[len(src):].lstrip("/")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f, str(tmp / rel))
        shutil.rmtree(local_dir, ignore_errors=True)
        tmp.rename(local_dir)
        return local_dir


def cache_dir() -> Path:
    return Path(os.environ.get("WHALE_CACHE", Path.home() / ".cache" / "whale"))
