"""Reading stories from any SOURCE: official .txt, .json, .jsonl, parquet, or a Hugging Face dataset.

Every reader streams: memory stays bounded whatever the corpus size (the full TinyStories train
file is 1.9 GB). `iter_stories(source)` yields normalized documents; a TinyStories-Instruct record
(`Features: ...`, `Words: ...`, `Summary: ...`, `Random sentence: ...`, `Story: ...`) is one document.

A SOURCE is
  - a .txt file in the official format: documents separated by `<|endoftext|>` lines;
  - a .json file: a list of strings, {"texts": [...]}, or a list of {"text": ...};
  - a .jsonl file: one string or {"text": ...} per line;
  - a .parquet file with a `text` column;
  - a Hugging Face dataset: a hub name (`roneneldan/TinyStories`), a local dataset folder that
    `datasets.load_dataset` reads, or a `save_to_disk` folder; `NAME:SPLIT` picks a split.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

EOT = "<|endoftext|>"
FILE_KINDS = {".txt": "txt", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
JSON_SHAPES = 'a list of strings, {"texts": [...]}, or a list of {"text": ...}'
CHUNK = 1 << 20  # 1 MiB reads
# A story is about 1 KB. A "document" this long is a file in another format (no <|endoftext|> lines,
# one JSON value per file): refused, because it would be held whole in memory and tokenized as one.
MAX_DOCUMENT_CHARS = 1 << 24
VAL_SPLITS = ("validation", "valid", "val", "test")

OnBytes = Callable[[int], None]


# ---------------------------------------------------------------- normalization

_CRLF = re.compile(r"\r\n?")
# Patterns match only what changes (not every space or newline): that keeps normalize fast.
_SPACES = re.compile(r"(?:\t|  )[ \t]*")
_EDGE_SPACE = re.compile(r" \n ?|\n ")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """Whitespace-normalize one document the way the official files need.

    CRLF/CR become LF; runs of spaces and tabs become one space; spaces at line starts and ends
    go; more than one blank line in a row becomes one; the document is stripped. Everything else,
    Unicode quotes and apostrophes included, is kept as it is.
    """
    if "\r" in text:
        text = _CRLF.sub("\n", text)
    text = _SPACES.sub(" ", text)
    text = _EDGE_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip(" \n")


def story_hash(story: str) -> bytes:
    """A 16-byte digest of a normalized story: the key for de-duplication across splits."""
    return hashlib.blake2b(story.encode("utf-8"), digest_size=16).digest()


# ---------------------------------------------------------------- sources

@dataclass
class Source:
    """One SOURCE as the user named it, resolved to a kind and a path or dataset name."""

    spec: str                      # what the user typed
    kind: str                      # txt | json | jsonl | parquet | hub
    path: Path | None = None       # files and local dataset folders
    name: str | None = None        # hub dataset name or local folder, as given to `datasets`
    split: str | None = None       # hub split; None = chosen by role
    info: dict = field(default_factory=dict)  # filled by the hub reader: rows, fingerprint, ...

    @property
    def size(self) -> int | None:
        """Bytes on disk for a file, or None (hub: known only once loaded, see `info`)."""
        if self.path is not None and self.path.is_file():
            return self.path.stat().st_size
        return self.info.get("bytes")

    def describe(self, with_hash: bool = True) -> dict:
        """What meta.json records about this source: kind, path, size and sha256 (files),
        or name, split, rows and the `datasets` fingerprint (hub)."""
        d: dict = {"source": self.spec, "kind": self.kind}
        if self.kind != "hub":
            d["path"] = str(self.path.resolve())
            d["bytes"] = self.size
            if with_hash:
                d["sha256"] = file_sha256(self.path)
        else:
            d["name"] = self.name
            d.update(self.info)
        return d


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


_SPLIT_SPEC = re.compile(r"^(?P<name>[^:\[\]]+?):(?P<split>[A-Za-z_][\w\[\]:%.+-]*)$")


def resolve_source(spec: str | os.PathLike | Source) -> Source:
    """Turn what the user typed into a `Source`, or raise UserError (missing file, unknown format)."""
    if isinstance(spec, Source):
        return spec
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"{text}: unknown file type {path.suffix or '(no suffix)'!r}; "
                            f"expected .txt, .json, .jsonl or .parquet")
        return Source(text, kind, path=path)
    if path.is_dir():
        return Source(text, "hub", path=path, name=str(path))
    m = _SPLIT_SPEC.match(text)
    if m and Path(m["name"]).expanduser().is_dir():
        p = Path(m["name"]).expanduser()
        return Source(text, "hub", path=p, name=str(p), split=m["split"])
    if path.suffix.lower() in FILE_KINDS or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise UserError(f"{text}: no such file")
    name, split = (m["name"], m["split"]) if m else (text, None)
    return Source(text, "hub", name=name, split=split)


def iter_stories(source: str | os.PathLike | Source, *, role: str = "train",
                 on_bytes: OnBytes | None = None) -> Iterator[str]:
    """Yield the normalized documents of one SOURCE, streamed.

    `role` ("train" or "val") only picks a hub dataset's default split. `on_bytes(n)` is called
    as raw input is consumed (for progress bars). Raises UserError naming the source if it is
    missing, unreadable, of the wrong shape, or holds no stories.
    """
    src = resolve_source(source)
    n = 0
    for raw in _raw_documents(src, role, on_bytes or (lambda n: None)):
        # A literal <|endoftext|> inside a document is a separator too (never part of a story).
        for piece in raw.split(EOT) if EOT in raw else (raw,):
            story = normalize(piece)
            if len(story) > MAX_DOCUMENT_CHARS:
                raise _too_long(src.path or Path(src.spec), f"story {n + 1}", "split it into stories")
            if story:
                n += 1
                yield story
    if n == 0:
        raise UserError(f"{src.spec}: no stories in it (empty, or only whitespace and {EOT} lines)")


def _raw_documents(src: Source, role: str, on_bytes: OnBytes) -> Iterator[str]:
    if src.kind == "txt":
        return _read_txt(src.path, on_bytes)
    if src.kind == "json":
        return _read_json(src.path, on_bytes)
    if src.kind == "jsonl":
        return _read_jsonl(src.path, on_bytes)
    if src.kind == "parquet":
        return _read_parquet(src.path, on_bytes)
    if src.kind == "hub":
        return _read_hub(src, role, on_bytes)
    raise AssertionError(src.kind)


# ---------------------------------------------------------------- text files

def _text_chunks(path: Path, on_bytes: OnBytes) -> Iterator[str]:
    """Decode a file as strict UTF-8 in large chunks; UserError for binary or non-UTF-8 files."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    first = True
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        while True:
            raw = f.read(CHUNK)
            final = not raw
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text (bad byte at offset {offset + e.start}); "
                                f"convert it to UTF-8") from None
            if "\x00" in text:
                raise UserError(f"{path}: looks like a binary file (it has NUL bytes), not text")
            if first and text:  # (a tiny read can decode to nothing: the mark may come in the next one)
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the story
                first = False
            offset += len(raw)
            on_bytes(len(raw))
            if text:
                yield text
            if final:
                return


