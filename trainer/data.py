"""
Data: a text corpus or llm.c token shards in; three 1-D token arrays (train / val / confirm),
a tokenizer and a per-token byte count (for val_bpb) out. Nothing is ever downloaded.

Sources
- "pystdlib" (default): the running interpreter's standard-library .py sources plus the
  pydoc_data help topics, ~30 MB, always present.
- a text file or a folder of text files (binary files, those with a NUL byte, are skipped).
- llm.c .bin token shards (a .bin file, a folder with .bin files at its top, or a glob): header
  of 256 int32 (magic 20240520, version 1, token count), then the tokens as little-endian
  uint16. Names with "val" are val, with "confirm" confirm (else confirm = val's second half),
  the rest train; a gpt2_tokenizer.bin or tokenizer.bin beside them gives decode + token_bytes.
Text is split by document: a fixed hash of each document's relative path puts ~90% in train,
5% in val, 5% in confirm, so adding a file never moves another one. A single file (or a
folder too small for every split to get a file) is split into contiguous chunks instead:
the last 5% confirm, the 5% before it val.
Every document is prefixed with the tokenizer's end-of-text token, like llm.c.

Tokenizers: "bytes" (vocab 256, the separator is byte 0) and "bpe:N", a byte-level BPE of
N ids trained by `tokenizers` on the train split only (the separator is its own id, N-1).

Prepared arrays are cached under NANOLAB_CACHE (default ~/.cache/nanolab)/data/<key>, where
the key hashes the documents' names and contents, the tokenizer spec and FORMAT_VERSION; a
second load re-reads and hashes the source (content, not mtimes: worktrees that copy the same
files share one entry, and a touched file costs nothing) and loads the arrays.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1  # bump when the prepared arrays would change for the same input
SPLITS = ("train", "val", "confirm")
SHARD_MAGIC, SHARD_VERSION = 20240520, 1       # llm.c dev/data/data_common.py
TOKENIZER_MAGIC = 20240328                      # llm.c gpt2_tokenizer.bin
TOKENIZER_FILES = ("gpt2_tokenizer.bin", "tokenizer.bin")
HEADER_BYTES = 256 * 4
GPT2_VOCAB, GPT2_EOT = 50257, 50256
EOT_TEXT = "<|endoftext|>"


# -----------------------------------------------------------------------------
# the dataset

@dataclass
class Dataset:
    name: str
    source: str
    train: np.ndarray
    val: np.ndarray
    confirm: np.ndarray
    vocab_size: int
    token_bytes: np.ndarray | None   # bytes of each id (int64); None: bpb unavailable
    tokenizer: Tokenizer | None      # None for shards with no tokenizer file beside them
    fingerprints: dict               # split -> sha256 of that split's token bytes
    documents: dict                  # split -> names of the documents (or shard files) in it
    split_method: str                # how the splits were made, in words
    cache_path: str | None = None

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def describe(self) -> dict:
        nbytes = {s: (None if self.token_bytes is None else int(self.token_bytes[self.split(s)].sum()))
                  for s in SPLITS}
        return {"name": self.name, "source": self.source,
                "tokenizer": self.tokenizer.name if self.tokenizer else None,
                "vocab_size": self.vocab_size, "split": self.split_method,
                "tokens": {s: len(self.split(s)) for s in SPLITS},
                "bytes": nbytes, "files": {s: len(self.documents[s]) for s in SPLITS},
                "fingerprints": dict(self.fingerprints),
                "val_bpb": "available" if self.token_bytes is not None else
                           "unavailable: no llm.c tokenizer file beside the shards",
                "cache": self.cache_path}


def load_dataset(source: str = "pystdlib", tokenizer: str = "bytes", cache_dir: str | None = None,
                 quiet: bool = True) -> Dataset:
    """Load (or prepare and cache) a dataset. Bad input raises ValueError with one line."""
    say = (lambda msg: None) if quiet else (lambda msg: print(f"data: {msg}", file=sys.stderr))
    spec = parse_tokenizer_spec(tokenizer)
    shards = find_shards(source)
    if shards is not None:
        if spec != "bytes":  # "bytes" is the default, so it is accepted and means "as stored"
            raise ValueError(f"tokenizer {tokenizer!r} does not apply to llm.c shards: they are already tokenized")
        return load_shards(source, shards)
    name, docs, method = read_text_source(source)
    say(f"{name}: {sum(len(d) for d in docs.values())} documents, split {method}")
    return prepare_text(name, source, docs, method, spec, cache_root(cache_dir), say)


def parse_tokenizer_spec(spec: str) -> str:
    m = re.fullmatch(r"bpe:(\d+)", spec) if isinstance(spec, str) else None
    if spec == "bytes" or (m and int(m.group(1)) >= 257):
        return spec
    if m:  # 256 byte ids + the end-of-text id is the smallest byte-level BPE
        raise ValueError(f"tokenizer {spec!r}: a bpe vocabulary needs at least 257 ids")
    raise ValueError(f"unknown tokenizer {spec!r}: use 'bytes' or 'bpe:N' (N >= 257)")


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("NANOLAB_CACHE") or Path.home() / ".cache" / "nanolab")


# -----------------------------------------------------------------------------
# text sources -> {split: [(name, text), ...]}

def read_text_source(source: str) -> tuple[str, dict, str]:
    if source == "pystdlib":
        return "pystdlib", split_by_hash(stdlib_documents()), "by sha256 of relative path (90/5/5)"
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data path {source} does not exist")
    if path.is_file():
        text = read_text(path)
        if text is None or not text.strip():
            raise ValueError(f"data file {source} is empty or not text")
        return path.name, split_by_chunks(path.name, text), "contiguous chunks (90/5/5)"
    docs = folder_documents(path)
    if not docs:
        raise ValueError(f"data folder {source} holds no text files")
    splits = split_by_hash(docs)
    if all(splits.values()):
        return path.name, splits, "by sha256 of relative path (90/5/5)"
    # too few files for every split to get one: fall back to chunks of the concatenation
    text = "".join(t for _, t in docs)
    return path.name, split_by_chunks(path.name, text), f"contiguous chunks (90/5/5) of all {len(docs)} files"


def stdlib_documents() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        for f in filenames:
            rel = (Path(dirpath) / f).relative_to(root).as_posix()
            # topics.py is skipped: its topics come below one by one, and must not repeat in train
            if f.endswith(".py") and rel != "pydoc_data/topics.py":
                docs.append((rel, (Path(dirpath) / f).read_bytes().decode("utf-8", errors="replace")))
    from pydoc_data.topics import topics
    docs += [(f"pydoc_data/topics/{k}", v) for k, v in topics.items()]
    return sorted(docs)


def folder_documents(root: Path) -> list[tuple[str, str]]:
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            text = None if f.startswith(".") else read_text(Path(dirpath) / f)
            if text:
                docs.append(((Path(dirpath) / f).relative_to(root).as_posix(), text))
    return sorted(docs)


def read_text(path: Path) -> str | None:
    """A file's text (undecodable bytes replaced), or None for binary files (a NUL byte, as git does)."""
    data = path.read_bytes()
    return None if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def split_of(name: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "confirm"


def split_by_hash(docs: list[tuple[str, str]]) -> dict:
    splits = {s: [] for s in SPLITS}
    for name, text in docs:
        splits[split_of(name)].append((name, text))
    return splits


def split_by_chunks(name: str, text: str) -> dict:
    n = len(text)
    a = _line_cut(text, int(0.90 * n), int(0.95 * n))
    b = _line_cut(text, int(0.95 * n), n - 1)
    parts = dict(zip(SPLITS, (text[:a], text[a:b], text[b:])))
    if not all(parts.values()):
        raise ValueError(f"data {name} is too small to split into train/val/confirm ({n} characters)")
    return {s: [(f"{name}[{s}]", t)] for s, t in parts.items()}


def _line_cut(text: str, i: int, limit: int) -> int:
    j = text.find("\n", i, limit)  # cut after a newline when one is near, so lines stay whole
    return i if j < 0 else j + 1


# -----------------------------------------------------------------------------
# tokenizers

class Tokenizer:
    """Ids <-> text through a table of each id's raw bytes; encoding by bytes or by a trained BPE."""

    def __init__(self, name: str, id_bytes: list[bytes], eot: int | None, specials=(), bpe=None):
        self.name, self.id_bytes, self.eot, self.specials, self.bpe = name, id_bytes, eot, tuple(specials), bpe
        self.vocab_size = len(id_bytes)

    def encode(self, text: str) -> list[int]:
        if self.name == "bytes":
            return list(text.encode("utf-8"))
        if self.bpe is None:
            raise ValueError(f"tokenizer {self.name} is decode-only (llm.c tokenizer files hold no merges)")
        return self.bpe.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return b"".join(self.id_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """Raw byte length of each id (not a str round-trip: ids may hold part of a character)."""
        tb = np.array([len(b) for b in self.id_bytes], dtype=np.int64)
        tb[list(self.specials)] = 0  # specials stand for no text: excluded from bpb's byte count
        return tb

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """One token stream: every document prefixed by the end-of-text id."""
        if self.name == "bytes":
            data = b"".join(b"\0" + t.encode("utf-8") for t in texts)
            return np.frombuffer(data, dtype=np.uint8).astype(token_dtype(256))
        ids = [[self.eot] + e.ids for e in self.bpe.encode_batch(texts, add_special_tokens=False)]
        return np.fromiter((i for doc in ids for i in doc), dtype=token_dtype(self.vocab_size))


def byte_tokenizer() -> Tokenizer:
    # the separator is byte 0 (absent from text); it is a real byte, so token_bytes is all 1
    return Tokenizer("bytes", [bytes([i]) for i in range(256)], eot=0)


def bpe_tokenizer(spec: str, hf) -> Tokenizer:
    """Wrap a trained `tokenizers` byte-level BPE; the end-of-text id is appended after its ids."""
    from_char = {c: b for b, c in _byte_to_char().items()}
    id_bytes = [bytes(from_char[c] for c in hf.id_to_token(i)) for i in range(hf.get_vocab_size())]
    # eot lives outside the HF model, so "<|endoftext|>" inside a text encodes as plain text
    return Tokenizer(spec, id_bytes + [EOT_TEXT.encode()], eot=len(id_bytes), specials=[len(id_bytes)], bpe=hf)


def train_bpe(spec: str, texts: list[str]):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(spec.split(":")[1]) - 1,  # minus the end-of-text id we add
        min_frequency=2, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=255)  # llm.c tokenizer files store each token's length in one byte
    hf.train_from_iterator(texts, trainer, length=len(texts))
    return hf


def _byte_to_char() -> dict:
    # GPT-2's byte -> printable char map, which `tokenizers`' ByteLevel uses: printable latin-1
    # bytes stand for themselves, the 68 others for chr(256), chr(257), ... in byte order
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in keep}
    for k, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + k)
    return table


