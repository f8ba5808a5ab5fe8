"""
A run's checkpoint files as the harness reads them (org/evaluator.py, in its process: no box):
without pickles, bounded before they are unpacked, and checked, each problem one Invalid line.

    params, meta = read_checkpoint(run_dir / "checkpoint.npz")   # {name: array}, {"step": ...}
    check_precision(params, "float32")
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from org.remote import Invalid

MAX_CHECKPOINT_BYTES = 8 << 30  # what a checkpoint.npz unpacks to: a box writes no larger file
UNPACK_RATIO = 64  # and no more than this times its own size (floats deflate to about their size)


def read_checkpoint(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict, dict]:
    """{name: array} and meta from the trainer's checkpoint.npz, read without pickles, and only
    once what it unpacks to is bounded: this process has no box, and a few MB of zeros deflated
    unpack to gigabytes."""
    try:
        if path.stat().st_size > max_bytes + (1 << 20):  # (its directory alone could fill the memory)
            raise Invalid(f"{path.name} is {path.stat().st_size >> 20} MB, past the {max_bytes >> 20} MB it may unpack to")
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())  # (zipfile reads no more)
        if unpacked > min(max_bytes, UNPACK_RATIO * max(path.stat().st_size, 1 << 20)):
            raise Invalid(f"checkpoint.npz unpacks to {unpacked >> 20} MB from {path.stat().st_size >> 20} MB; "
                          f"a checkpoint unpacks to {UNPACK_RATIO}x its size at most")
        with np.load(path, allow_pickle=False) as z:
            params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
            meta = json.loads(z["meta"].tobytes())
    except FileNotFoundError:
        raise Invalid("no checkpoint.npz in the run directory: nothing to evaluate") from None
    # (deflated wrong, cut short, packed otherwise; a meta nested deep, a header's shape past any size)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, MemoryError, zlib.error, EOFError,
            NotImplementedError, RecursionError, OverflowError, TypeError) as e:
        raise Invalid(f"checkpoint.npz cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    if not params:
        raise Invalid("checkpoint.npz holds no parameters")
    for name, a in params.items():
        if a.dtype.kind != "f":
            raise Invalid(f"checkpoint tensor {name} is {a.dtype}, not floating point")
        if not np.isfinite(a).all():
            raise Invalid(f"checkpoint tensor {name} holds non-finite values")
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise Invalid("checkpoint.npz has no integer step in its meta")
    return params, meta


def check_precision(params: dict, dtype: str):
    """Every tensor in the program's precision (train.dtype): float64 weights that a float32
    program's model reads carry 29 bits a weight its forward pass can decode and no count of
    parameters charges (a table of n-grams of the whole train split, counted outside the FLOPs)."""
    wrong = next((name for name, a in params.items() if a.dtype != np.dtype(dtype)), None)
    if wrong:
        raise Invalid(f"checkpoint tensor {wrong} is {params[wrong].dtype}, not the program's {dtype}")
