"""A box and the host's unix sockets. Every box sees / read-only, and connect() to a unix socket
works through a read-only mount: a box could drive any daemon whose socket lies outside its
private /tmp (docker's in /run, the user's bus in /run/user/..., the org's own tmux server where
TMUX_TMPDIR is elsewhere, whose run-shell runs a command as the harness, outside every box).
Now /run and the tmux and runtime folders are empty in a box, and every other socket the host
has bound is masked, but those of the box's own trees and its port."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from org.sandbox import Sandbox, available, run_box, worker_box

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

# connect to each socket named and print what it answers, or why it could not
CONNECT = """
import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print(path, s.recv(100).decode().strip())
    except OSError as e:
        print(path, "refused:", e.strerror)
"""


@pytest.fixture
def host_dirs():
    """Folders outside /tmp where daemons keep their sockets: one in /run (where we may write
    there), one in /var/tmp; removed after."""
    made = []
    for base in ("/run", "/var/tmp"):
        try:
            made.append(Path(tempfile.mkdtemp(prefix="nanolab-test-", dir=base)))
        except OSError:
            pass
    yield made
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def serve(path: Path) -> Path:
    """A daemon on the unix socket `path` (until the test ends) that answers every connection."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def answer():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"ANSWERED\n")
    threading.Thread(target=answer, daemon=True).start()
    return path


def boxed(box: Sandbox, argv: list[str], env: dict | None = None) -> str:
    proc = box.popen(argv, cwd="/", env={"PATH": os.environ["PATH"], "HOME": "/tmp", **(env or {})},
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.communicate(timeout=60)[0].decode()


def test_a_box_cannot_connect_to_the_hosts_sockets(host_dirs, tmp_path):
    """Sockets in /run, in /var/tmp, and in a tree bound in read-only (as .git is: git's
    fsmonitor daemon keeps its socket there), even one under /tmp."""
    daemons = [serve(folder / "daemon.sock") for folder in host_dirs] + [serve(tmp_path / "fsmonitor.ipc")]
    out = boxed(Sandbox(readonly=[tmp_path]), [sys.executable, "-c", CONNECT, *map(str, daemons)])
    lines = out.splitlines()
    assert len(lines) == len(daemons) and all(" refused: " in line for line in lines), out
    assert boxed(Sandbox(), ["ls", "-A", "/run"]) == ""  # the host's runtime folder is empty there


def test_a_box_still_reaches_its_port_and_the_sockets_of_its_own_trees(host_dirs):
    """A CLI agent's box reaches the org and the gateway only through the sockets of its port;
    what it binds in its own worktree is its own."""
    port, tree = host_dirs[-1] / "port", host_dirs[-1] / "worktree"
    port.mkdir()
    tree.mkdir()
    reachable = [serve(port / "org.sock"), serve(port / "gateway.sock"), serve(tree / "own.sock")]
    stranger = serve(host_dirs[-1] / "daemon.sock")
    box = Sandbox(writable=[tree], sockets=[port])
    out = boxed(box, [sys.executable, "-c", CONNECT, *map(str, reachable + [stranger])])
    assert out.splitlines() == [f"{path} ANSWERED" for path in reachable] + [f"{stranger} refused: Connection refused"]


def test_a_box_cannot_drive_the_orgs_tmux_server(host_dirs, monkeypatch):
    """The org's tmux server, its socket where TMUX_TMPDIR says (outside /tmp): from a box,
    `tmux run-shell` ran its command as the harness, outside the box."""
    base = host_dirs[-1]
    monkeypatch.setenv("TMUX_TMPDIR", str(base))
    tmux = ["tmux", "-S", str(base / f"tmux-{os.getuid()}" / f"nanolab-test-{uuid.uuid4().hex[:8]}")]
    (base / f"tmux-{os.getuid()}").mkdir(mode=0o700)
    subprocess.run(tmux + ["-f", "/dev/null", "new-session", "-d", "sleep 120"], check=True)
    proof = base / "ran-outside-the-box"
    try:
        out = boxed(Sandbox(), tmux + ["run-shell", f"touch {proof}"], env={"TMUX_TMPDIR": str(base)})
        assert subprocess.run(tmux + ["has-session"]).returncode == 0  # the server was there all along
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)  # ours alone: its own socket
    assert not proof.exists(), out


