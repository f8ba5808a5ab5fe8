"""
llm.c token shards: their files (and llm.c's tokenizer file), read and written, and a lab's own
split of them.

A shard: a header of 256 int32 (magic 20240520, version 1, token count), then the tokens as
little-endian uint16. Names with "val" are val, with "confirm" confirm (else confirm = val's
second half), the rest train; a gpt2_tokenizer.bin or tokenizer.bin beside them gives decode and
token_bytes.

A lab's split of shards (`load_keyed_shards`): every shard pooled (a `*val*` shard is as readable
as the rest), cut into documents at each end-of-text id, each document drawn train/dev/val/confirm
85/5/5/5 by a generator seeded from the key. It is streamed a chunk of tokens at a time into four
shards in a cache entry, and read back as memmaps: memory stays one chunk's worth at any size
(fineweb10B is ~100 shards of 100M tokens; pooled in memory, with a document id per token, its
split took ~20 bytes per token). The entry is keyed by the key's own hash and the shards' contents.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from trainer.tokenizer import Tokenizer

SHARD_MAGIC, SHARD_VERSION = 20240520, 1       # llm.c dev/data/data_common.py
TOKENIZER_MAGIC = 20240328                      # llm.c gpt2_tokenizer.bin
TOKENIZER_FILES = ("gpt2_tokenizer.bin", "tokenizer.bin")
HEADER_BYTES = 256 * 4
GPT2_VOCAB, GPT2_EOT = 50257, 50256
SPLITS = ("train", "val", "confirm")
KEYED_SPLITS = SPLITS + ("dev",)
BUCKETS = ("train", "dev", "val", "confirm")
KEYED_CUTS = (0.85, 0.90, 0.95)  # a document's draw below 0.85: train, below 0.90: dev, 0.95: val, else confirm
CHUNK = 1 << 22                  # tokens streamed at a time (~100 MB of working arrays)
KEYED_FORMAT = 2                 # bump when a keyed entry would change for the same shards and key


# -----------------------------------------------------------------------------
# files

def find_shards(source: str) -> list[Path] | None:
    """The .bin shard files `source` names (a glob, a .bin file, a folder of .bin files), else None."""
    if source == "pystdlib":
        return None
    if any(c in source for c in "*?["):
        matched = sorted(Path(p) for p in glob.glob(source) if Path(p).name not in TOKENIZER_FILES)
        if not matched:
            raise ValueError(f"data glob {source} matches no files")
        files = [p for p in matched if p.suffix == ".bin" and p.is_file()]  # (as a folder's: its .bin files)
        if not files:  # ("*" over a lab's root was called shards)
            raise ValueError(f"data glob {source} matches no .bin file: a glob names llm.c shards; name text as "
                             "a file or a folder")
        return files
    path = Path(source)
    if path.is_file():
        return [path] if path.suffix == ".bin" else None
    if path.is_dir():
        return sorted(p for p in path.glob("*.bin") if p.name not in TOKENIZER_FILES) or None
    return None


def shard_split(path: Path) -> str:
    words = set(re.split(r"[^a-z0-9]+", path.name.lower()))
    return "confirm" if "confirm" in words else "val" if words & {"val", "valid", "validation"} else "train"


def read_llmc_shard(path) -> np.ndarray:
    """The tokens of a shard as a read-only uint16 memmap, after checking its header and size."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"shard {path} does not exist")
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=256) if size >= HEADER_BYTES else None
    if header is None or header[0] != SHARD_MAGIC:
        raise ValueError(f"shard {path}: not an llm.c token shard (magic "
                         f"{None if header is None else int(header[0])}, expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"shard {path}: version {header[1]}, expected {SHARD_VERSION} (uint16 tokens)")
    count = int(header[2])
    if size != HEADER_BYTES + 2 * count:
        raise ValueError(f"shard {path}: file size {size} != 1024 + 2 * {count} tokens in its header")
    if count == 0:
        return np.zeros(0, dtype="<u2")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def chain(arrays: list[np.ndarray]) -> np.ndarray | Chain:
    """Several shards' tokens as one sequence, none copied: one shard is its memmap, several a Chain."""
    arrays = [a for a in arrays if len(a)]
    return np.zeros(0, dtype="<u2") if not arrays else arrays[0] if len(arrays) == 1 else Chain(arrays)


class Chain:
    """Read-only shards read as one 1-D token array, without joining them: fineweb10B's train split
    is 103 shards, 19 GB, which np.concatenate would copy into memory at every start. It answers
    what the trainer and the harness ask of a split: len, a slice (a Chain or a memmap, still no
    copy), an array of positions (the tokens, gathered across shards), max and np.asarray."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # (len(parts) + 1,) part k is [starts[k], starts[k+1])
        self.dtype = np.result_type(*parts)
        self.shape, self.ndim = (int(self.starts[-1]),), 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            a, b, step = index.indices(len(self))
            if step != 1:
                raise IndexError("a chain of shards is sliced with step 1 only")
            return chain([p[max(a - s, 0):max(b - s, 0)] for p, s in zip(self.parts, self.starts)])
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise IndexError(f"a chain of shards is indexed by integers or a slice, not {index.dtype}")
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for a chain of {len(self)} tokens")
        part = np.searchsorted(self.starts, index, side="right") - 1  # same shape as index
        out = np.empty(index.shape, dtype=self.dtype)
        for k in np.flatnonzero(np.bincount(part.ravel(), minlength=len(self.parts))):  # the parts it reads
            at = part == k
            out[at] = self.parts[k][index[at] - self.starts[k]]
        return out[()] if out.ndim == 0 else out

    def max(self):
        return max(p.max() for p in self.parts)

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.parts)
        return whole if dtype is None else whole.astype(dtype)


def temp_beside(path: Path) -> Path:
    """A unique name beside `path` to write under, then rename: readers never see half of it. One
    (a file or a folder of shards) no one has written in for an hour was left by a killed process
    (46 MB a kill, tokenizing), and goes."""
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            folder = left.is_dir() and not left.is_symlink()
            if time.time() - max(p.lstat().st_mtime for p in [left, *(left.iterdir() if folder else [])]) > 3600:
                shutil.rmtree(left) if folder else left.unlink()
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


class ShardWriter:
    """Appends tokens to a new shard a chunk at a time; the header's count is written on close,
    and the file appears under its name only then (a reader never sees half a shard)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_beside(self.path)
        self.file, self.count, self.sha, self.max_id = open(self.tmp, "wb"), 0, hashlib.sha256(), -1
        self.file.write(bytes(HEADER_BYTES))

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.dtype != np.uint16 and tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
            raise ValueError(f"shard {self.path}: llm.c shards hold uint16 tokens; got ids up to {tokens.max()}")
        body = tokens.astype("<u2").tobytes()
        self.file.write(body)
        self.sha.update(body)  # = data.fingerprint of the whole split
        self.count += tokens.size
        self.max_id = max(self.max_id, int(tokens.max())) if tokens.size else self.max_id

    def close(self) -> str:
        header = np.zeros(256, dtype="<i4")
        header[:3] = SHARD_MAGIC, SHARD_VERSION, self.count
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.sha.hexdigest()

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: Path, content) -> None:
    """Write a file whole, or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(content) if isinstance(content, bytes) else content(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_llmc_shard(path, tokens) -> None:
    writer = ShardWriter(path)
    try:
        for a in range(0, max(len(tokens), 1), CHUNK):  # a memmap of any size, a chunk at a time
            writer.write(tokens[a:a + CHUNK])
        writer.close()
    except BaseException:
        writer.abandon()
        raise


def write_llmc_tokenizer(path, tok: Tokenizer) -> None:
    """llm.c's decode-only file: version 2 records the eot id; bytes has no special, so version 1."""
    if any(len(b) > 255 for b in tok.id_bytes):
        raise ValueError(f"tokenizer {tok.name}: a token longer than 255 bytes does not fit llm.c's format")
    header = np.zeros(256, dtype="<i4")
    header[:4] = TOKENIZER_MAGIC, (2 if tok.specials else 1), tok.vocab_size, (tok.eot if tok.specials else 0)
    body = b"".join(bytes([len(b)]) + b for b in tok.id_bytes)
    atomic_write(Path(path), header.tobytes() + body)


