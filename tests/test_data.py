"""trainer/data.py and trainer/shards.py: sources, splits, tokenizers, cache, llm.c shards, batches, the `data` CLI."""
import argparse
import hashlib
import time
import tracemalloc

import numpy as np
import pytest

from trainer import data as D
from trainer import shards as S

pytestmark = pytest.mark.xdist_group("data")  # one worker builds its module fixture
WORDS = ("the quick brown fox jumps over a lazy dog while héllo wörld naïve café 日本語 ✓ def return "
         "import class self lambda yield").split()


def make_corpus(root, n_files=80, seed=0):
    """A folder of small deterministic text files (some non-ASCII) in two subfolders."""
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        path = root / f"part{i % 2}" / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(rng.integers(5, 30))]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


@pytest.fixture(scope="module")
def bpe_cache(tmp_path_factory):
    # one trained bpe:300 shared by the BPE tests, in its own cache
    root = tmp_path_factory.mktemp("bpe")
    corpus_dir = make_corpus(root / "corpus")
    return corpus_dir, root / "cache"


def write_shard_by_hand(path, tokens, magic=20240520, version=1, count=None):
    """The published llm.c layout, written independently of trainer/shards.py."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def write_tokenizer_by_hand(path, tokens, eot):
    header = np.zeros(256, dtype=np.int32)
    header[:4] = 20240328, 2, len(tokens), eot
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.writelines(bytes([len(t)]) + t for t in tokens)


# -- sources and splits ------------------------------------------------------------

def test_pystdlib_bytes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("stdlib_cache")
    t0 = time.perf_counter()
    ds = D.load_dataset("pystdlib", "bytes", cache_dir=cache)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = D.load_dataset("pystdlib", "bytes", cache_dir=cache)
    second = time.perf_counter() - t0
    sizes = {s: len(ds.split(s)) for s in D.SPLITS}
    assert 10e6 < sum(sizes.values()) < 200e6, sizes  # tens of MB
    assert all(n > 10_000 for n in sizes.values()), sizes
    assert ds.vocab_size == 256 and ds.train.dtype == np.uint16 and (ds.token_bytes == 1).all()
    names = [set(ds.documents[s]) for s in D.SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert "json/decoder.py" in set().union(*names) and "pydoc_data/topics.py" not in set().union(*names)
    assert any(n.startswith("pydoc_data/topics/") for n in set().union(*names))
    assert again.fingerprints == ds.fingerprints and np.array_equal(again.val, ds.val)
    assert second < max(2.0, first), (first, second)


def test_folder_splits_disjoint_stable_and_by_hash(corpus, tmp_path):
    a = D.load_dataset(str(corpus), cache_dir=tmp_path / "c1")
    b = D.load_dataset(str(corpus), cache_dir=tmp_path / "c2")  # rebuilt from scratch
    docs = {s: set(a.documents[s]) for s in D.SPLITS}
    assert all(docs.values())
    assert not (docs["train"] & docs["val"] or docs["train"] & docs["confirm"] or docs["val"] & docs["confirm"])
    assert set().union(*docs.values()) == {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.txt")}
    assert all(D.split_of(n) == s for s, ns in docs.items() for n in ns)
    assert a.fingerprints == b.fingerprints and a.documents == b.documents
    # the byte stream of a split is its documents in sorted order, each after a 0 separator
    expect = b"".join(b"\0" + (corpus / n).read_bytes() for n in sorted(docs["val"]))
    assert a.val.tobytes() == np.frombuffer(expect, np.uint8).astype(np.uint16).tobytes()


def test_single_file_splits_into_contiguous_chunks(tmp_path):
    text = "".join(f"line {i} of the file\n" for i in range(2000))
    path = tmp_path / "one.txt"
    path.write_text(text)
    ds = D.load_dataset(str(path), cache_dir=tmp_path / "c")
    parts = [ds.tokenizer.decode(ds.split(s)[1:]) for s in D.SPLITS]  # drop each split's separator
    assert "".join(parts) == text and all(p.endswith("\n") for p in parts)
    assert 0.85 < len(parts[0]) / len(text) < 0.92 and len(parts[1]) > 0 and len(parts[2]) > 0


def test_folder_with_few_files_falls_back_to_chunks(tmp_path):
    folder = make_corpus(tmp_path / "few", n_files=2)
    ds = D.load_dataset(str(folder), cache_dir=tmp_path / "c")
    assert "chunks" in ds.split_method and all(len(ds.split(s)) for s in D.SPLITS)


def test_binary_files_skipped_undecodable_replaced(corpus, tmp_path):
    (corpus / "blob.dat").write_bytes(b"\x00\x01\x02binary")
    (corpus / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    ds = D.load_dataset(str(corpus), cache_dir=tmp_path / "c")
    names = set().union(*map(set, ds.documents.values()))
    assert "blob.dat" not in names and "latin1.txt" in names


# -- llm.c shards ------------------------------------------------------------------

def test_llmc_shard_from_published_layout_reads_back(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1000)
    write_shard_by_hand(tmp_path / "x_train_000001.bin", tokens)
    assert np.array_equal(S.read_llmc_shard(tmp_path / "x_train_000001.bin"), tokens)
    S.write_llmc_shard(tmp_path / "ours.bin", tokens)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "x_train_000001.bin").read_bytes()


def test_llmc_shard_folder_glob_and_tokenizer(tmp_path):
    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 6, size=500), rng.integers(0, 6, size=101)
    write_shard_by_hand(tmp_path / "tiny_train_000001.bin", train)
    write_shard_by_hand(tmp_path / "tiny_val_000000.bin", val)
    for source in (str(tmp_path), str(tmp_path / "tiny_*.bin")):
        ds = D.load_dataset(source, cache_dir=tmp_path / "c")
        assert np.array_equal(ds.train, train) and ds.vocab_size == 50257
        # confirm is the second half of the (only) val shard
        assert np.array_equal(np.concatenate([ds.val, ds.confirm]), val) and len(ds.val) == 50
        assert ds.token_bytes is None and ds.tokenizer is None
        assert ds.split_fingerprint("val") == D.fingerprint(val[:50].astype(np.uint16))
    # a tokenizer file beside the shards gives decode and token_bytes (eot counts 0 bytes)
    write_tokenizer_by_hand(tmp_path / "gpt2_tokenizer.bin", [b"a", b"bc", b"\xc3", b"\xa9", b" ", b"<|eot|>"], eot=5)
    ds = D.load_dataset(str(tmp_path), cache_dir=tmp_path / "c")
    assert ds.vocab_size == 6 and list(ds.token_bytes) == [1, 2, 1, 1, 1, 0]
    assert ds.tokenizer.decode([0, 1, 4, 2, 3]) == "abc é"
    with pytest.raises(ValueError, match="decode-only"):
        ds.tokenizer.encode("abc")


def test_a_folder_of_shards_is_read_in_place_not_joined_in_memory(tmp_path):
    """fineweb10B's train split is 103 shards, 19 GB: joined with np.concatenate at every start, a
    hand run needed that much memory before its first step. The shards stay memmaps, read as one
    split: the same batches, windows, counts and fingerprints as the joined array."""
    rng, folder = np.random.default_rng(2), tmp_path / "fw"
    folder.mkdir()
    pieces = [rng.integers(0, 50257, size=n) for n in (300_000, 7, 250_000, 300_000)]  # a shard shorter than a window
    for i, tokens in enumerate(pieces):
        write_shard_by_hand(folder / f"fw_train_{i + 1:06d}.bin", tokens)
    write_shard_by_hand(folder / "fw_val_000000.bin", rng.integers(0, 50257, size=20_000))
    joined = np.concatenate(pieces).astype(np.uint16)

    D.get_batch(joined, 1, 8, seed=0, step=0)  # numpy.random's first import, before the count
    tracemalloc.start()
    ds = D.load_dataset(str(folder))
    batches = [D.get_batch(ds.train, 8, 64, seed=0, step=k) for k in range(10)]
    windows = list(D.eval_batches(ds.train, 4096, 8, 64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 400_000, f"{peak:,} bytes at the peak (the batches: 150,000): the train split is {joined.nbytes:,}"
    assert len(ds.train) == len(joined) and ds.describe()["files"]["train"] == 4

    for k, (x, y) in enumerate(batches):  # windows that cross from one shard into the next included
        want_x, want_y = D.get_batch(joined, 8, 64, seed=0, step=k)
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    for (x, y), (want_x, want_y) in zip(windows, D.eval_batches(joined, 4096, 8, 64), strict=True):
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    seam = 300_000
    assert np.array_equal(ds.train[seam - 3:seam + 10], joined[seam - 3:seam + 10])
    assert ds.train[-1] == joined[-1] and ds.train.max() == joined.max()
    assert np.array_equal(D.token_counts(ds.train, 50257, chunk=100_000), np.bincount(joined, minlength=50257))
    assert ds.split_fingerprint("train") == hashlib.sha256(joined.tobytes()).hexdigest()
    with pytest.raises(IndexError):
        ds.train[np.array([len(joined)])]
    # written out (the runs' export) and read back: one shard, the same tokens
    D.export_llmc(ds, tmp_path / "out")
    assert np.array_equal(D.load_dataset(str(tmp_path / "out")).train, joined)


@pytest.mark.parametrize("magic, version, count, match", [
    (12345, 1, None, "magic"), (20240520, 7, None, "version"), (20240520, 1, 99, "size")])
def test_bad_shard_raises(tmp_path, magic, version, count, match):
    path = tmp_path / "bad_val.bin"
    write_shard_by_hand(path, np.arange(10), magic=magic, version=version, count=count)
    with pytest.raises(ValueError, match=match) as e:
        S.read_llmc_shard(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=match):
        D.load_dataset(str(path))
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="magic"):
        S.read_llmc_shard(tmp_path / "short.bin")


def test_export_bin_round_trip(tmp_path, bpe_cache):
    corpus_dir, cache = bpe_cache
    for spec in ("bytes", "bpe:300"):
        ds = D.load_dataset(str(corpus_dir), spec, cache_dir=cache)
        D.export_llmc(ds, tmp_path / spec.replace(":", ""))
        back = D.load_dataset(str(tmp_path / spec.replace(":", "")), cache_dir=cache)
        assert all(back.split_fingerprint(s) == ds.split_fingerprint(s) for s in D.SPLITS)
        assert back.vocab_size == ds.vocab_size
        assert np.array_equal(back.token_bytes, ds.token_bytes)
        assert back.tokenizer.decode(back.val[:200]) == ds.tokenizer.decode(ds.val[:200])


# -- a lab's own split ---------------------------------------------------------------

def test_a_labs_split_is_its_keys_and_no_one_elses(corpus, tmp_path):
    """Every box can read the source, and our split rule: a split anyone can compute is evaluation
    text anyone can train on. Keyed, the val documents are the key's own: another key's val (what
    an agent who guesses a key, or takes the public split, would train on) meets it only by chance."""
    key, other = b"k" * 32, b"o" * 32
    a = D.load_dataset(str(corpus), cache_dir=tmp_path / "c", split_key=key)
    again = D.load_dataset(str(corpus), cache_dir=tmp_path / "c2", split_key=key)
    b = D.load_dataset(str(corpus), cache_dir=tmp_path / "c", split_key=other)
    public = D.load_dataset(str(corpus), cache_dir=tmp_path / "c")
    docs = {s: set(a.documents[s]) for s in D.KEYED_SPLITS}
    assert all(docs.values()) and sum(map(len, docs.values())) == len(set().union(*docs.values())) == 80
    assert all(D.split_of(n, key) == s for s, ns in docs.items() for n in ns)
    assert again.documents == a.documents and np.array_equal(again.val, a.val)
    assert a.documents["val"] != b.documents["val"] and a.fingerprints["val"] != b.fingerprints["val"]
    assert a.documents["val"] != public.documents["val"]
    assert "keyed" in a.split_method and a.dev is not None and public.dev is None


def test_the_runs_read_the_train_split_and_the_dev_split_only(corpus, tmp_path):
    """export_runs: what a lab's runs load (llm.c shards): the lab's train split as theirs, its
    dev split's halves as their val and confirm; none of the lab's val or confirm text."""
    for spec in ("bytes", "bpe:300"):
        lab = D.load_dataset(str(corpus), spec, cache_dir=tmp_path / "c", split_key=b"k" * 32)
        D.export_runs(lab, tmp_path / spec.replace(":", ""))
        runs = D.load_dataset(str(tmp_path / spec.replace(":", "")))
        assert np.array_equal(runs.train, lab.train)
        assert np.array_equal(np.concatenate([runs.val, runs.confirm]), lab.dev)
        assert runs.vocab_size == lab.vocab_size and np.array_equal(runs.token_bytes, lab.token_bytes)
        seen = np.concatenate([runs.train, runs.val, runs.confirm]).tobytes()
        for split in (lab.val, lab.confirm):  # no 64-token stretch of the lab's eval text is there
            for start in range(0, len(split) - 64, max(1, len(split) // 20)):
                assert bytes(split[start:start + 64].tobytes()) not in seen
        # exported once: every start of a runner asks again (fineweb10B's train split is 19 GB)
        assert D.export_runs(lab, tmp_path / spec.replace(":", "")) == []
        (tmp_path / spec.replace(":", "") / "val_000000.bin").unlink()
        assert len(D.export_runs(lab, tmp_path / spec.replace(":", ""))) == 5  # 3 shards, tokenizer, stamp
    with pytest.raises(ValueError, match="no dev split"):
        D.export_runs(D.load_dataset(str(corpus), cache_dir=tmp_path / "c"), tmp_path / "public")


def test_a_labs_split_of_one_file_and_of_shards(tmp_path):
    text = "".join(f"line {i} of the file\n" for i in range(4000))
    (tmp_path / "one.txt").write_text(text)
    one = D.load_dataset(str(tmp_path / "one.txt"), cache_dir=tmp_path / "c", split_key=b"k" * 32)
    parts = {s: one.documents[s] for s in D.KEYED_SPLITS}
    assert [len(parts[s]) for s in ("val", "confirm", "dev")] == [5, 5, 5] and len(parts["train"]) == 85
    assert parts != {s: D.load_dataset(str(tmp_path / "one.txt"), cache_dir=tmp_path / "c",
                                       split_key=b"o" * 32).documents[s] for s in D.KEYED_SPLITS}
    D.export_llmc(one, tmp_path / "shards")  # 95 of its pieces, each a document
    shards = D.load_dataset(str(tmp_path / "shards"), cache_dir=tmp_path / "c", split_key=b"k" * 32)
    pooled = sum(len(shards.split(s)) for s in D.SPLITS) + len(shards.dev)
    assert pooled == sum(len(one.split(s)) for s in D.SPLITS)  # every shard's tokens, each once
    assert all(len(shards.split(s)) for s in D.SPLITS) and len(shards.dev)
    with pytest.raises(ValueError, match="split key file .* shorter than 16 bytes"):
        (tmp_path / "key").write_bytes(b"short")
        D.read_split_key(tmp_path / "key")


def test_a_labs_split_of_shards_is_streamed_a_chunk_at_a_time(tmp_path, monkeypatch):
    """fineweb10B is ~100 shards of 100M tokens: pooled in memory, with a document id per token,
    its split took ~20 bytes per token. Streamed into a cache entry, it is the same split whatever
    the chunk (document d, after the d-th end-of-text, gets the key's generator's d-th draw), held
    in memory a chunk at a time, and read back as memmaps."""
    rng, eot, key = np.random.default_rng(3), 50256, b"k" * 32
    pool, folder = [], tmp_path / "shards"
    folder.mkdir()
    for name in ("a_train_000001.bin", "a_train_000002.bin", "a_val_000000.bin"):
        tokens = rng.integers(0, 1000, size=200_000)
        tokens[rng.random(tokens.size) < 0.002] = eot  # ~400 documents a shard
        write_shard_by_hand(folder / name, tokens)
        pool.append(tokens)
    # the rule, whole in memory
    pool = np.concatenate(pool)
    doc = np.cumsum(pool == eot)
    draw = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big")).random(doc[-1] + 1)
    bucket = np.searchsorted([0.85, 0.90, 0.95], draw[doc], side="right")
    expected = {s: pool[bucket == i] for i, s in enumerate(("train", "dev", "val", "confirm"))}

    monkeypatch.setattr(S, "CHUNK", 4096)  # a document spans chunks, and a chunk holds documents
    tracemalloc.start()
    lab = D.load_dataset(str(folder), cache_dir=tmp_path / "c", split_key=key)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert all(np.array_equal(getattr(lab, s), expected[s]) for s in D.KEYED_SPLITS)
    assert all(isinstance(getattr(lab, s), np.memmap) for s in D.KEYED_SPLITS)
    assert lab.fingerprints["val"] == D.fingerprint(expected["val"].astype(np.uint16))
    assert peak < 1_000_000, f"{peak:,} bytes at the peak: the pool alone is 1,200,000, its document ids 4,800,000"
    # the entry is the key's and the shards': read again, not redrawn; another key draws its own
    entry = tmp_path / "c" / "data"
    assert len(list(entry.iterdir())) == 1 and lab.cache_path
    again = D.load_dataset(str(folder), cache_dir=tmp_path / "c", split_key=key)
    assert again.fingerprints == lab.fingerprints and len(list(entry.iterdir())) == 1
    other = D.load_dataset(str(folder), cache_dir=tmp_path / "c", split_key=b"o" * 32)
    assert other.fingerprints["val"] != lab.fingerprints["val"] and len(list(entry.iterdir())) == 2
    assert not any(key in f.read_bytes() for f in entry.rglob("*") if f.is_file())  # the key's hash names it
    # what the runs read: GPT-2 ids with no tokenizer file beside them (it was given a bytes one, vocab 256)
    D.export_runs(lab, tmp_path / "runs")
    runs = D.load_dataset(str(tmp_path / "runs"))
    assert runs.vocab_size == 50257 and np.array_equal(runs.train, expected["train"])
    # ids past the tokenizer's vocabulary are named (counted while drawing, not by a pass at each load)
    S.write_llmc_tokenizer(folder / "tokenizer.bin", D.byte_tokenizer())
    with pytest.raises(ValueError, match=r"train holds token id \d+ >= vocab size 256"):
        D.load_dataset(str(folder), cache_dir=tmp_path / "c", split_key=key)
    assert len(list(entry.iterdir())) == 3  # cut at its end-of-text id (byte 0): not the entry cut at 50256


# -- BPE ---------------------------------------------------------------------------

def test_bpe_cache_reuse_and_corrupt_entry_rebuilt(corpus, tmp_path, monkeypatch):
    corpus_dir, cache = corpus, tmp_path / "cache"
    t0 = time.perf_counter()
    first = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=cache)
    t_first = time.perf_counter() - t0

    def no_training(*a, **k):
        raise AssertionError("the tokenizer was retrained")
    monkeypatch.setattr(D, "train_bpe", no_training)
    t0 = time.perf_counter()
    second = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=cache)
    t_second = time.perf_counter() - t0
    assert second.fingerprints == first.fingerprints and np.array_equal(second.train, first.train)
    assert second.cache_path == first.cache_path and t_second < t_first
    # a damaged array is detected by its fingerprint and rebuilt with the cached tokenizer
    arr = np.load(f"{first.cache_path}/train.npy")
    arr[:10] += 1
    np.save(f"{first.cache_path}/train.npy", arr)
    third = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=cache)
    assert third.fingerprints == first.fingerprints and np.array_equal(third.train, first.train)


def test_bpe_deterministic_and_trained_on_train_only(bpe_cache, tmp_path):
    corpus_dir, cache = bpe_cache
    a = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=cache)
    b = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=tmp_path / "fresh")  # retrained
    assert a.fingerprints == b.fingerprints and a.vocab_size == b.vocab_size == 300
    assert a.train.dtype == np.uint16 and a.tokenizer.eot == 299 and a.token_bytes[299] == 0


def test_bpe_token_bytes_match_utf8_bytes(bpe_cache):
    corpus_dir, cache = bpe_cache
    ds = D.load_dataset(str(corpus_dir), "bpe:300", cache_dir=cache)
    tok = ds.tokenizer
    text = "def café(): return 'héllo wörld ✓ 日本語 🙂' <|endoftext|>\n\tlazy dog"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eot not in ids  # the eot text is plain text
    assert ds.token_bytes[ids].sum() == len(text.encode("utf-8"))
    assert tok.decode(ids) == tok.bpe.decode(ids)  # our byte table agrees with tokenizers' decoder
    # over a whole split: bytes of all targets = UTF-8 bytes of the decoded text (eot: 0 bytes)
    val = ds.val[ds.val != tok.eot]
    assert ds.token_bytes[val].sum() == len(tok.decode(val).encode("utf-8"))
    assert D.load_dataset(str(corpus_dir), "bytes", cache_dir=cache).describe()["bytes"]["val"] == \
        ds.describe()["bytes"]["val"] + len(ds.documents["val"])  # bytes counts each 0 separator


# -- batches -----------------------------------------------------------------------

def test_get_batch_deterministic_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = D.get_batch(tokens, 4, 16, seed=7, step=3)
    x2, y2 = D.get_batch(tokens, 4, 16, seed=7, step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(y[:, :-1], x[:, 1:])
    assert (np.diff(x, axis=1) == 1).all()  # real contiguous windows
    assert not np.array_equal(x, D.get_batch(tokens, 4, 16, seed=7, step=4)[0])
    assert not np.array_equal(x, D.get_batch(tokens, 4, 16, seed=8, step=3)[0])
    edge = D.get_batch(np.arange(17), 8, 16, seed=0, step=0)[1]  # exactly one possible window
    assert (edge == np.arange(1, 17)).all()


def test_eval_batches_fixed_spread_and_non_overlapping():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(D.eval_batches(tokens, 300, batch_size=4, seq_len=32))
    assert [x.shape for x, _ in batches] == [(4, 32), (4, 32), (1, 32)]  # 9 whole windows
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    assert np.array_equal(ys, xs + 1)                                # next-token targets
    starts = xs[:, 0].astype(int)
    assert starts[0] == 0 and starts[-1] == 1000 - 33                # spread over the whole split
    assert (np.diff(starts) >= 32).all()                             # each target once
    again = list(D.eval_batches(tokens, 300, batch_size=4, seq_len=32))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    clipped = list(D.eval_batches(tokens, 10**9, batch_size=64, seq_len=100))
    assert sum(x.shape[0] for x, _ in clipped) == 9  # 999 targets exist


# -- bad input and the CLI -----------------------------------------------------------

@pytest.mark.parametrize("spec, match", [("bpe:abc", "unknown tokenizer"), ("foo", "unknown tokenizer"),
                                         ("bpe:256", "from 257 to 1048576 ids"), ("bpe:1048577", "from 257 to 1048576 ids"),
                                         ("bpe:", "unknown tokenizer")])
def test_bad_tokenizer_spec(spec, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        D.load_dataset("pystdlib", spec, cache_dir=tmp_path)


def test_bad_data_paths(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "emptydir").mkdir()
    cases = {tmp_path / "missing": "does not exist", tmp_path / "empty.txt": "empty",
             tmp_path / "emptydir": "no text files", tmp_path / "none_*.bin": "matches no files"}
    for path, match in cases.items():
        with pytest.raises(ValueError, match=match) as e:
            D.load_dataset(str(path), cache_dir=tmp_path / "c")
        assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="too few"):
        D.get_batch(np.arange(10), 2, 10, seed=0, step=0)
    with pytest.raises(ValueError, match="no window"):
        D.eval_batches(np.arange(10), 100, 2, 10)
    with pytest.raises(ValueError, match="unknown split"):
        D.load_dataset(str(make_corpus(tmp_path / "c2")), cache_dir=tmp_path / "c").split("test")


def test_run_data_cli(corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    D.add_data_arguments(parser)
    args = parser.parse_args(["--data", str(corpus), "--cache-dir", str(tmp_path / "c"),
                              "--export-bin", str(tmp_path / "out")])
    assert D.run_data(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "confirm" in out and "vocab 256" in out and (tmp_path / "out/val_000000.bin").exists()
    assert D.run_data(parser.parse_args(["--data", str(tmp_path / "nope")])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
