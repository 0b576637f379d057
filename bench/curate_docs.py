"""Curate on real, multilingual documentation: per-language and technical-page kept fractions.

    python bench/curate_docs.py                                # build the WARC, run AFTER (this tree)
    python bench/curate_docs.py --before /work/main            # ... and BEFORE (another checkout), same WARC

Builds a test set from Debian documentation packages (downloaded with ``apt-get download`` into
``--cache``, never committed): the Debian Administrator's Handbook in six languages (HTML), translated
man pages (de, es, fr, it, ja; rendered to HTML by mandoc, as manpages.debian.org does) and the Rust
book and Rust by Example (technical pages, every one with code samples). Each page is wrapped as an
HTTP response record under its public URL in one WARC, then the curate stage runs on it (web branch,
the stage's defaults but for ``languages``), once per checkout, each in its own process. Prints one
JSON object: pages and kept fractions per language and per kind, the removals by step/reason, wall
time and load average. Goals (issue 18): every language keeps >= 1/3 of its pages, technical pages >= 40 %.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGS = {"en": "en-US", "de": "de-DE", "fr": "fr-FR", "es": "es-ES", "it": "it-IT", "ja": "ja-JP"}
MAN_LANGS = ("de", "es", "fr", "it", "ja")
PACKAGES = ["debian-handbook", "rust-doc", "mandoc", *(f"manpages-{lang}" for lang in MAN_LANGS)]


def fetch_packages(cache: Path) -> Path:
    """Download and unpack the .debs (once); returns the unpacked root."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True, capture_output=True)
    if not (root / ".done").exists():
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        (root / ".done").touch()
    return root


def every(items: list, n: int) -> list:
    """``n`` items spread evenly over the sorted list (deterministic)."""
    items = sorted(items)
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


def collect_pages(root: Path, man_per_lang: int, rust_pages: int, handbook_per_lang: int = 1000) -> list[dict]:
    """(url, language, kind, html) of every page of the test set."""
    doc = root / "usr/share/doc"
    pages = []
    for lang, folder in LANGS.items():
        for f in every(list((doc / "debian-handbook/html" / folder).glob("*.html")), handbook_per_lang):
            pages.append({"url": f"https://debian-handbook.info/browse/{folder}/stable/{f.name}", "lang": lang,
                          "kind": "handbook", "html": f.read_text(encoding="utf-8", errors="replace")})
    mandoc = root / "usr/bin/mandoc"
    for lang in MAN_LANGS:
        for f in every(list((root / "usr/share/man" / lang / "man1").glob("*.1.gz")), man_per_lang):
            name = f.name[:-len(".1.gz")]
            body = subprocess.run([str(mandoc), "-Thtml", str(f)], capture_output=True, text=True).stdout
            if body.strip():
                pages.append({"url": f"https://manpages.debian.org/bookworm/manpages-{lang}/{name}.1.{lang}.html",
                              "lang": lang, "kind": "man", "html": body})
    rust = doc / "rust-doc/html"
    candidates = [p for sub in ("book", "rust-by-example") for p in (rust / sub).rglob("*.html")
                  if "<pre" in p.read_text(encoding="utf-8", errors="replace")
                  and p.name not in ("print.html", "404.html", "toc.html")]
    for f in every(candidates, rust_pages):
        pages.append({"url": f"https://doc.rust-lang.org/1.63.0/{f.relative_to(rust)}", "lang": "en",
                      "kind": "technical", "html": f.read_text(encoding="utf-8", errors="replace")})
    return pages


def write_warc(pages: list[dict], path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for p in pages:
            body = p["html"].encode("utf-8")
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                               ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(p["url"], "response", payload=io.BytesIO(body), http_headers=http))


def run_stage(warc: Path, out: Path, languages: list[str]) -> None:
    """Runs in a child process whose PYTHONPATH selects the checkout."""

    import ray

    from pipeline.config import GlobalConfig
    from pipeline.stage import StageContext
    from pipeline.tracking import Tracker
    from stages.curate.config import CurateConfig
    from stages.curate.run import run

    cfg = CurateConfig.model_validate({"sources": [{"type": "warc", "path": str(warc)}],
                                       "web": {"language": {"languages": languages}}})
    start_ray()
    ctx = StageContext(stage="curate", out=out, inputs={}, tracker=Tracker.disabled(),
                       pipeline=GlobalConfig(name="bench"), fingerprint="bench")
    run(cfg, ctx)
    ray.shutdown()


