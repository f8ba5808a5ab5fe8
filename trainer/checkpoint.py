"""
Checkpoints: llm.c's GPT-2 fp32 file format (interop), and the trainer's own resumable
checkpoints (parameters, optimizer state, data position, RNG) in one .npz.

llm.c layout (train_gpt2.c): a header of 256 int32 — magic 20240326, version 3 (fp32), maxT,
V, L, NH, C, Vp — then 16 fp32 tensors, each stacked over layers:
wte (Vp,C) wpe (maxT,C) ln1w ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C) attprojw (L,C,C) attprojb (L,C)
ln2w ln2b (L,C) fcw (L,4C,C) fcb (L,4C) fcprojw (L,C,4C) fcprojb (L,C) lnfw lnfb (C)
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from trainer.backend import to_numpy
from trainer.config import Config, make_config

LLMC_MAGIC, LLMC_VERSION_FP32 = 20240326, 3
SNAPSHOTS = "snapshots"  # a run directory's folder of parameter snapshots (save_snapshot)
SNAPSHOT_BYTES = 8 << 30  # what a run's snapshots may hold at once: half what a lab's box may write
MOST_SNAPSHOTS = 64       # and how many: points of a learning curve, each scored by the harness
GPT2_ARCH = dict(pos="learned", norm="layer", bias=True, tie_embeddings=True, mlp="gelu",
                 lambdas=False, embed_norm=False, qk_norm=False, qk_gain=1.0, softcap=0.0)


def llmc_tensors(cfg: Config) -> list[tuple[str, tuple]]:
    """llm.c's 16 tensors: (our per-layer parameter name pattern, stacked shape)."""
    L, C, V, T = cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.sequence_len
    h = "transformer.h.{i}."
    return [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (T, C)),
            (h + "ln_1.weight", (L, C)), (h + "ln_1.bias", (L, C)),
            (h + "attn.qkv.weight", (L, 3 * C, C)), (h + "attn.qkv.bias", (L, 3 * C)),
            (h + "attn.c_proj.weight", (L, C, C)), (h + "attn.c_proj.bias", (L, C)),
            (h + "ln_2.weight", (L, C)), (h + "ln_2.bias", (L, C)),
            (h + "mlp.c_fc.weight", (L, 4 * C, C)), (h + "mlp.c_fc.bias", (L, 4 * C)),
            (h + "mlp.c_proj.weight", (L, C, 4 * C)), (h + "mlp.c_proj.bias", (L, C)),
            ("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]


def write_llmc(path, model) -> None:
    cfg = model.cfg
    wrong = {k: getattr(cfg, k) for k, v in GPT2_ARCH.items() if getattr(cfg, k) != v}
    if wrong or cfg.n_kv_head != cfg.n_head:
        raise ValueError(f"llm.c checkpoints hold only the plain GPT-2 architecture; this config has "
                         f"{wrong or {'n_kv_head': cfg.n_kv_head}}")
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [LLMC_MAGIC, LLMC_VERSION_FP32, cfg.sequence_len, cfg.vocab_size, cfg.n_layer,
                  cfg.n_head, cfg.n_embd, cfg.padded_vocab_size]
    state = model.state_numpy()
    with atomic_open(path) as f:
        f.write(header.tobytes())
        for pattern, _ in llmc_tensors(cfg):
            f.write(_gather(state, model, pattern).astype(np.float32).tobytes())


def read_llmc(path, dtype: str = "float32", device: str = "cpu"):
    """A GPT (gpt2 preset) with the weights of an llm.c fp32 checkpoint."""
    from trainer.model import GPT
    data = _read_file(path)
    header = np.frombuffer(data[:1024], dtype=np.int32) if len(data) >= 1024 else None
    if header is None or header[0] != LLMC_MAGIC:
        raise ValueError(f"{path}: not an llm.c checkpoint (bad magic; expected {LLMC_MAGIC})")
    if header[1] != LLMC_VERSION_FP32:
        raise ValueError(f"{path}: llm.c checkpoint version {header[1]} is not supported (only 3, fp32)")
    maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
    try:
        cfg = make_config("gpt2", sequence_len=maxT, vocab_size=V, n_layer=L, n_head=NH, n_embd=C)
    except ValueError as e:
        raise ValueError(f"{path}: impossible header ({e})") from None
    if Vp != cfg.padded_vocab_size:
        raise ValueError(f"{path}: padded vocab {Vp} != {cfg.padded_vocab_size} (V={V} rounded up to 128)")
    tensors = llmc_tensors(cfg)
    expected = 1024 + 4 * sum(int(np.prod(s)) for _, s in tensors)
    if len(data) != expected:
        raise ValueError(f"{path}: size {len(data)} bytes, expected {expected} for this header")
    model = GPT(cfg, seed=0, dtype=dtype, device=device)
    offset = 1024
    for pattern, shape in tensors:
        n = int(np.prod(shape))
        _scatter(model, pattern, np.frombuffer(data, np.float32, n, offset).reshape(shape))
        offset += 4 * n
    return model


def _gather(state, model, pattern):
    if "{i}" not in pattern:
        return state[pattern]
    return np.stack([_layer_tensor(state, model, pattern, i) for i in range(model.cfg.n_layer)])


def _layer_tensor(state, model, pattern, i):
    if ".attn.qkv." in pattern:  # fused, whichever names the model uses
        key = "qkv_w" if pattern.endswith("weight") else "qkv_b"
        return to_numpy(model.blocks[i][key])
    return state[pattern.format(i=i)]


def _scatter(model, pattern, array):
    if "{i}" not in pattern:
        model.params[pattern][...] = model.xp.asarray(array)
        return
    for i in range(model.cfg.n_layer):
        if ".attn.qkv." in pattern:
            key = "qkv_w" if pattern.endswith("weight") else "qkv_b"
            model.blocks[i][key][...] = model.xp.asarray(array[i])
        else:
            model.params[pattern.format(i=i)][...] = model.xp.asarray(array[i])


def _read_file(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e.strerror})") from None

