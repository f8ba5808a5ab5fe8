"""
Tokenizers: ids <-> text for the data pipeline (trainer/data.py).

- "bytes": vocab 256, each byte its own id; the documents' separator is byte 0.
- "bpe:N": a byte-level BPE of N ids trained by `tokenizers` (GPT-2's byte map, so every id is
  a run of raw bytes); the end-of-text id N-1 lives outside the trained model, so the text
  "<|endoftext|>" inside a document encodes as plain text.
- a decode-only table (llm.c's tokenizer files hold no merges).

`token_bytes()` gives each id's raw byte length, the denominator of bits per byte.
"""
from __future__ import annotations

import numpy as np

EOT_TEXT = "<|endoftext|>"


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