def kept_urls(out: Path) -> set[str]:
    urls = set()
    for f in sorted((out / "web").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            urls.update(json.loads(line)["metadata"].get("url") for line in fh)
    return urls


def fractions(pages: list[dict], kept: set[str]) -> dict:
    def share(group):
        return {"pages": len(group), "kept": sum(p["url"] in kept for p in group),
                "kept_fraction": round(sum(p["url"] in kept for p in group) / max(1, len(group)), 3)}

    return {"by_language": {lang: share([p for p in pages if p["lang"] == lang and p["kind"] != "technical"])
                            for lang in LANGS},
            "by_kind": {k: share([p for p in pages if p["kind"] == k]) for k in ("handbook", "man", "technical")},
            "by_language_and_kind": {f"{lang}/{k}": share(g) for lang in LANGS for k in ("handbook", "man")
                                     if (g := [p for p in pages if p["lang"] == lang and p["kind"] == k])},
            "all": share(pages)}


def removals(out: Path) -> dict:
    st = json.loads((out / "stats.json").read_text())
    c = Counter()
    for row in st["branches"]["web"]["funnel"]:
        c.update({f"{row['step']}/{r}": n for r, n in row["removed_by_reason"].items()})
    return dict(c.most_common())


def measure(label: str, checkout: Path, warc: Path, out: Path, pages: list[dict], languages: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = os.getloadavg()[0]
    t0 = time.time()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_run-stage", str(warc), str(out),
                    ",".join(languages)], env=env, check=True, cwd=checkout,
                   stdout=subprocess.DEVNULL, stderr=open(out.parent / f"{label}.log", "w"))
    return {"checkout": str(checkout), "wall_s": round(time.time() - t0, 1), "load_average_1m": round(load, 2),
            **fractions(pages, kept_urls(out)), "removed_by_step_reason": removals(out)}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_run-stage":
        return run_stage(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "curate_docs",
                   help="where the .debs are downloaded and unpacked")
    p.add_argument("--out", type=Path, help="WARC and stage outputs (default: a temp dir)")
    p.add_argument("--before", type=Path, help="also run this checkout (e.g. main) on the same WARC")
    p.add_argument("--warc", type=Path, help="reuse this WARC (built by an earlier run with the same page options)")
    p.add_argument("--handbook-per-lang", type=int, default=1000, help="at most this many handbook pages per language")
    p.add_argument("--man-per-lang", type=int, default=40)
    p.add_argument("--rust-pages", type=int, default=80)
    p.add_argument("--languages", default=",".join(LANGS))
    args = p.parse_args()

    root = fetch_packages(args.cache)
    pages = collect_pages(root, args.man_per_lang, args.rust_pages, args.handbook_per_lang)
    work = args.out or Path(tempfile.mkdtemp(prefix="curate-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    warc = args.warc or work / "docs.warc.gz"
    if not args.warc:
        write_warc(pages, warc)
    languages = args.languages.split(",")
    result = {"bench": "curate_docs", "warc": str(warc), "pages": len(pages), "languages": languages,
              "input": {k: v["pages"] for k, v in fractions(pages, set())["by_language_and_kind"].items()}}
    result["input"]["technical"] = sum(p["kind"] == "technical" for p in pages)
    runs = [("before", args.before)] if args.before else []
    runs.append(("after", ROOT))
    for label, checkout in runs:
        result[label] = measure(label, checkout.resolve(), warc, work / label, pages, languages)
    after = result["after"]
    result["goals"] = {
        "every_language_keeps_a_third": all(v["kept_fraction"] >= 1 / 3 for v in after["by_language"].values()),
        "technical_keeps_40pct": after["by_kind"]["technical"]["kept_fraction"] >= 0.4}
    print(json.dumps(result, indent=2, ensure_ascii=False))



def start_ray() -> None:
    """A local Ray for the stage, retried: Ray gives its raylet 30 s to start, not always enough on a
    loaded machine."""
    import logging

    import ray

    for attempt in range(6):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            return
        except Exception:
            if attempt == 5:
                raise
            ray.shutdown()
            time.sleep(5)

if __name__ == "__main__":
    main()