def token_dtype(vocab_size: int):
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<i4")


def fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens).view(np.uint8)).hexdigest()


# -----------------------------------------------------------------------------
# text -> tokens, through the cache

def prepare_text(name, source, docs, method, spec, root: Path, say) -> Dataset:
    key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "tokenizer": spec, "split": method,
                                     "docs": {s: [(n, hashlib.sha256(t.encode()).hexdigest()) for n, t in d]
                                              for s, d in docs.items()}}).encode()).hexdigest()[:24]
    entry = root / "data" / key
    label = (f"{sysconfig.get_paths()['stdlib']} + pydoc_data.topics" if source == "pystdlib"
             else str(Path(source).resolve()))
    cached = read_cache(entry, spec)
    if cached is not None:
        say(f"cache hit {entry}")
        meta, arrays, tok = cached
    else:
        tok = load_or_train_tokenizer(entry, spec, [t for _, t in docs["train"]], say)
        say(f"tokenizing with {spec}")
        arrays = {s: tok.encode_documents([t for _, t in docs[s]]) for s in SPLITS}
        meta = {"format": FORMAT_VERSION, "tokenizer": spec, "vocab_size": tok.vocab_size, "split": method,
                "documents": {s: [n for n, _ in docs[s]] for s in SPLITS},
                "fingerprints": {s: fingerprint(a) for s, a in arrays.items()}}
        entry = write_cache(entry, arrays, meta, say)
    if source == "pystdlib":
        method += f", Python {sys.version.split()[0]}"
    return Dataset(name=name, source=label, **arrays, vocab_size=meta["vocab_size"],
                   token_bytes=tok.token_bytes(), tokenizer=tok, fingerprints=meta["fingerprints"],
                   documents=meta["documents"], split_method=method,
                   cache_path=str(entry) if entry else None)