# ----------------------------------------------------------------------------------------
# resumable training checkpoints


def save_checkpoint(path, model, optimizer, step: int, extra: dict) -> None:
    """Everything a bit-identical resume needs, in one file written atomically."""
    arrays = {f"param/{n}": v for n, v in model.state_numpy().items()}
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    meta = dict(extra, step=step, config=model.cfg.to_dict(), dtype=model.dtype)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def save_snapshot(path, model, step: int) -> None:
    """The parameters alone at `step`, as save_checkpoint writes them: a point of the harness's
    learning curve (it evaluates each on its own val text once the run is done)."""
    path.parent.mkdir(exist_ok=True)
    arrays = {f"param/{n}": v for n, v in model.state_numpy().items()}
    arrays["meta"] = np.frombuffer(json.dumps({"step": step}).encode(), dtype=np.uint8)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def thin_snapshots(folder, every: int) -> int:
    """The snapshots' interval from now on: while they hold more than SNAPSHOT_BYTES or number
    more than MOST_SNAPSHOTS, it doubles and every snapshot off it goes. A long run of a big
    model keeps a coarser curve, not a full disk (a box past its disk is killed: org/diskwatch.py)."""
    kept = [p for p in folder.glob("step-*.npz") if snapshot_step(p)] if folder.is_dir() else []
    while kept and (len(kept) > MOST_SNAPSHOTS or sum(p.stat().st_size for p in kept) > SNAPSHOT_BYTES):
        every *= 2
        for p in [p for p in kept if snapshot_step(p) % every]:
            p.unlink()
            kept.remove(p)
    return every


def snapshot_step(path) -> int:
    """The step in save_snapshot's name of a file (step-%08d.npz); 0 for a name it never gives."""
    digits = path.stem[len("step-"):]
    return int(digits) if digits.isascii() and digits.isdigit() else 0


def load_checkpoint(path) -> tuple[dict, dict, dict]:
    """(params, optimizer state, meta) from save_checkpoint's file; a corrupt or truncated one is
    one ValueError naming it (and it is left as it is)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k[6:]: z[k] for k in z.files if k.startswith("param/")}
            opt = {k[4:]: z[k] for k in z.files if k.startswith("opt/")}
            meta = json.loads(z["meta"].tobytes())
    except OSError as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    except (KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # json errors are ValueErrors
        raise ValueError(f"{path}: not a readable trainer checkpoint: corrupt or truncated "
                         f"({type(e).__name__})") from None
    return params, opt, meta


class atomic_open:  # noqa: N801 (used as a context manager)
    """Write to a temporary file beside `path`, fsync it, then rename (and fsync the folder):
    readers never see half a file, and a power loss leaves the old file or the new one, never an
    empty one (ext4 may otherwise put the rename on disk before the data)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        d = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(self.path))
        self.f = os.fdopen(fd, "wb")
        return self.f

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.f.flush()
            os.fsync(self.f.fileno())
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
            folder = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            except OSError:  # a file system that cannot sync a folder (EINVAL): the rename stands
                pass
            finally:
                os.close(folder)
        else:
            os.unlink(self.tmp)