def read_llmc_tokenizer(path) -> Tokenizer:
    data = Path(path).read_bytes()
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4") if len(data) >= HEADER_BYTES else None
    if header is None or header[0] != TOKENIZER_MAGIC or header[1] not in (1, 2):
        raise ValueError(f"tokenizer file {path}: not an llm.c tokenizer (magic {TOKENIZER_MAGIC}, version 1 or 2)")
    vocab, pos, id_bytes = int(header[2]), HEADER_BYTES, []
    for _ in range(vocab):
        if pos >= len(data):
            raise ValueError(f"tokenizer file {path}: truncated after {len(id_bytes)} of {vocab} tokens")
        n = data[pos]
        id_bytes.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    # version 1 has no eot field; llm.c then assumes GPT-2's 50256
    eot = int(header[3]) if header[1] == 2 else (GPT2_EOT if vocab == GPT2_VOCAB else None)
    return Tokenizer(f"llm.c:{Path(path).name}", id_bytes, eot, specials=() if eot is None else [eot])


def shards_tokenizer(files: list[Path]) -> Tokenizer | None:
    """The llm.c tokenizer file beside the shards, if there is one."""
    found = next((files[0].parent / n for n in TOKENIZER_FILES if (files[0].parent / n).is_file()), None)
    return read_llmc_tokenizer(found) if found else None


def check_vocab(source, arrays: dict, vocab: int) -> None:
    for s, a in arrays.items():
        if len(a) and int(a.max()) >= vocab:
            raise ValueError(f"shards {source}: {s} holds token id {int(a.max())} >= vocab size {vocab}")


# -----------------------------------------------------------------------------
# a lab's own split of shards