def load_or_train_tokenizer(entry: Path, spec: str, train_texts: list[str], say) -> Tokenizer:
    if spec == "bytes":
        return byte_tokenizer()
    from tokenizers import Tokenizer as HFTokenizer
    path = entry / "tokenizer.json"
    if path.is_file():  # a tokenizer that survived a corrupt entry is reused, not retrained
        try:
            return bpe_tokenizer(spec, HFTokenizer.from_file(str(path)))
        except Exception as e:  # noqa: BLE001 (tokenizers raises plain Exception on a bad file)
            say(f"cached tokenizer unreadable ({e}); retraining")
    say(f"training {spec} on {sum(map(len, train_texts)):,} characters of the train split")
    hf = train_bpe(spec, train_texts)
    try:
        atomic_write(entry / "tokenizer.json", hf.to_str().encode())
    except OSError as e:
        say(f"cannot cache the tokenizer ({e})")
    return bpe_tokenizer(spec, hf)


def read_cache(entry: Path, spec: str):
    """(meta, arrays, tokenizer), or None when the entry is missing or corrupt (then it is rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {s: np.load(entry / f"{s}.npy", allow_pickle=False) for s in SPLITS}
        if meta["format"] != FORMAT_VERSION or any(fingerprint(arrays[s]) != meta["fingerprints"][s]
                                                   for s in SPLITS):
            return None
        tok = byte_tokenizer()
        if spec != "bytes":
            from tokenizers import Tokenizer as HFTokenizer
            tok = bpe_tokenizer(spec, HFTokenizer.from_file(str(entry / "tokenizer.json")))
        return (meta, arrays, tok) if tok.vocab_size == meta["vocab_size"] else None
    except Exception:  # noqa: BLE001 (any unreadable piece, whatever it raises, means: rebuild)
        return None


def write_cache(entry: Path, arrays: dict, meta: dict, say) -> Path | None:
    """Arrays first, meta.json last: meta is the commit mark read_cache looks for."""
    try:
        for s, a in arrays.items():
            atomic_write(entry / f"{s}.npy", lambda f, a=a: np.save(f, a, allow_pickle=False))
        atomic_write(entry / "meta.json", json.dumps(meta).encode())
        return entry
    except OSError as e:  # an unwritable cache slows the next load, nothing more
        say(f"cannot write the cache at {entry} ({e}); continuing without it")
        return None


def atomic_write(path: Path, content) -> None:
    """Write to a unique temp file, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content) if isinstance(content, bytes) else content(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -----------------------------------------------------------------------------
# llm.c token shards and tokenizer files

def write_llmc_shard(path, tokens) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise ValueError(f"shard {path}: llm.c shards hold uint16 tokens; got ids up to {tokens.max()}")
    header = np.zeros(256, dtype="<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    atomic_write(Path(path), header.tobytes() + tokens.astype("<u2").tobytes())


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


def find_shards(source: str) -> list[Path] | None:
    """The .bin shard files `source` names (a glob, a .bin file, a folder of .bin files), else None."""
    if source == "pystdlib":
        return None
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(source) if Path(p).name not in TOKENIZER_FILES)
        if not files:
            raise ValueError(f"data glob {source} matches no files")
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


def load_shards(source: str, files: list[Path]) -> Dataset:
    tokens = {f: read_llmc_shard(f) for f in files}  # every header is checked before anything else
    groups = {s: [f for f in files if shard_split(f) == s] for s in SPLITS}
    if not groups["val"]:
        raise ValueError(f"shards {source}: no file with 'val' in its name (llm.c names them *_val_*.bin)")
    if not groups["train"]:
        raise ValueError(f"shards {source}: no training shard (a .bin file without 'val' in its name)")
    arrays = {s: _concat([tokens[f] for f in fs]) for s, fs in groups.items()}
    method = "by file name (*val* -> val"
    if not groups["confirm"]:
        # llm.c ships one val shard; its second half is held out as the confirm split
        half = len(arrays["val"]) // 2
        arrays["val"], arrays["confirm"] = arrays["val"][:half], arrays["val"][half:]
        groups["confirm"] = groups["val"]
        method += ", confirm = its second half)"
    else:
        method += ", *confirm* -> confirm)"
    tok_file = next((files[0].parent / n for n in TOKENIZER_FILES if (files[0].parent / n).is_file()), None)
    tok = read_llmc_tokenizer(tok_file) if tok_file else None
    vocab = tok.vocab_size if tok else GPT2_VOCAB
    for s, a in arrays.items():
        if len(a) and int(a.max()) >= vocab:
            raise ValueError(f"shards {source}: {s} holds token id {int(a.max())} >= vocab size {vocab}")
    return Dataset(name=Path(files[0]).parent.name or "shards", source=str(source), **arrays, vocab_size=vocab,
                   token_bytes=tok.token_bytes() if tok else None, tokenizer=tok,
                   fingerprints={s: fingerprint(a) for s, a in arrays.items()},
                   documents={s: [f.name for f in fs] for s, fs in groups.items()}, split_method=method)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    # one shard stays a memmap (no copy); several are read into memory
    if not arrays:
        return np.zeros(0, dtype="<u2")
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def export_llmc(ds: Dataset, out_dir) -> list[Path]:
    """train/val/confirm as llm.c shards, plus tokenizer.bin, so loading DIR gives the same splits."""
    out = Path(out_dir)
    if ds.vocab_size > 65536:
        raise ValueError(f"export: llm.c shards hold uint16 tokens; vocab {ds.vocab_size} does not fit")
    paths = [out / f"{s}_000000.bin" for s in SPLITS]
    for s, p in zip(SPLITS, paths):
        write_llmc_shard(p, ds.split(s))
    if ds.tokenizer is not None:
        write_llmc_tokenizer(out / "tokenizer.bin", ds.tokenizer)
        paths.append(out / "tokenizer.bin")
    return paths


# -----------------------------------------------------------------------------
# batches

def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int):
    """Random windows; batch k is a pure function of (seed, k), so a resumed run needs only k."""
    n_starts = len(tokens) - seq_len  # a window holds seq_len + 1 tokens
    if n_starts < 1:
        raise ValueError(f"get_batch: {len(tokens)} tokens are too few for seq_len {seq_len}")
    starts = np.random.default_rng([seed, step]).integers(0, n_starts, size=batch_size)
    buf = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)  # (B, T+1)
    return np.ascontiguousarray(buf[:, :-1]), np.ascontiguousarray(buf[:, 1:])