def _too_long(path: Path, what: str, fix: str) -> UserError:
    return UserError(f"{path}: {what} longer than {MAX_DOCUMENT_CHARS >> 20} M characters; {fix}")


def _read_txt(path: Path, on_bytes: OnBytes) -> Iterator[str]:
    """The official format: documents separated by `<|endoftext|>` (on its own line)."""
    rest = ""
    for text in _text_chunks(path, on_bytes):
        parts = (rest + text).split(EOT)
        rest = parts.pop()
        for part in parts:
            if len(part) > MAX_DOCUMENT_CHARS:
                raise _too_long(path, "a document", f"separate the stories with {EOT} lines")
        yield from parts
        if len(rest) > MAX_DOCUMENT_CHARS:
            raise _too_long(path, "a document", f"separate the stories with {EOT} lines")
    yield rest


def _read_jsonl(path: Path, on_bytes: OnBytes) -> Iterator[str]:
    rest, lineno = "", 0
    for text in _text_chunks(path, on_bytes):
        lines = (rest + text).split("\n")
        rest = lines.pop()
        if len(rest) > MAX_DOCUMENT_CHARS or any(len(x) > MAX_DOCUMENT_CHARS for x in lines):
            raise _too_long(path, f"line {lineno + 1} or the next", "give one story per line")
        for line in lines:
            lineno += 1
            yield from _jsonl_line(path, lineno, line)
    yield from _jsonl_line(path, lineno + 1, rest)


