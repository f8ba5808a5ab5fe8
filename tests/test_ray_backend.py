"""The runner on a real Ray cluster: two nodes on loopback addresses (127.0.0.2 and .3), each with
one `slot`, started and torn down here (only this module's own processes); the tests that kill
a node or a whole cluster start clusters of their own on other addresses. Each run is a Ray
job; the ledger is still the queue, and a runner SIGKILLed mid-run adopts its job on restart.

Skipped only where Ray is not installed (`pip install -e '.[ray]'`); CI installs it."""
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from org import OrgError
from org.cli import main
from org.cluster import machine, slots_by_kind
from org.ledger import Ledger
from org.sandbox import available
from test_diskwatch import FILLS_ITS_DIRECTORY
from test_org_runner import agent_commit, create_project, ledger_of, tiny_program

pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install -e '.[ray]'")
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_backend")]  # one worker builds its module fixture


HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on every address (bound on 0.0.0.0 for a moment), below the kernel's range for
    ephemeral ports, and never one handed out before in this process. Ray binds them seconds
    later, its client server on 127.0.0.1 whatever the node's address: a port found free on
    127.0.0.2 alone, from the ephemeral range, was by then another test's server's on 127.0.0.1
    (`Address already in use`, seen in CI); two handed out alike, Ray refused its head."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        port = rng.randrange(max(1024, low - 12000), low)
        if port in HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        HANDED_OUT.add(port)
        return port


class Cluster:
    """A Ray cluster of this test's own processes, a head and nodes on loopback addresses of their
    own (127.0.0.1 is silently replaced by the machine's address), each `ray start --block` in a
    session of its own, killed by process group and by descent (a job's processes run in sessions
    of their own): never `ray stop`, which kills by name. Ports are free ones, so two clusters
    can live side by side."""

    def __init__(self, head_ip: str, head_slots: int, kind: str | None = None):
        self.temp = Path(tempfile.mkdtemp(prefix="nlray", dir="/tmp"))  # short: Ray's socket paths must fit
        self.head_ip, self.gcs, dashboard = head_ip, free_port(), free_port()
        self.address = f"http://127.0.0.1:{dashboard}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.start(head_ip, head_slots, kind, ["--head", "--port", str(self.gcs), "--temp-dir", str(self.temp),
                                         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                                         "--ray-client-server-port", str(free_port())])

    def start(self, ip: str, slots: int, kind: str | None = None, args=()) -> None:
        """A node with `slots` slots, declaring a kind of device if given (`kind:<name>`)."""
        if self.nodes:
            self.wait_for(len(self.nodes))  # a node joins a head that answers
            args = ["--address", f"{self.head_ip}:{self.gcs}"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.nodes[ip] = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--block", "--disable-usage-stats",
             "--node-ip-address", ip, "--num-cpus", "1", "--resources", json.dumps({"slot": slots, **({f"kind:{kind}": 1} if kind else {})}),
             "--object-store-memory", str(100 << 20), "--dashboard-agent-listen-port", str(free_port()),
             *args],
            stdout=(self.temp / f"{ip}.log").open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_for(self, alive: int):
        from ray.util.state import list_nodes
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if sum(n.state == "ALIVE" for n in list_nodes(address=self.address)) >= alive:
                    return
            except Exception:  # the head is still coming up
                pass
            time.sleep(1)
        pytest.fail(f"the Ray cluster did not come up: {(self.temp / f'{self.head_ip}.log').read_text()[-2000:]}")

    def kill(self, ip: str, sig: int = signal.SIGKILL):
        """The node and everything it started, as if its machine went away."""
        proc = self.nodes.pop(ip)
        doomed = descendants(proc.pid)
        for pid, born in doomed.items():
            if still(pid, born):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(still(pid, born) for pid, born in doomed.items()):
            time.sleep(0.2)
        for pid, born in doomed.items():  # what a SIGTERM did not end by now
            if still(pid, born):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()

    def close(self):
        for ip in reversed(list(self.nodes)):
            self.kill(ip, signal.SIGTERM)


def descendants(pid: int) -> dict[int, str]:
    """Every process below pid, from /proc, whatever session it put itself in: {pid: its start
    time}, so that a pid the system has given to someone else since is never signalled."""
    parent, born = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)], born[int(stat.parent.name)] = int(fields[1]), fields[19]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return {p: born[p] for p in found}


def still(pid: int, born: str) -> bool:
    """pid is the very process seen before (not a new one with its number)."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == born
    return False


@pytest.fixture(scope="module")
def cluster():
    """The Jobs API address of a fresh two-node cluster (a head and one worker node, a slot each),
    declaring two kinds of device, so that a seed's runs must keep to one node."""
    ray = Cluster("127.0.0.2", head_slots=1, kind="alpha")
    try:
        ray.start("127.0.0.3", slots=1, kind="beta")
        ray.wait_for(2)
        yield ray.address
    finally:
        ray.close()


