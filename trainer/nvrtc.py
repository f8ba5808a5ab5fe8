"""
Compiling CUDA source with no GPU: the low-level NVRTC library, through CuPy's wrapper or
libnvrtc via ctypes (the nvidia-cuda-nvrtc-cu12 wheel is enough). trainer/kernels.py's source is
checked with it in the tests, and `python -m trainer.nvrtc` compiles every kernel.
"""
from __future__ import annotations

import os

class NVRTCCompileError(RuntimeError):
    """NVRTC rejected the source; the message is its program log."""


def nvrtc_compile(source: str, arch: str = "compute_80", backend: str = "auto",
                  name: str = "nanolab_kernels.cu") -> str:
    """PTX of `source` for a virtual `arch` (e.g. compute_80), compiled with NVRTC alone.

    No CUDA device or driver is needed. backend: 'cupy' (cupy_backends.cuda.libs.nvrtc),
    'ctypes' (libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel or the system), or 'auto' (cupy's
    wrapper when cupy imports, else ctypes). Raises NVRTCCompileError with the log on a bad
    source, ImportError/OSError when NVRTC itself can't be loaded.
    """
    options = [f"--gpu-architecture={arch}"]
    if backend == "auto":
        try:
            from cupy_backends.cuda.libs import nvrtc  # noqa: F401
            backend = "cupy"
        except Exception:
            backend = "ctypes"
    if backend == "cupy":
        return _nvrtc_cupy(source, name, options)
    if backend == "ctypes":
        return _nvrtc_ctypes(source, name, options)
    raise ValueError(f"unknown NVRTC backend {backend!r}")


def _nvrtc_cupy(source, name, options):
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            raise NVRTCCompileError(f"{e}\n{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getPTX(prog).decode().rstrip("\0")
    finally:
        nvrtc.destroyProgram(prog)


def libnvrtc_candidates() -> list[str]:
    """Where libnvrtc may be: the nvidia-cuda-nvrtc-cu12/-cu13 wheels first, then the loader path."""
    import glob
    import importlib.util
    paths = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for pattern in ("cuda_nvrtc/lib/libnvrtc.so.*", "cu*/lib/libnvrtc.so.*"):
            paths += sorted(p for p in glob.glob(os.path.join(root, pattern))
                            if "builtins" not in p and ".alt." not in p)
    return paths + ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]


def _load_libnvrtc():
    import ctypes
    errors = []
    for path in libnvrtc_candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(str(e))
    raise OSError("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12): " + "; ".join(errors[-2:]))


def _nvrtc_ctypes(source, name, options):
    import ctypes
    lib = _load_libnvrtc()
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(result):
        if result != 0:
            raise NVRTCCompileError(lib.nvrtcGetErrorString(result).decode())

    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = lib.nvrtcCompileProgram(prog, len(options), opts)
        if result != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise NVRTCCompileError(f"{lib.nvrtcGetErrorString(result).decode()}\n{log.value.decode()}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, ptx))
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


if __name__ == "__main__":  # python -m trainer.nvrtc: compile every kernel of cuda_source.py, no GPU needed
    from trainer.cuda_source import DTYPES, KERNEL_NAMES, cuda_source
    for dtype in DTYPES:
        ptx = nvrtc_compile(cuda_source(dtype), "compute_80")
        entries = [n for n in KERNEL_NAMES if f".entry {n}(" in ptx]
        print(f"{dtype}: {len(ptx)} bytes of PTX, {len(entries)}/{len(KERNEL_NAMES)} kernels")
