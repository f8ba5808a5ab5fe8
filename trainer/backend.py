"""
One array module for the whole trainer: NumPy on the CPU, CuPy on a CUDA GPU.

Model code never imports numpy or cupy directly for math; it asks `xp_of(array)` (or holds the
module it was built with) so the same lines run on both.
"""
from __future__ import annotations

import os

import numpy as np


def array_module(device: str = "cpu"):
    """The array module for a device name: 'cpu' -> numpy, 'cuda' -> cupy."""
    if device == "cpu":
        reuse_freed_memory()
        return np
    if device == "cuda":
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device visible")
        except Exception as e:  # ImportError, CUDA driver errors, ...
            raise ValueError(f"--device cuda: no usable CUDA GPU ({type(e).__name__}: {e}); "
                             "install the 'gpu' extra on a machine with a GPU, or use --device cpu") from None
        return cupy
    raise ValueError(f"unknown device {device!r}; expected cpu or cuda")


def xp_of(a):
    """numpy or cupy, whichever owns this array."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def scatter_add_rows(dst, idx, src):
    """dst[idx[n]] += src[n] for every row n, repeated indices accumulating (embedding backward)."""
    if xp_of(dst) is np:
        np.add.at(dst, idx, src)
    else:
        import cupyx
        cupyx.scatter_add(dst, idx, src)


def contiguous_or_transposed(a):
    """(c, transposed): a C-contiguous array with a's values in memory order: a itself, or a.T
    when a is a transposed view such as w.T (transposed True, no copy), else a contiguous copy."""
    if a.flags.c_contiguous or not a.T.flags.c_contiguous:
        return xp_of(a).ascontiguousarray(a), False
    return a.T, True


def cpu_threads() -> int:
    """Threads for CPU kernels: what BLAS was told to use, else every core this process may run on."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_MALLOC_TUNED = False


def reuse_freed_memory():
    """Let glibc keep freed activation memory for the next step instead of returning it to the
    OS. By default every array above a few MB is mmapped fresh each step and pays a page fault
    per 4 KB page on first touch (~15% of a GPT-2 step on the CPU); llm.c avoids this by
    allocating activations once, this gets the same effect for NumPy's per-step arrays."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)   # serve allocations up to 1 GiB from the heap
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)   # and keep up to 2 GiB of freed heap around