def ray_program(address: str, **changes) -> dict:
    return tiny_program(runner={"backend": "ray", "address": address, "threads_per_slot": 1}, **changes)


def jobs_of(address: str, run: dict) -> list:
    from ray.job_submission import JobSubmissionClient
    prefix = run["job_id"].rsplit("-a", 1)[0] + "-a"
    return [j for j in JobSubmissionClient(address).list_jobs() if (j.submission_id or "").startswith(prefix)]


def test_runs_spread_over_the_clusters_slots_one_at_a_time_with_the_local_backends_numbers(cluster, tmp_path,
                                                                                            monkeypatch, capsys):
    root = create_project(tmp_path / "ray", tiny_program(runner={"threads_per_slot": 1}))
    local = create_project(tmp_path / "local", tiny_program(runner={"threads_per_slot": 1}))
    for lab in (root, local):  # one split key and one stream key for both labs: each draws its own by them
        (lab / ".lab" / "harness-cache").mkdir(parents=True, exist_ok=True)
        (lab / ".lab" / "harness-cache" / "split-key").write_bytes(b"the same key for both labs")
        (lab / ".lab" / "harness-cache" / "stream-key").write_bytes(b"the same windows for both labs")
    for where, flags in ((root, ["--ray", cluster]), (local, [])):   # the same program file, run twice
        monkeypatch.chdir(where)
        assert main(["run", "tiny", *flags]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    with ledger_of(local) as ledger:
        local_runs = ledger.runs("tiny")
        here = {(r["arm"], r["seed"], r["purpose"]): r["val_bpb"] for r in local_runs}
    assert all(r["status"] == "completed" and r["job_id"] for r in runs), [(r["status"], r["reason"]) for r in runs]
    assert len({r["node"] for r in runs}) == 2                       # both nodes took runs
    for seed in (0, 1):  # yet each seed's baseline and variant ran on one kind (here: one node)
        assert len({(r["kind"], r["node"]) for r in runs if r["seed"] == seed}) == 1, runs
    assert {r["kind"] for r in runs} == {"kind:alpha", "kind:beta"}
    assert {r["machine"] for r in runs} == {machine()}  # named on the node by the job's own process
    for r in runs:  # deterministic runs: the cluster changes nothing but where they ran
        assert r["val_bpb"] == here[(r["arm"], r["seed"], r["purpose"])]
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(cluster)
    spans = {}
    for r in runs:
        info = client.get_job_info(r["job_id"])
        assert info.driver_node_id == r["node"]
        spans.setdefault(r["node"], []).append((info.start_time, info.end_time))
    for node, times in spans.items():  # one job at a time on each node's one slot
        times.sort()
        assert all(end <= start for (_, end), (start, _) in zip(times, times[1:])), (node, times)
    as_job, as_child = (sum(r["wall_seconds"] for r in rs) / len(rs) for rs in (runs, local_runs))
    with capsys.disabled():  # the dispatch overhead, measured (the runner's clock, submit to end)
        print(f"\nRay dispatch overhead per run: {as_job - as_child:+.2f}s (a 3-step tiny run took {as_job:.2f}s "
              f"as a Ray job, {as_child:.2f}s as the local runner's child; mean of {len(runs)} runs each)")


def test_a_runner_killed_mid_run_adopts_its_job_and_nothing_runs_twice(cluster, tmp_path, monkeypatch):
    budget = {**tiny_program()["budget"], "per_run": {"steps": 300}}
    root = create_project(tmp_path / "proj", ray_program(cluster, variants=[], budget=budget))
    monkeypatch.chdir(root)
    runner = subprocess.Popen([sys.executable, "-m", "org.cli", "run", "tiny"], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from ray.job_submission import JobSubmissionClient
    client, victim = JobSubmissionClient(cluster), None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if not (root / ".lab" / "tiny" / "ledger.sqlite").exists():
            continue
        with ledger_of(root) as ledger:
            running = [r for r in ledger.runs("tiny", status="running") if r["job_id"]]
        for r in running:
            try:
                if str(client.get_job_info(r["job_id"]).status) == "RUNNING":
                    victim = r
            except RuntimeError:  # claimed, not submitted yet
                pass
    assert victim is not None, "no run got under way on the cluster"
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    assert str(client.get_job_info(victim["job_id"]).status) in ("RUNNING", "SUCCEEDED")  # the job lives on
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
        again = ledger.run(victim["id"])
    assert sorted(r["seed"] for r in runs) == [0, 1] and all(r["status"] == "completed" for r in runs)
    assert (again["attempts"], again["job_id"]) == (1, victim["job_id"])   # adopted, not run again
    assert [j.submission_id for j in jobs_of(cluster, again)] == [victim["job_id"]]


def test_a_run_past_its_timeout_is_stopped_and_keeps_its_killed_result(cluster, tmp_path, monkeypatch):
    budget = {**tiny_program()["budget"], "per_run": {"steps": 1_000_000}, "seeds": [0], "run_timeout_seconds": 10}
    root = create_project(tmp_path / "proj", ray_program(cluster, variants=[], budget=budget))
    monkeypatch.chdir(root)
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "killed" and "run_timeout_seconds (10s)" in run["reason"]
    result = run["result"]
    # the trainer wrote it, on SIGTERM (on a loaded CI machine, 4 s were once not enough for a first step)
    assert result.status == "killed" and 0 < result.steps < 1_000_000


@pytest.mark.skipif(available() is not None, reason=f"{available()}")
def test_a_run_that_fills_its_disk_on_a_node_is_killed_and_its_record_says_why(cluster, tmp_path, monkeypatch):
    """org/diskwatch.py on the cluster: the job's own process on the node watches the box and
    says why it killed it; the runner reads that from the job's log (as the local runner from
    the box). The bound is 16 GB; here 32 MB."""
    import org.runner
    real = org.runner.run_box
    monkeypatch.setattr(org.runner, "run_box", lambda *a, **k: real(*a, **k).with_extra(disk_bytes=32 << 20))
    root = create_project(tmp_path / "proj", ray_program(cluster, variants=[],
                                                         budget={**tiny_program()["budget"], "seeds": [0]}))
    monkeypatch.chdir(root)
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text.replace(*FILLS_ITS_DIRECTORY))
    assert main(["submit", "tiny", "--arm", "mallory", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = {r["arm"]: r for r in ledger.runs("tiny") if r["purpose"] == "main"}
    assert runs["baseline"]["status"] == "completed"
    assert runs["mallory"]["status"] == "killed", runs["mallory"]
    assert runs["mallory"]["reason"].startswith("killed by the harness: its writable trees grew by")
    assert sum(p.stat().st_size for p in Path(runs["mallory"]["run_dir"]).glob("junk*")) < 300 << 20


def test_a_clusters_slots_by_kind_of_device_and_a_half_declared_cluster_refused():
    cpu = {"a1": {"CPU": 8, "slot": 2, "kind:epyc": 1}, "b2": {"CPU": 8, "slot": 1, "kind:xeon": 1},
           "c3": {"CPU": 8}}  # c3 takes no runs (no slot), so it need not declare anything
    assert slots_by_kind("http://h:8265", cpu, gpu=False) == {"kind:epyc": 2, "kind:xeon": 1}
    gpus = {"a1": {"GPU": 8, "accelerator_type:H100": 1}, "b2": {"GPU": 4, "accelerator_type:A100": 1}}
    assert slots_by_kind("http://h:8265", gpus, gpu=True) == {"accelerator_type:H100": 8, "accelerator_type:A100": 4}
    assert slots_by_kind("http://h:8265", {"a1": {"slot": 1}, "b2": {"slot": 3}}, gpu=False) == {None: 4}
    with pytest.raises(OrgError) as refused:
        slots_by_kind("http://h:8265", {**cpu, "d4": {"slot": 1}}, gpu=False)
    assert str(refused.value) == ("runner.address http://h:8265: node d4 declares no kind of device while others "
                                  "do (kind:epyc, kind:xeon); give every node a `kind:<name>` resource")
    with pytest.raises(OrgError, match="has no 'GPU' resource"):
        slots_by_kind("http://h:8265", cpu, gpu=True)


def test_an_unreachable_cluster_is_one_line_and_nothing_is_claimed(tmp_path, monkeypatch, capsys):
    root = create_project(tmp_path / "proj", ray_program(f"http://127.0.0.1:{free_port()}"))
    monkeypatch.chdir(root)
    assert main(["run", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runner.address http://127.0.0.1:" in err and "Traceback" not in err
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        assert all(r["status"] == "queued" and r["attempts"] == 0 for r in ledger.runs("tiny"))


def test_a_program_on_ray_without_ray_installed_says_so(tmp_path, monkeypatch, capsys):
    root = create_project(tmp_path / "proj", ray_program("http://127.0.0.1:8265"))
    monkeypatch.chdir(root)
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # as where the extra is missing
    assert main(["run", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("runner.backend ray needs Ray: pip install -e '.[ray]' (on the runner's machine and on every node)")


def test_a_node_that_dies_mid_run_gives_its_run_back_to_the_queue(tmp_path):
    """Its job ends with no exit status; the run goes back to the queue as a new attempt and
    runs on the node that takes its place. The head offers no slot, so runs go to the nodes."""
    ray = Cluster("127.0.0.5", head_slots=0)
    try:
        ray.start("127.0.0.6", slots=1)
        ray.wait_for(2)
        budget = {**tiny_program()["budget"], "per_run": {"steps": 2000}, "seeds": [0]}
        root = create_project(tmp_path / "proj", ray_program(ray.address, variants=[], budget=budget))
        metrics = root / ".lab" / "tiny" / "runs" / "1" / "metrics.jsonl"
        runner = subprocess.Popen([sys.executable, "-m", "org.cli", "run", "tiny"], cwd=root,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        from ray.job_submission import JobSubmissionClient
        client, job = JobSubmissionClient(ray.address), None
        deadline = time.monotonic() + 120
        while job is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if (root / ".lab" / "tiny" / "ledger.sqlite").exists():
                with ledger_of(root) as ledger:
                    job = next((r["job_id"] for r in ledger.runs("tiny", status="running") if r["job_id"]), None)
            if job and not (metrics.exists() and metrics.read_text().strip()):
                job = None                          # not training yet
        assert job, "no run got under way on the cluster"
        ray.kill("127.0.0.6")                       # the node, the job's processes, the trainer
        ray.start("127.0.0.7", slots=1)             # and another takes its place
        out, _ = runner.communicate(timeout=300)
        print(out)  # the runner's log, whole, when the test fails (an assertion's message is cut)
        assert runner.returncode == 0, out
        with ledger_of(root) as ledger:
            run, = ledger.runs("tiny")
        # the retry can be lost as well (seen once in CI; Ray said no more than that the job ended
        # with no exit status): it is the third attempt then, the last the runner allows
        lost = run["attempt_log"].splitlines()
        assert run["status"] == "completed" and run["attempts"] == len(lost) + 1 in (2, 3), (run["attempt_log"], out)
        assert lost[0].endswith(f"attempt 1: job {job} ended with no exit status (its node lost?); re-queued"), lost
        assert all("ended with no exit status (its node lost?); re-queued" in line for line in lost), lost
        assert run["job_id"] != job and str(client.get_job_info(run["job_id"]).status) == "SUCCEEDED"
        assert Path(run["run_dir"]).with_name(f"{run['id']}.attempt1").is_dir()    # the lost attempt, kept
    finally:
        ray.close()


def test_org_launch_ray_keeps_the_cluster_for_the_runner_pane(tmp_path, monkeypatch):
    """`org launch --ray ADDRESS` records it with the launch's options; `org serve` (the runner's
    pane) opens the program through open_site, which applies it."""
    from org.workspace import open_site
    root = create_project(tmp_path / "proj", tiny_program())
    monkeypatch.chdir(root)
    panes = root / ".lab" / "tiny" / "panes"
    panes.mkdir(parents=True)
    (panes / "launch.json").write_text(json.dumps({"backend": None, "ray": "http://10.0.0.1:8265"}))
    runner = open_site("tiny").program.runner
    assert (runner.backend, runner.address) == ("ray", "http://10.0.0.1:8265")


def test_a_cluster_that_stops_answering_stops_the_runner_in_one_line_and_loses_nothing(
        tmp_path, monkeypatch, capsys):
    """The head gone mid-run: the runner asks again for a while (here 3 s), then stops with one
    line; the run stays claimed with its job id, for the next `org run` to adopt or re-queue."""
    import threading
    from org import cluster as ray_cluster
    monkeypatch.setattr(ray_cluster, "UNANSWERED_SECONDS", 3)
    ray = Cluster("127.0.0.8", head_slots=1)
    try:
        ray.wait_for(1)
        budget = {**tiny_program()["budget"], "per_run": {"steps": 2000}, "seeds": [0]}
        root = create_project(tmp_path / "proj", ray_program(ray.address, variants=[], budget=budget))
        monkeypatch.chdir(root)
        said = []
        runner = threading.Thread(target=lambda: said.append(main(["run", "tiny"])))
        runner.start()
        metrics = root / ".lab" / "tiny" / "runs" / "1" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metrics.exists(), "no run got under way on the cluster"
    finally:
        ray.close()                                  # the whole cluster, mid-run
    runner.join(120)
    err = capsys.readouterr().err.strip().splitlines()
    assert said == [2] and len(err) == 1 and "the cluster stopped answering" in err[0], err
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "running" and run["job_id"]   # on record, not lost, not counted
    assert main(["run", "tiny"]) == 2                      # no cluster there now: one line, nothing claimed
    assert "no Ray cluster answers there" in capsys.readouterr().err