def eval_windows(tokens: np.ndarray, n_tokens: int, seq_len: int) -> np.ndarray:
    """Start offsets of the fixed evaluation windows: n_tokens // seq_len windows spread evenly
    over the whole split (not its first files), never overlapping. The same for every run."""
    n_windows = min(n_tokens, len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"eval_batches: {len(tokens)} tokens (n_tokens {n_tokens}) hold no window of {seq_len}")
    last = len(tokens) - seq_len - 1  # a window reads seq_len + 1 tokens
    return np.linspace(0, last, n_windows).astype(np.int64)


def eval_batches(tokens: np.ndarray, n_tokens: int, batch_size: int, seq_len: int):
    """(x, y) batches over eval_windows; the last batch may have fewer rows."""
    starts = eval_windows(tokens, n_tokens, seq_len)

    def batches():
        for w in range(0, len(starts), batch_size):
            rows = starts[w:w + batch_size, None] + np.arange(seq_len + 1)
            buf = np.asarray(tokens[rows], dtype=np.int64)             # (rows, T+1)
            yield np.ascontiguousarray(buf[:, :-1]), np.ascontiguousarray(buf[:, 1:])
    return batches()


# -----------------------------------------------------------------------------
# the `data` subcommand

DATA_EPILOG = """examples:
  python -m trainer data                                   # pystdlib, bytes
  python -m trainer data --data ~/texts --tokenizer bpe:4096
  python -m trainer data --tokenizer bpe:8192 --export-bin out/pystdlib_bpe8k
  python -m trainer data --data 'fineweb10B/fineweb_*.bin'  # llm.c shards"""


