"""
Data: a text corpus or llm.c token shards in; three 1-D token arrays (train / val / confirm),
a tokenizer and a per-token byte count (for val_bpb) out. Nothing is ever downloaded.

Sources
- "pystdlib" (default): the running interpreter's standard-library .py sources plus the
  pydoc_data help topics, ~30 MB, always present.
- a text file or a folder of text files (binary files, those with a NUL byte, are skipped).
- llm.c .bin token shards (a .bin file, a folder with .bin files at its top, or a glob), read
  and written by trainer/shards.py: names with "val" are val, with "confirm" confirm (else
  confirm = val's second half), the rest train.
Text is split by document: a fixed hash of each document's relative path puts ~90% in train,
5% in val, 5% in confirm, so adding a file never moves another one. A single file (or a
folder too small for every split to get a file) is split into contiguous chunks instead:
the last 5% confirm, the 5% before it val.
Every document is prefixed with the tokenizer's end-of-text token, like llm.c.

A lab's own split (`--split-key-file`): every box can read the source (pystdlib is the
interpreter's own files), so a split anyone can compute is evaluation text anyone can train on.
With a secret key, a keyed hash (HMAC-SHA256) of each document's name puts ~85% in train, 5% in
dev, 5% in val and 5% in confirm; a single file's 100 pieces are ranked by it; llm.c shards are
pooled and their documents (cut at end-of-text) drawn by a generator seeded from the key,
streamed into a cache entry a chunk at a time (trainer/shards.py). Runs get only a cut of
`export_runs`' folder (the train split, the dev split's halves as their val and confirm): the
train windows the harness draws for the run, in the order it takes them (a STREAM file beside
them says so; train_batch), and the dev windows its curves score. The harness alone scores val
and confirm, text no box can tell from train.

Tokenizers (trainer/tokenizer.py): "bytes" and "bpe:N", trained on the train split only.

Prepared arrays are cached under NANOLAB_CACHE (default ~/.cache/nanolab)/data/<key>, where
the key hashes the documents' names and contents, the tokenizer spec and FORMAT_VERSION; a
second load re-reads and hashes the source (content, not mtimes: worktrees that copy the same
files share one entry, and a touched file costs nothing) and loads the arrays.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.shards import (GPT2_VOCAB, KEYED_SPLITS, SPLITS, atomic_write, check_vocab, find_shards,
                            CHUNK, chain, load_keyed_shards, read_llmc_shard, shard_split, shards_tokenizer,
                            write_llmc_shard, write_llmc_tokenizer)
from trainer.tokenizer import Tokenizer, bpe_tokenizer, byte_tokenizer, token_dtype, train_bpe  # noqa: F401

FORMAT_VERSION = 1  # bump when the prepared arrays would change for the same input
STREAM = "stream.json"  # beside a lab run's shards: {"row_tokens": T + 1, ...}, its train split a stream
KEYED_PIECES = 100                # a single file, keyed: cut in this many pieces


# -----------------------------------------------------------------------------
# the dataset

@dataclass
class Dataset:
    name: str
    source: str
    train: np.ndarray                # each split: a 1-D array, a memmap, or a shards.Chain of memmaps
    val: np.ndarray
    confirm: np.ndarray
    vocab_size: int
    token_bytes: np.ndarray | None   # bytes of each id (int64); None: bpb unavailable
    tokenizer: Tokenizer | None      # None for shards with no tokenizer file beside them
    fingerprints: dict               # split -> sha256 of that split's token bytes (see split_fingerprint)
    documents: dict                  # split -> names of the documents (or shard files) in it
    split_method: str                # how the splits were made, in words
    cache_path: str | None = None
    dev: np.ndarray | None = None    # a lab's split only: text the runs may evaluate on
    rows: int | None = None          # a lab's run: train is a stream of windows this long (STREAM)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def split_fingerprint(self, name: str) -> str:
        # shards' are hashed when asked, not at every load: fineweb10B's train split is 19 GB
        if name not in self.fingerprints:
            self.fingerprints[name] = fingerprint(getattr(self, name))
        return self.fingerprints[name]

    def describe(self) -> dict:
        nbytes = {s: (None if self.token_bytes is None else
                      int(token_counts(self.split(s), self.vocab_size) @ self.token_bytes)) for s in SPLITS}
        return {"name": self.name, "source": self.source,
                "tokenizer": self.tokenizer.name if self.tokenizer else None,
                "vocab_size": self.vocab_size, "split": self.split_method,
                "tokens": {s: len(self.split(s)) for s in SPLITS},
                "bytes": nbytes, "files": {s: len(self.documents[s]) for s in SPLITS},
                "fingerprints": {s: self.split_fingerprint(s) for s in SPLITS},
                "val_bpb": "available" if self.token_bytes is not None else
                           "unavailable: no llm.c tokenizer file beside the shards",
                "cache": self.cache_path}


def token_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 22) -> np.ndarray:
    """(vocab_size,) how often each id occurs, a chunk at a time: a split of billions of tokens
    stays a memmap on disk (indexing a table by it whole would hold 8 bytes per token)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for a in range(0, len(tokens), chunk):
        counts += np.bincount(tokens[a:a + chunk], minlength=vocab_size)
    return counts