def load_keyed_shards(source: str, files: list[Path], key: bytes, tok: Tokenizer | None, root: Path,
                      say) -> tuple[dict, dict]:
    """({split: memmap} for train/dev/val/confirm, the entry's meta), made once per key and shards;
    `tok`: shards_tokenizer(files)."""
    tokens = {f: read_llmc_shard(f) for f in files}  # every header is checked before anything else
    pool = [f for s in SPLITS for f in files if shard_split(f) == s]  # train shards, then val, then confirm
    eot = tok.eot if tok is not None and tok.eot is not None else \
        0 if tok is not None and tok.vocab_size == 256 else GPT2_EOT  # bytes' separator is byte 0
    entry = root / "data" / keyed_entry_name(pool, key, eot)
    meta = read_keyed_entry(entry)
    if meta is None:
        say(f"drawing a lab's split of {len(pool)} shards ({sum(len(tokens[f]) for f in pool):,} tokens) into {entry}")
        meta = write_keyed_split([tokens[f] for f in pool], key, eot, entry)
    arrays = {s: read_llmc_shard(entry / f"{s}.bin") for s in KEYED_SPLITS}
    if empty := [s for s, a in arrays.items() if not len(a)]:
        raise ValueError(f"shards {source}: too few documents (end-of-text id {eot}) for a lab's split: "
                         f"no {', '.join(empty)} text")
    vocab = tok.vocab_size if tok else GPT2_VOCAB
    for s, n in meta["max_id"].items():  # (counted while drawing: no pass over the splits here)
        if n >= vocab:
            raise ValueError(f"shards {source}: {s} holds token id {n} >= vocab size {vocab}")
    return arrays, {**meta, "cache": str(entry)}


def keyed_entry_name(pool: list[Path], key: bytes, eot: int) -> str:
    """The shards' contents (hashed a file at a time), the end-of-text id that cuts them into
    documents (a tokenizer file put beside them changes it) and the key's own hash, never the key."""
    contents = []
    for f in pool:
        with open(f, "rb") as fh:
            contents.append(hashlib.file_digest(fh, "sha256").hexdigest())
    key_id = hmac.new(key, b"nanolab keyed shards", hashlib.sha256).hexdigest()
    spec = json.dumps({"format": KEYED_FORMAT, "key": key_id, "eot": eot, "shards": contents})
    return "keyed-shards-" + hashlib.sha256(spec.encode()).hexdigest()[:24]


def read_keyed_entry(entry: Path) -> dict | None:
    """The entry's meta, or None when it is missing or does not match its shards (then it is redrawn)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if all(len(read_llmc_shard(entry / f"{s}.bin")) == meta["tokens"][s] for s in KEYED_SPLITS):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_keyed_split(pool: list[np.ndarray], key: bytes, eot: int, entry: Path) -> dict:
    """Stream the pooled tokens through draw_documents into one shard per split; meta.json last,
    as the mark that the entry is whole."""
    tmp = temp_beside(entry)
    writers = {}
    try:
        writers = {s: ShardWriter(tmp / f"{s}.bin") for s in KEYED_SPLITS}
        for part, bucket in draw_documents(pool, key, eot):
            for i, s in enumerate(BUCKETS):
                writers[s].write(part[bucket == i])
        fingerprints = {s: w.close() for s, w in writers.items()}
        meta = {"format": KEYED_FORMAT, "eot": eot, "tokens": {s: w.count for s, w in writers.items()},
                "max_id": {s: w.max_id for s, w in writers.items()}, "fingerprints": fingerprints}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, entry)
        except OSError:  # an entry is there: the same, drawn meanwhile by another process, or a broken one
            if read_keyed_entry(entry) is None:
                shutil.rmtree(entry, ignore_errors=True)
                os.replace(tmp, entry)
        return meta
    except OSError as e:
        raise ValueError(f"cannot write a lab's split of shards at {entry} ({e})") from e
    finally:
        for w in writers.values():
            if not w.file.closed:
                w.abandon()
        shutil.rmtree(tmp, ignore_errors=True)


def draw_documents(pool: list[np.ndarray], key: bytes, eot: int):
    """Yield (tokens, bucket) a chunk at a time: each token's index in BUCKETS, by its document's
    draw. Document d is the tokens after the d-th end-of-text id (d = 0: before the first); its
    draw is the d-th number of a generator seeded from the key, so the split is the same whatever
    the chunking."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    doc_now, first, drawn = 0, 0, np.zeros(0)  # the current document's id; drawn[i] is document (first + i)'s draw
    for tokens in pool:
        for a in range(0, len(tokens), CHUNK):
            part = np.asarray(tokens[a:a + CHUNK])
            doc = doc_now + np.cumsum(part == eot)                  # (n,) the document of each token
            drawn = np.concatenate([drawn[doc_now - first:], rng.random(int(doc[-1]) + 1 - first - len(drawn))])
            first, doc_now = doc_now, int(doc[-1])
            yield part, np.searchsorted(KEYED_CUTS, drawn[doc - first], side="right")
