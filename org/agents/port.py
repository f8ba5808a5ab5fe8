"""
The port: how a CLI agent (claude-code, codex), boxed, reaches the org and its model.

The CLI runs in the agent's box (org/sandbox.py): no network, .lab/ and the other worktrees
absent. Two unix sockets, in a folder of .lab/ bound read-only into the box, are its only way out:

    outside (the agent's supervisor, `org agent` in its pane)     inside the box
    org.sock      runs `org tool|mail|results|agent-hook`  <-    the `org` command (NANOLAB_PORT)
                  as this agent: who calls is the socket,
                  never a flag or a variable
    gateway.sock  bytes both ways to the gateway's TCP port <-   127.0.0.1:PORT, relayed by
                                                                 main() here, the box's PID 1

The CLI is pointed at http://127.0.0.1:PORT/... inside its own network namespace, where the
relay listens on the gateway's own port number, so URLs and tokens read the same in and out.

org.sock speaks one JSON line each way per connection:
    {"op": "tool", "name": ..., "arguments": {...}}   -> {"output": str, "rc": int}
    {"op": "board"}                                    -> {"output": str, "rc": 0}
    {"op": "hook", "event": "stop"|"notify", "payload": str} -> {"output": str|None, "rc": 0}
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from org.agents.pacing import Pacer

PORT_VAR = "NANOLAB_PORT"      # inside the box: the path of org.sock
# a request's line (the harness holds one for each connection, 32 at once, outside every box: 16 MB lines took
# it 1.6 GB, session 43's red team); files of more are written in the box, where the CLI's own tools write them
MAX_REQUEST = 1 << 20
TOO_LONG = f"error: a request to the org is one line of at most {MAX_REQUEST >> 20} MB; write a longer file in your own shell"
MAX_DRAIN = 16 << 20  # what is read and dropped of a line too long, for its client to read the refusal
LINGER = 30  # seconds the box outlives its CLI for what the CLI left running
# each connection is a thread here (two for the relay, and one in the gateway), held as long as
# the box keeps it open: past these, a socket closes what comes in (a CLI's pool opens a few)
MAX_CONNECTIONS = 32
ORG_READ_SECONDS = 60  # for org.sock's request line (its answer may take as long as a command)


# --- outside: the agent's supervisor serves both sockets ----------------------------------

class Port:
    """Serve an agent's two sockets in `folder` while the context is open.
    handle(request: dict) -> dict answers org.sock; gateway.sock relays to `upstream`."""

    def __init__(self, folder: Path, handle, upstream: tuple[str, int] | None, pacer: Pacer | None = None):
        self.folder, self.handle, self.upstream = Path(folder), handle, upstream
        self.pacer = pacer or Pacer()  # (the agent's: its take-ins are paced by it too)
        self.servers: list[socketserver.BaseServer] = []

    def answer(self, line: bytes) -> bytes:
        """The answer's line to a request's, paced over all the connections the agent opens and
        at SCHED_IDLE (org/agents/pacing.py): the harness does it outside every box. Its reading
        too: 16 MB lines of `[{},...]`, parsed before the pacing, kept a harness core busy (session 43's red team)."""
        def work() -> bytes:
            try:
                answer = {"output": TOO_LONG, "rc": 2} if len(line) >= MAX_REQUEST else self.handle(json.loads(line or b"{}"))
            except Exception as e:  # noqa: BLE001 - one bad request must not end the port
                answer = {"output": f"error: {type(e).__name__}: {e}", "rc": 2}
            return json.dumps(answer).encode() + b"\n"
        return self.pacer.run(work)

    @property
    def org_socket(self) -> Path:
        return self.folder / "org.sock"

    @property
    def gateway_socket(self) -> Path:
        return self.folder / "gateway.sock"

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        port = self

        class Org(socketserver.StreamRequestHandler):
            timeout = ORG_READ_SECONDS

            def handle(self):
                line = b""
                try:
                    line = self.rfile.readline(MAX_REQUEST)
                    answer = port.answer(line)
                except OSError as e:  # (no line in ORG_READ_SECONDS)
                    answer = json.dumps({"output": f"error: {type(e).__name__}: {e}", "rc": 2}).encode() + b"\n"
                self.wfile.write(answer)
                if len(line) >= MAX_REQUEST and not line.endswith(b"\n"):
                    drained(self.rfile)  # (closed unread, the rest reset the connection: its client, still sending, read no answer)

        class Relay(socketserver.BaseRequestHandler):
            def handle(self):
                with socket.create_connection(port.upstream, timeout=30) as up:
                    up.settimeout(None)
                    pump(self.request, up)

        for path, handler in ((self.org_socket, Org), (self.gateway_socket, Relay if self.upstream else None)):
            if handler is None:
                continue
            path.unlink(missing_ok=True)
            server = CappedServer(str(path), handler, bind_and_activate=False)
            with socket_name(path) as name:
                server.socket.bind(name)
            server.server_activate()
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        return self

    def __exit__(self, *exc):
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for path in (self.org_socket, self.gateway_socket):
            path.unlink(missing_ok=True)


def drained(stream, limit: int = MAX_DRAIN):
    """Read and drop the rest of a line too long, `limit` bytes of it at most (past them the client is not ours)."""
    with contextlib.suppress(OSError):
        while limit > 0:
            chunk = stream.readline(min(limit, 1 << 16))
            if not chunk or chunk.endswith(b"\n"):
                return
            limit -= len(chunk)


class CappedServer(socketserver.ThreadingUnixStreamServer):
    """A thread a connection, MAX_CONNECTIONS at once: one past them is closed as it comes."""
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


@contextlib.contextmanager
def socket_name(path: Path | str):
    """A name bind() and connect() take for the unix socket at `path`: the path itself, or where
    it is longer than a socket address holds (107 bytes: a lab in a deep folder), the same file
    through a descriptor of its folder, /proc/self/fd/N/NAME, while the context is open."""
    path = Path(path)
    if len(os.fsencode(path)) <= 107:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def pump(a: socket.socket, b: socket.socket):
    """Copy bytes both ways until both sides have closed."""
    def one_way(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    back = threading.Thread(target=one_way, args=(b, a), daemon=True)
    back.start()
    one_way(a, b)
    back.join()


# --- inside the box -------------------------------------------------------------------------

def call(request: dict, path: str | None = None) -> dict:
    """Send one request to the org through org.sock (the `org` command, inside a box)."""
    path = path or os.environ[PORT_VAR]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, socket_name(path) as name:
            line = json.dumps(request).encode() + b"\n"
            if len(line) >= MAX_REQUEST:
                return {"output": TOO_LONG, "rc": 2}
            s.connect(name)
            s.sendall(line)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data or b'{"output": "error: the org closed the port", "rc": 2}')
    except (OSError, ValueError) as e:
        return {"output": f"error: cannot reach the org through {path}: {e}", "rc": 2}


def relay_and_run(listen_port: int, gateway_socket: str, argv: list[str]) -> int:
    """Listen on 127.0.0.1:listen_port (the box's own loopback), relay each connection to the
    gateway's socket, and run argv; its exit status is ours. A SIGTERM goes on to argv.
    We are the box's PID 1: when we return, everything left in it dies. So first give what
    argv left running (codex's notify hook, started as it exits) up to LINGER seconds."""
    server = socket.create_server(("127.0.0.1", listen_port))

    def serve():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=relay_one, args=(conn, gateway_socket), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    proc = subprocess.Popen(argv)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    signal.signal(signal.SIGHUP, lambda *_: proc.terminate())
    status = proc.wait()
    deadline = time.monotonic() + LINGER
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:  # orphans are ours to reap, as PID 1
                time.sleep(0.05)
        except ChildProcessError:  # none left
            break
    return status


def relay_one(conn: socket.socket, path: str):
    with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
        try:
            with socket_name(path) as name:
                up.connect(name)
        except OSError:
            return
        pump(conn, up)


def main(args: list[str]) -> int:
    """LISTEN_PORT GATEWAY_SOCKET -- ARGV...: what the box runs first (see BoxedCLI.start)."""
    if len(args) < 4 or args[2] != "--":
        print("usage: LISTEN_PORT GATEWAY_SOCKET -- ARGV...", file=sys.stderr)
        return 2
    return relay_and_run(int(args[0]), args[1], args[3:])