def load_dataset(source: str = "pystdlib", tokenizer: str = "bytes", cache_dir: str | None = None,
                 quiet: bool = True, split_key: bytes | None = None) -> Dataset:
    """Load (or prepare and cache) a dataset; with `split_key`, a lab's own split (above). Bad
    input raises ValueError with one line."""
    say = (lambda msg: None) if quiet else (lambda msg: print(f"data: {msg}", file=sys.stderr))
    spec = parse_tokenizer_spec(tokenizer)
    shards = find_shards(source)
    if shards is not None:
        if spec != "bytes":  # "bytes" is the default, so it is accepted and means "as stored"
            raise ValueError(f"tokenizer {tokenizer!r} does not apply to llm.c shards: they are already tokenized")
        return load_shards(source, shards) if split_key is None else \
            keyed_shards(source, shards, split_key, cache_root(cache_dir), say)
    name, docs, method = read_text_source(source, split_key)
    say(f"{name}: {sum(len(d) for d in docs.values())} documents, split {method}")
    return prepare_text(name, source, docs, method, spec, cache_root(cache_dir), say)


def read_split_key(path) -> bytes:
    """A lab's split key: the bytes of a file only the harness reads."""
    key = Path(path).read_bytes() if Path(path).is_file() else b""
    if len(key) < 16:
        raise ValueError(f"split key file {path}: missing or shorter than 16 bytes")
    return key


MAX_BPE_IDS = 1 << 20  # (a GPT-2 has 50257; bpe:99999999999999999999 overflowed in `tokenizers`: a traceback)


def parse_tokenizer_spec(spec: str) -> str:
    m = re.fullmatch(r"bpe:(\d+)", spec) if isinstance(spec, str) else None
    if spec == "bytes" or (m and 257 <= int(m.group(1)) <= MAX_BPE_IDS):
        return spec
    if m:  # 256 byte ids + the end-of-text id is the smallest byte-level BPE
        raise ValueError(f"tokenizer {spec!r}: a bpe vocabulary has from 257 to {MAX_BPE_IDS} ids")
    raise ValueError(f"unknown tokenizer {spec!r}: use 'bytes' or 'bpe:N' (N >= 257)")


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("NANOLAB_CACHE") or Path.home() / ".cache" / "nanolab")


# -----------------------------------------------------------------------------
# text sources -> {split: [(name, text), ...]}