def _jsonl_line(path: Path, lineno: int, line: str) -> Iterator[str]:
    if not line.strip():
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {lineno} is not JSON ({e.msg}); "
                        f"each line must be a string or {{\"text\": ...}}") from None
    yield _json_text(path, obj, where=f"line {lineno}", shapes='a string or {"text": ...} per line')


def _json_text(path: Path, obj, where: str, shapes: str = JSON_SHAPES) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return obj["text"]
    got = type(obj).__name__ if not isinstance(obj, dict) else f"an object with keys {sorted(obj)[:5]}"
    raise UserError(f"{path}: wrong JSON shape at {where}: found {got}; expected {shapes}")


# ---------------------------------------------------------------- streaming JSON

class _JsonStream:
    """Just enough of an incremental JSON reader to stream the elements of a big top-level array
    (or of the "texts" array in a top-level object) without loading the file."""

    def __init__(self, path: Path, on_bytes: OnBytes):
        self.path = path
        self.chunks = _text_chunks(path, on_bytes)
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self, at_least: int = CHUNK) -> bool:
        if self.eof:
            return False
        self.buf = self.buf[self.pos:]
        self.pos = 0
        got = 0
        while got < at_least:
            text = next(self.chunks, None)
            if text is None:
                self.eof = True
                break
            self.buf += text
            got += len(text)
        return got > 0

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if c == "" or c not in chars:
            self.error(f"expected {' or '.join(repr(x) for x in chars)}, found {c!r}" if c else
                       "the file ends too early")
        self.pos += 1
        return c

    def value(self):
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
                # A number or literal cut off by the buffer end would parse short: make sure it ended.
                if end < len(self.buf) or self.eof or isinstance(obj, (str, list, dict)):
                    self.pos = end
                    return obj
            except json.JSONDecodeError as e:
                cut_off = e.pos >= len(self.buf) - 8 or e.msg.startswith("Unterminated string")
                if self.eof or not cut_off:
                    self.error(e.msg)
            # The value runs past the buffer: read at least as much again (keeps re-parsing linear).
            if len(self.buf) - self.pos > MAX_DOCUMENT_CHARS:
                raise _too_long(self.path, "a JSON value", f"expected {JSON_SHAPES}, each a story")
            if not self._more(max(CHUNK, len(self.buf) - self.pos)):
                self.error("the file ends inside a value")

    def error(self, msg: str):
        raise UserError(f"{self.path}: not valid JSON ({msg}); expected {JSON_SHAPES}")


def _read_json(path: Path, on_bytes: OnBytes) -> Iterator[str]:
    js = _JsonStream(path, on_bytes)
    first = js.peek()
    if first == "":
        raise UserError(f"{path}: empty file, no stories in it")
    if first == "[":
        yield from _json_array(js, "the top-level list")
    elif first == "{":
        js.expect("{")
        found = False
        if js.peek() != "}":
            while True:
                key = js.value()
                js.expect(":")
                if key == "texts" and js.peek() == "[":
                    found = True
                    yield from _json_array(js, '"texts"')
                else:
                    js.value()  # some other field: skip it
                if js.expect(",}") == "}":
                    break
        else:
            js.expect("}")
        if not found:
            raise UserError(f'{path}: wrong JSON shape: an object without a "texts" list; expected {JSON_SHAPES}')
    else:
        raise UserError(f"{path}: wrong JSON shape: the top level is not a list or an object; "
                        f"expected {JSON_SHAPES}")
    if js.peek() != "":
        js.error("extra data after the top-level value")


def _json_array(js: _JsonStream, what: str) -> Iterator[str]:
    js.expect("[")
    if js.peek() == "]":
        js.expect("]")
        return
    i = 0
    while True:
        yield _json_text(js.path, js.value(), where=f"item {i} of {what}")
        i += 1
        if js.expect(",]") == "]":
            return


# ---------------------------------------------------------------- parquet