def test_programs_the_box_runs_from_run_are_still_there(host_dirs):
    """NixOS keeps every program under /run/current-system/sw/bin: the folders of a box's PATH
    that lie in /run are bound back, read-only; the rest of /run stays empty."""
    if not host_dirs or not host_dirs[0].is_relative_to("/run"):
        pytest.skip("/run is not ours to write here")
    bin_dir = host_dirs[0] / "sw" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "hello").write_text("#!/bin/sh\necho hello from /run\n")
    (bin_dir / "hello").chmod(0o755)
    serve(host_dirs[0] / "daemon.sock")
    out = boxed(Sandbox(), ["sh", "-c", f"hello; ls -A {host_dirs[0]}; touch {bin_dir}/x 2>/dev/null || echo read-only"],
                env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.splitlines() == ["hello from /run", "sw", "read-only"]


def test_a_socket_that_goes_away_as_a_box_starts_does_not_turn_the_sandbox_off(monkeypatch):
    """Seen in CI: another test's tmux server went away between /proc/net/unix and bwrap's bind of
    /dev/null over its socket; bwrap could not make the socket's folder again (read-only), the
    one check failed, and `org run` ran that program's trainers unboxed. The check tries again."""
    from org import sandbox
    gone = Path(f"/var/tmp/nanolab-gone-{os.getpid()}/tmux-0/default")
    calls = []
    monkeypatch.setattr(sandbox, "WORKING_BWRAP", set())  # (a box that ran before in this process: not tried)
    monkeypatch.setattr(sandbox, "bound_sockets", lambda: calls.append(1) or ([gone] if len(calls) == 1 else []))
    assert available() is None and len(calls) == 2
    monkeypatch.setattr(sandbox, "WORKING_BWRAP", set())
    monkeypatch.setattr(sandbox, "bound_sockets", lambda: [gone])  # never comes back: a clear line
    assert "no sandbox: bwrap fails here" in available()


# wait for the socket the host binds once the box has started, then connect to it
CONNECT_LATER = """
import os, socket, sys, time
path, t0 = sys.argv[1], time.monotonic()
while not os.path.exists(path):  # (bound on the host just after the box began)
    if time.monotonic() - t0 > 5:
        sys.exit("unseen: its folder is not in this box")
    time.sleep(0.05)
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    print(s.recv(100).decode().strip())
except OSError as e:
    print("refused:", e.strerror)
"""


def test_no_box_but_a_clis_reaches_a_socket_bound_after_it_started(host_dirs, tmp_path):
    """The masks are made as a box starts. A daemon started while a run trains (minutes to
    hours), or while an agent's command runs, its socket in a folder the box sees, was reachable
    for the rest of it: a run's box, a model worker's and an agent's command box cannot make a
    unix socket at all. A CLI's box still can: it reaches its port through one."""
    from agentlab import make_project, tiny_program, worktree
    from org.agents.tools import command_box
    from org.lab import Lab
    folder = host_dirs[-1] if host_dirs else pytest.skip("no folder outside /tmp to bind in")
    root, program = make_project(tmp_path, tiny_program([{"name": "solo", "backend": "scripted"}]), trainer=False)
    tree = worktree(root, program, "solo")
    lab = Lab.open(root)
    command = command_box(lab, tree, program, "solo")
    lab.close()
    for folder_of_run in ("run", "snapshot", "data", "port"):
        (tmp_path / folder_of_run).mkdir()
    boxes = {"an agent's command": command, "a CLI's": command.with_extra(sockets=[tmp_path / "port"]),
             # (a scoring worker's of a program on a file sees the socket's folder; a run's box, on every program,
             # sees no folder at / but the system's: sandbox.run_box)
             "a model worker's": worker_box(root, tmp_path / "snapshot", tmp_path / "data", tmp_path / "kernels",
                                            gpu=False, source=str(tmp_path / "data")),
             "a run's": run_box(root, tmp_path / "run", tmp_path / "snapshot", tmp_path / "data", tmp_path / "kernels",
                                gpu=False, cpu_seconds=60, source=str(tmp_path / "data"))}
    outcomes = {}
    for name, box in boxes.items():
        path = folder / f"late-{len(outcomes)}.sock"
        proc = box.popen([sys.executable, "-c", CONNECT_LATER, str(path)], cwd="/", env={"PATH": os.environ["PATH"]},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        serve(path)  # after the box has started: no mask for it
        outcomes[name] = proc.communicate(timeout=60)[0].decode().strip()
    refused = "refused: Address family not supported by protocol"
    assert outcomes == {"an agent's command": refused, "a CLI's": "ANSWERED", "a model worker's": refused,
                        "a run's": "unseen: its folder is not in this box"}, outcomes


IO_URING_AND_DGRAM = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params
print("io_uring_setup:", errno.errorcode.get(ctypes.get_errno(), "made") if libc.syscall(425, 1, params) < 0 else "made")
try:
    socket.socketpair(type=socket.SOCK_DGRAM)
    print("datagram pair: made")
except OSError as e:
    print("datagram pair:", errno.errorcode[e.errno])
a, b = socket.socketpair()  # asyncio's and multiprocessing's: still there
a.sendall(b"x")
print("stream pair:", b.recv(1).decode())
"""


def test_a_runs_box_has_no_other_way_to_a_named_socket():
    """io_uring's socket and connect operations never pass through seccomp; a datagram socket
    from socketpair() could sendto() any named one."""
    out = boxed(Sandbox(unix_sockets=False), [sys.executable, "-c", IO_URING_AND_DGRAM])
    assert out.splitlines()[0] in ("io_uring_setup: ENOSYS",), out
    assert out.splitlines()[1:] == ["datagram pair: EPERM", "stream pair: x"], out


def test_a_runs_box_starts_whatever_host_socket_goes_away_as_it_starts(monkeypatch):
    """The race above failed a model worker's box now and then in CI (the measurement then read
    as the harness's failure). A box that can make no unix socket masks none, so it cannot lose it."""
    from org import sandbox
    gone = Path(f"/var/tmp/nanolab-gone-{os.getpid()}/tmux-0/default")
    monkeypatch.setattr(sandbox, "bound_sockets", lambda: [gone])
    assert boxed(Sandbox(unix_sockets=False), ["echo", "started"]) == "started\n"
    assert "started" not in boxed(Sandbox(), ["echo", "started"])  # a box that masks sockets lost it, 5 times


def test_a_box_that_masks_sockets_is_made_again_when_one_goes_away_as_it_starts(monkeypatch):
    """A CLI's box (it reaches its port through a socket, so it masks the host's) failed to start
    once in a loaded test run, another test's tmux server gone between the scan and bwrap's bind;
    its keeper restarted the agent. A box is now made again when bwrap failed to make it, its
    command not yet run."""
    from org import sandbox
    gone = Path(f"/var/tmp/nanolab-gone-{os.getpid()}/tmux-0/default")
    calls = []
    monkeypatch.setattr(sandbox, "bound_sockets", lambda: calls.append(1) or ([gone] if len(calls) == 1 else []))
    assert boxed(Sandbox(), ["echo", "started"]) == "started\n"  # (bwrap's line went with the first box)
    assert len(calls) == 2


def test_a_boxs_command_holds_none_of_the_harnesss_pipes():
    """The box's first step holds two pipes of the harness's: the one that says the harness lives,
    and the one it says the box began on. A command that kept the second could write a line of
    its own there; it holds neither, nor bwrap's info and filter descriptors: only 0, 1 and 2."""
    listing = "import os; print(*sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"
    fds = boxed(Sandbox(), [sys.executable, "-c", listing]).split()
    assert fds[:3] == ["0", "1", "2"] and len(fds) == 4, fds  # (the fourth: the listing's own)


def test_a_box_whose_command_fails_at_once_is_not_run_twice(tmp_path):
    """Only a box bwrap could not make is made again: a command that began, whatever it did, ran once."""
    log = tmp_path / "ran"
    box = Sandbox(writable=[tmp_path])
    proc = box.popen(["sh", "-c", f"echo once >> {log}; exit 1"], cwd="/", env={"PATH": os.environ["PATH"]})
    assert proc.wait(timeout=60) == 1 and proc.began
    missing = box.popen(["/nonexistent/command"], cwd="/", env={"PATH": os.environ["PATH"]}, stderr=subprocess.PIPE)
    assert missing.wait(timeout=60) != 0 and missing.began and b"nonexistent" in missing.stderr.read()
    assert log.read_text() == "once\n"