def read_text_source(source: str, key: bytes | None = None) -> tuple[str, dict, str]:
    by_hash = ("by sha256 of relative path (90/5/5)" if key is None else
               "by a lab's keyed hash of relative path (train/dev/val/confirm 85/5/5/5)")
    by_chunks = ("contiguous chunks (90/5/5)" if key is None else
                 f"{KEYED_PIECES} contiguous pieces ranked by a lab's keyed hash (85/5/5/5)")
    if source == "pystdlib":
        return "pystdlib", split_by_hash(stdlib_documents(), key), by_hash
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data path {source} does not exist")
    if path.is_file():
        text = read_text(path)
        if text is None or not text.strip():
            raise ValueError(f"data file {source} is empty or not text")
        return path.name, split_by_chunks(path.name, text, key), by_chunks
    docs = folder_documents(path)
    if not docs:
        raise ValueError(f"data folder {source} holds no text files")
    splits = split_by_hash(docs, key)
    if all(splits.values()):
        return path.name, splits, by_hash
    # too few files for every split to get one: fall back to chunks of the concatenation
    text = "".join(t for _, t in docs)
    return path.name, split_by_chunks(path.name, text, key), f"{by_chunks} of all {len(docs)} files"


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
    docs = [(path.relative_to(root).as_posix(), read_text(path)) for path in folder_files(root)]
    return sorted((name, text) for name, text in docs if text)


def folder_files(root: Path):
    """The files of a data folder the trainer reads: regular ones (a FIFO, a socket or a device is
    no text: opening a FIFO waited for ever), hidden ones and hidden folders passed over."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield from (Path(dirpath) / f for f in filenames if not f.startswith(".") and (Path(dirpath) / f).is_file())


def read_text(path: Path) -> str | None:
    """A file's text (undecodable bytes replaced), or None for binary files (a NUL byte, as git does)."""
    data = path.read_bytes()
    return None if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def split_of(name: str, key: bytes | None = None) -> str:
    if key is None:
        bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 100
        return "train" if bucket < 90 else "val" if bucket < 95 else "confirm"
    bucket = keyed_rank(key, name) % 100
    return "train" if bucket < 85 else "dev" if bucket < 90 else "val" if bucket < 95 else "confirm"


def keyed_rank(key: bytes, name: str) -> int:
    return int.from_bytes(hmac.new(key, name.encode(), hashlib.sha256).digest()[:8], "big")


def split_by_hash(docs: list[tuple[str, str]], key: bytes | None = None) -> dict:
    splits = {s: [] for s in (SPLITS if key is None else KEYED_SPLITS)}
    for name, text in docs:
        splits[split_of(name, key)].append((name, text))
    return splits


def split_by_chunks(name: str, text: str, key: bytes | None = None) -> dict:
    if key is not None:
        return split_pieces_by_key(name, text, key)
    n = len(text)
    a = _line_cut(text, int(0.90 * n), int(0.95 * n))
    b = _line_cut(text, int(0.95 * n), n - 1)
    parts = dict(zip(SPLITS, (text[:a], text[a:b], text[b:])))
    if not all(parts.values()):
        raise ValueError(f"data {name} is too small to split into train/val/confirm ({n} characters)")
    return {s: [(f"{name}[{s}]", t)] for s, t in parts.items()}