def _read_parquet(path: Path, on_bytes: OnBytes) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise UserError(f"{path}: no 'text' column (columns: {', '.join(names[:10])})")
    if not pa.types.is_string(pf.schema_arrow.field("text").type) and \
            not pa.types.is_large_string(pf.schema_arrow.field("text").type):
        raise UserError(f"{path}: the 'text' column holds {pf.schema_arrow.field('text').type}, not strings")
    total_rows = max(pf.metadata.num_rows, 1)
    size = path.stat().st_size
    done = 0
    for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text
        rows = done + batch.num_rows
        on_bytes(size * rows // total_rows - size * done // total_rows)
        done = rows


# ---------------------------------------------------------------- Hugging Face datasets

def load_hub_dataset(src: Source, role: str = "train"):
    """Download (once, into the `datasets` cache) and open one split of a Hugging Face dataset.

    The result is memory-mapped Arrow, so iterating over it keeps memory bounded. Local dataset
    folders (data files `load_dataset` understands, or a `save_to_disk` folder) work the same way.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - it is a dependency
        raise UserError(f"{src.spec}: reading Hugging Face datasets needs `pip install datasets`") from None

    if os.environ.get("TINYSTORIES_QUIET") == "1":
        datasets.disable_progress_bars()
    offline = src.path is None and not _hub_reachable()
    if offline:  # use a cached copy if there is one, and fail fast (not after minutes of retries) if not
        _go_offline()
    try:
        if src.path is not None and ((src.path / "dataset_dict.json").is_file()
                                     or (src.path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(src.path))  # a `save_to_disk` folder
        else:
            ds = datasets.load_dataset(src.name, split=src.split)  # downloads and caches
    except UserError:
        raise
    except Exception as e:  # network, unknown name, bad split: datasets raises many kinds
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if src.path is not None:
            raise UserError(f"{src.spec}: cannot load this folder as a dataset: {msg}") from None
        if offline:
            raise UserError(f"{src.spec}: no such file, and the Hugging Face hub is unreachable with no cached "
                            f"copy of this dataset; pass local files instead") from None
        raise UserError(f"{src.spec}: no such file, and loading it as a Hugging Face dataset failed: {msg}") from None

    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if src.split is not None:
            if src.split not in ds:
                raise UserError(f"{src.spec}: no split {src.split!r} (splits: {', '.join(splits)})")
            split = src.split
        else:
            wanted = ("train",) if role == "train" else VAL_SPLITS
            split = next((s for s in wanted if s in ds), None)
            if split is None:
                raise UserError(f"{src.spec}: no {' or '.join(wanted)} split (splits: {', '.join(splits)}); "
                                f"pick one with {src.spec}:SPLIT")
        ds = ds[split]
    else:
        split = src.split
    if "text" not in ds.column_names:
        raise UserError(f"{src.spec}: no 'text' column (columns: {', '.join(ds.column_names[:10])})")
    nbytes = sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"]))
    src.info.update({"split": split, "rows": ds.num_rows, "bytes": nbytes or None,
                     "fingerprint": getattr(ds, "_fingerprint", None)})
    return ds


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub? (Behind a proxy we cannot tell, so assume yes.)"""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # The libraries read these at import time; set the already-imported copies too.
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


# A line-per-row dataset (the `text` builder on .txt files, e.g. TinyStoriesInstruct) shows an
# <|endoftext|> row within its first few hundred rows; a document-per-row dataset never does.
LINE_MODE_PROBE = 2000


def _read_hub(src: Source, role: str, on_bytes: OnBytes) -> Iterator[str]:
    ds = load_hub_dataset(src, role)
    rows = (t for batch in ds.select_columns(["text"]).iter(batch_size=1000) for t in batch["text"])
    yield from regroup_rows(rows, on_bytes)


def regroup_rows(rows: Iterable[str | None], on_bytes: OnBytes | None = None) -> Iterator[str]:
    """Documents from dataset rows: each row is a document, unless the rows are single lines with
    `<|endoftext|>` rows between documents, in which case the lines are joined back up."""
    on_bytes = on_bytes or (lambda n: None)
    it = iter(rows)
    head: list[str] = []
    line_mode = False
    for text in it:
        text = text or ""
        head.append(text)
        if text.strip() == EOT:
            line_mode = True
            break
        if len(head) >= LINE_MODE_PROBE:
            break
    if not line_mode:
        for text in head:
            on_bytes(len(text.encode("utf-8")))
            yield text
        for text in it:
            text = text or ""
            on_bytes(len(text.encode("utf-8")))
            yield text
        return
    lines: list[str] = []
    for text in _chain(head, it):
        text = text or ""
        on_bytes(len(text.encode("utf-8")) + 1)
        if EOT in text:  # usually the whole row; the split keeps any text around it
            parts = text.split(EOT)
            lines.append(parts[0])
            yield "\n".join(lines)
            yield from parts[1:-1]
            lines = [parts[-1]]
        else:
            lines.append(text)
    yield "\n".join(lines)


def _chain(a: list, b: Iterator) -> Iterator:
    yield from a
    yield from b