def add_data_arguments(parser: argparse.ArgumentParser, export: bool = True) -> None:
    """--data, --tokenizer, --cache-dir (for train/eval too) and, for `data`, --export-bin."""
    parser.add_argument("--data", default="pystdlib", metavar="SRC",
                        help="'pystdlib' (default: this Python's stdlib sources + help topics), a text "
                             "file or folder, or llm.c .bin shards (a file, folder or quoted glob)")
    parser.add_argument("--tokenizer", default="bytes", metavar="T",
                        help="'bytes' (vocab 256, default) or 'bpe:N' (byte-level BPE with N ids, trained "
                             "on the train split); llm.c shards keep their own")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="where prepared data is cached (default: $NANOLAB_CACHE or ~/.cache/nanolab)")
    if export:
        parser.add_argument("--export-bin", default=None, metavar="DIR",
                            help="also write train/val/confirm as llm.c .bin shards (+ tokenizer.bin) in DIR")


def run_data(args) -> int:
    try:
        ds = load_dataset(args.data, args.tokenizer, args.cache_dir, quiet=getattr(args, "quiet", False))
        print(format_description(ds.describe()))
        if getattr(args, "export_bin", None):
            for p in export_llmc(ds, args.export_bin):
                print(f"wrote {p}")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def format_description(d: dict) -> str:
    lines = [f"data       {d['name']}  ({d['source']})",
             f"tokenizer  {d['tokenizer'] or 'none'}  vocab {d['vocab_size']}  val_bpb {d['val_bpb']}",
             f"split      {d['split']}",
             f"cache      {d['cache'] or '-'}",
             f"{'split':<8} {'files':>6} {'tokens':>13} {'bytes':>13} {'bytes/tok':>9}  sha256"]
    for s in SPLITS:
        n, b = d["tokens"][s], d["bytes"][s]
        ratio = f"{b / n:.3f}" if b is not None and n else "-"
        lines.append(f"{s:<8} {d['files'][s]:>6} {n:>13,} {'-' if b is None else f'{b:,}':>13} {ratio:>9}  "
                     f"{d['fingerprints'][s]}")
    return "\n".join(lines)