def split_pieces_by_key(name: str, text: str, key: bytes) -> dict:
    """A single text cut in KEYED_PIECES pieces (at line ends where near), ranked by the keyed
    hash: the first 5% val, the next 5% confirm, the next 5% dev, the rest train, in text order."""
    n, k = len(text), KEYED_PIECES
    cuts = [0] + [_line_cut(text, n * i // k, n * (i + 1) // k) for i in range(1, k)] + [n]
    pieces = [(f"{name}[{i}]", text[a:b]) for i, (a, b) in enumerate(zip(cuts, cuts[1:])) if b > a]
    if len(pieces) < 20:
        raise ValueError(f"data {name} is too small to split into a lab's train/dev/val/confirm ({n} characters)")
    ranked = sorted(range(len(pieces)), key=lambda i: keyed_rank(key, pieces[i][0]))
    share = len(pieces) // 20
    where = {i: s for s, chunk in zip(("val", "confirm", "dev"), (ranked[:share], ranked[share:2 * share],
                                                                  ranked[2 * share:3 * share])) for i in chunk}
    splits = {s: [] for s in KEYED_SPLITS}
    for i, piece in enumerate(pieces):
        splits[where.get(i, "train")].append(piece)
    return splits


def _line_cut(text: str, i: int, limit: int) -> int:
    j = text.find("\n", i, limit)  # cut after a newline when one is near, so lines stay whole
    return i if j < 0 else j + 1


def fingerprint(tokens: np.ndarray) -> str:
    """sha256 of the tokens' bytes, read a chunk at a time (a memmap or a Chain of any size)."""
    sha = hashlib.sha256()
    for a in range(0, len(tokens), CHUNK):
        sha.update(np.ascontiguousarray(tokens[a:a + CHUNK]).view(np.uint8))
    return sha.hexdigest()


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
        arrays = {s: tok.encode_documents([t for _, t in docs[s]]) for s in docs}
        meta = {"format": FORMAT_VERSION, "tokenizer": spec, "vocab_size": tok.vocab_size, "split": method,
                "documents": {s: [n for n, _ in docs[s]] for s in docs},
                "fingerprints": {s: fingerprint(a) for s, a in arrays.items()}}
        entry = write_cache(entry, arrays, meta, say)
    if source == "pystdlib":
        method += f", Python {sys.version.split()[0]}"
    return Dataset(name=name, source=label, **{s: arrays[s] for s in SPLITS}, dev=arrays.get("dev"),
                   vocab_size=meta["vocab_size"],
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
        arrays = {s: np.load(entry / f"{s}.npy", allow_pickle=False) for s in meta["documents"]}
        if meta["format"] != FORMAT_VERSION or any(fingerprint(arrays[s]) != meta["fingerprints"][s]
                                                   for s in arrays):
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


# -----------------------------------------------------------------------------
# llm.c shards (trainer/shards.py) -> a Dataset

def load_shards(source: str, files: list[Path]) -> Dataset:
    tokens = {f: read_llmc_shard(f) for f in files}  # every header is checked before anything else
    groups = {s: [f for f in files if shard_split(f) == s] for s in SPLITS}
    if not groups["val"]:
        raise ValueError(f"shards {source}: no file with 'val' in its name (llm.c names them *_val_*.bin)")
    if not groups["train"]:
        raise ValueError(f"shards {source}: no training shard (a .bin file without 'val' in its name)")
    arrays = {s: chain([tokens[f] for f in fs]) for s, fs in groups.items()}
    method = "by file name (*val* -> val"
    if not groups["confirm"]:
        # llm.c ships one val shard; its second half is held out as the confirm split
        half = len(arrays["val"]) // 2
        arrays["val"], arrays["confirm"] = arrays["val"][:half], arrays["val"][half:]
        groups["confirm"] = groups["val"]
        method += ", confirm = its second half)"
    else:
        method += ", *confirm* -> confirm)"
    tok = shards_tokenizer(files)
    vocab = tok.vocab_size if tok else GPT2_VOCAB
    check_vocab(source, arrays, vocab)
    rows = stream_rows(Path(files[0]).parent / STREAM, len(arrays["train"]))
    return Dataset(name=Path(files[0]).parent.name or "shards", source=str(source), **arrays, vocab_size=vocab,
                   token_bytes=tok.token_bytes() if tok else None, tokenizer=tok,
                   fingerprints={}, documents={s: [f.name for f in fs] for s, fs in groups.items()},
                   split_method=method + (f"; train: a stream of {rows}-token windows" if rows else ""), rows=rows)


def stream_rows(stream: Path, train_tokens: int) -> int | None:
    """The length of the windows a run's train split is a stream of (its STREAM file), or None."""
    if not stream.exists():
        return None
    try:
        rows = json.loads(stream.read_text())["row_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{stream}: no row_tokens, the length of the train split's windows") from None
    if type(rows) is not int or rows < 2 or train_tokens % rows:
        raise ValueError(f"{stream}: row_tokens {rows!r} does not cut the train split's {train_tokens} tokens "
                         "into whole windows")
    return rows


def keyed_shards(source: str, files: list[Path], key: bytes, root: Path, say) -> Dataset:
    """A lab's split of shards (trainer/shards.py: streamed into a cache entry, read as memmaps)."""
    tok = shards_tokenizer(files)
    arrays, meta = load_keyed_shards(source, files, key, tok, root, say)
    return Dataset(name=Path(files[0]).parent.name or "shards", source=str(source), **{s: arrays[s] for s in SPLITS},
                   dev=arrays["dev"], vocab_size=tok.vocab_size if tok else GPT2_VOCAB,
                   token_bytes=tok.token_bytes() if tok else None, tokenizer=tok, fingerprints=meta["fingerprints"],
                   documents={s: [f"{s} documents"] for s in KEYED_SPLITS}, cache_path=meta["cache"],
                   split_method="every shard's documents drawn by a lab's key (train/dev/val/confirm 85/5/5/5)")


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

def train_batch(data: Dataset, batch_size: int, seq_len: int, seed: int, step: int):
    """Batch `step` of a run: a lab's run takes its stream's rows in order, windows the harness
    drew for its seed (org/streams.py: export_stream), again from the first once they run out;
    by hand, random windows of the train split (get_batch)."""
    if data.rows is None:
        return get_batch(data.train, batch_size, seq_len, seed, step)
    rows = np.arange(step * batch_size, (step + 1) * batch_size) % (len(data.train) // data.rows)
    buf = np.asarray(data.train[rows[:, None] * data.rows + np.arange(data.rows)], dtype=np.int64)  # (B, T+1)
    return np.ascontiguousarray(buf[:, :-1]), np.ascontiguousarray(buf[:, 1:])


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

def export_runs(ds: Dataset, out_dir) -> list[Path]:
    """What a lab's runs may read, as llm.c shards in out_dir: the train split, and the dev split's
    two halves as their val and confirm (curves, their own figures). Never the lab's val or confirm."""
    if ds.dev is None:
        raise ValueError("export for runs: the dataset has no dev split (it needs a lab's split key)")
    # the stamp is written last and compared first: every start of a runner (a resumed org) rewrote
    # the export, 19 GB of fineweb10B's train split, unchanged
    stamp, mark = json.dumps({s: ds.split_fingerprint(s) for s in ("train", "dev")}), Path(out_dir) / "export.json"
    whole = all((mark.parent / f"{s}_000000.bin").is_file() for s in SPLITS)
    if whole and mark.is_file() and mark.read_text() == stamp:
        return []
    half = len(ds.dev) // 2
    runs = Dataset(name=ds.name, source=ds.source, train=ds.train, val=ds.dev[:half], confirm=ds.dev[half:],
                   vocab_size=ds.vocab_size, token_bytes=ds.token_bytes, tokenizer=ds.tokenizer,
                   fingerprints={}, documents={}, split_method="")
    paths = export_llmc(runs, out_dir)
    atomic_write(mark, stamp.encode())
    return paths + [mark]


def add_data_arguments(parser: argparse.ArgumentParser, export: bool = True) -> None:
    """--data, --tokenizer, --cache-dir (for train/eval too) and, for `data`, --export-bin."""
    from trainer.cli import data_source
    parser.add_argument("--data", default="pystdlib", metavar="SRC", type=data_source,
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
        parser.add_argument("--split-key-file", default=None, metavar="FILE",
                            help="a lab's own split, keyed by the bytes of FILE: train/dev/val/confirm 85/5/5/5")
        parser.add_argument("--export-runs", default=None, metavar="DIR",
                            help="with --split-key-file: write what runs may read in DIR as llm.c shards (the "
                                 "train split; the dev split's halves as val and confirm)")


def run_data(args) -> int:
    try:
        key = read_split_key(args.split_key_file) if getattr(args, "split_key_file", None) else None
        if getattr(args, "export_runs", None) and key is None:
            raise ValueError("--export-runs needs --split-key-file: runs get a lab's own split only")
        ds = load_dataset(args.data, args.tokenizer, args.cache_dir, quiet=getattr(args, "quiet", False),
                          split_key=key)
        print(format_description(ds.describe()))
        for flag, export in (("export_bin", export_llmc), ("export_runs", export_runs)):
            for p in export(ds, getattr(args, flag)) if getattr(args, flag, None) else ():
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
