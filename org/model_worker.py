"""
The experiment's model, behind a pipe: the only agent code a harness measurement runs.

The harness's evaluator (org/evaluator.py) starts this file as a script in the experiment's
snapshot, with the snapshot (never the harness) first on sys.path:

    python -I -B -c "$(cat org/model_worker.py)" SNAPSHOT   # frames in on stdin, out on stdout

and asks it, one frame at a time, for what only the experiment's code can say:

    prepare {spec}     -> the model's initial parameters at the run's seed, built the way the
                          experiment's trainer builds them (its trainer.train.prepare)
    replay  {lr_mult}  -> parameters after a few optimizer steps from given parameters on
                          given batches (its forward, backward and optimizer)
    load               -> takes the checkpoint's parameters (sent by the harness, as arrays)
    forward            -> logits (rows, T, V) for token ids (rows, T)

Everything else (which tokens, the loss, bits per byte, FLOPs, what counts as valid) is the
evaluator's. This process is untrusted: whatever it answers is checked there, and it may
print what it likes, its stdout is moved to stderr before the experiment's code is imported.

A frame is an 8-byte little-endian length, a JSON header, then the header's arrays as .npy
bytes (never pickles): see send() and receive(), which the evaluator shares.
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys

import numpy as np

MAX_HEADER = 1 << 20


# ----------------------------------------------------------------------------------------
# frames: shared with the evaluator


def send(f, header: dict, arrays=()) -> None:
    blobs = []
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        blobs.append(buf.getvalue())
    head = json.dumps({**header, "sizes": [len(b) for b in blobs]}).encode()
    f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    f.flush()


def receive(f, max_bytes: int) -> tuple[dict, list[np.ndarray]]:
    """One frame; ValueError if it is malformed or its arrays exceed max_bytes in all. The other
    side may be the experiment's code: no size it names is allocated before it is checked (the
    sizes [60e9, -60e9] summed to 0, and 60 GB were asked for)."""
    n, = struct.unpack("<Q", read_exact(f, 8))
    if n > MAX_HEADER:
        raise ValueError(f"a frame header of {n} bytes")
    header = json.loads(read_exact(f, n))
    if not isinstance(header, dict):
        raise ValueError("a frame header that is not a JSON object")
    sizes = header.pop("sizes", [])
    if not isinstance(sizes, list) or not all(type(s) is int and s >= 0 for s in sizes):
        raise ValueError("a frame whose sizes are not counts of bytes")
    if sum(sizes) > max_bytes:
        raise ValueError(f"arrays of {sum(sizes)} bytes, more than the {max_bytes} expected")
    return header, [array_of(read_exact(f, s)) for s in sizes]


def array_of(blob: bytes) -> np.ndarray:
    """An .npy blob as an array, once its header is checked against its length: np.load makes
    an array of the shape a header names before it reads a byte of data."""
    buf = io.BytesIO(blob)
    major, _ = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(buf)
    if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > len(blob):
        raise ValueError(f"an array header naming {shape} of {dtype} in {len(blob)} bytes")
    return np.load(io.BytesIO(blob), allow_pickle=False)


def read_exact(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        out += chunk
    return bytes(out)


# ----------------------------------------------------------------------------------------
# the worker


class Worker:
    def __init__(self):
        self.model = self.optimizer = None

    def prepare(self, spec: dict):
        """The model and optimizer as the experiment's trainer makes them for this run."""
        import trainer.train as train
        try:
            run_spec = train.RunSpec(**spec)
            _, _, self.model, self.optimizer, _ = train.prepare(run_spec, None)
        except (TypeError, AttributeError, ValueError):  # its trainer was refactored: the plain way
            from trainer.config import make_config
            from trainer.model import GPT
            from trainer.optim import make_optimizer
            overrides = {"vocab_size": spec["vocab_size"], **spec["overrides"]}
            cfg = make_config(spec["preset"], **overrides)
            self.model = GPT(cfg, seed=spec["seed"], dtype=spec["dtype"], device=spec["device"],
                             matmul=spec["matmul"])
            self.optimizer = make_optimizer(self.model)
        return self.state()

    def state(self) -> tuple[dict, list]:
        names = list(self.model.params)
        return {"names": names}, [to_numpy(self.model.params[n]) for n in names]

    def load(self, names: list[str], arrays: list[np.ndarray]):
        self.model.load_numpy(dict(zip(names, arrays)))

    def replay(self, names, arrays, n_batches: int, lr_mult: float):
        """Steps of the experiment's own forward, backward and optimizer from given parameters."""
        params, batches = arrays[:len(names)], arrays[len(names):]
        self.load(names, params)
        for i in range(n_batches):
            x, y = batches[2 * i], batches[2 * i + 1]
            self.model.forward(x, y)
            self.model.backward()
            self.optimizer.step(lr_mult=lr_mult)
        return self.state()

    def forward(self, x: np.ndarray) -> np.ndarray:
        return to_numpy(self.model.forward(x))


def to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def serve(snapshot: str):
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the experiment's prints go to the log, never into a frame
    sys.stdout = sys.stderr
    sys.path.insert(0, snapshot)
    worker = Worker()
    while True:
        try:
            header, arrays = receive(proto_in, max_bytes=1 << 40)
        except EOFError:
            return
        op = header["op"]
        try:
            if op == "prepare":
                reply, out = worker.prepare(header["spec"])
            elif op == "replay":
                reply, out = worker.replay(header["names"], arrays, header["batches"], header["lr_mult"])
            elif op == "load":
                worker.load(header["names"], arrays)
                reply, out = {}, []
            elif op == "forward":
                reply, out = {}, [worker.forward(arrays[0])]
            else:
                reply, out = {"error": f"unknown op {op!r}"}, []
        except Exception as e:  # noqa: BLE001 (the experiment's code may raise anything: say what)
            reply, out = {"error": f"{type(e).__name__}: {e}"[:500]}, []
        send(proto_out, reply, out)


if __name__ == "__main__":
    serve(sys.argv[1])
