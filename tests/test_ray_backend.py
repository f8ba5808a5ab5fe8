"""The runner on a real Ray cluster: two nodes on loopback addresses (127.0.0.2 and .3), each with
one `slot`, started and torn down here (only this module's own processes). Each run is a Ray
job; the ledger is still the queue, and a runner SIGKILLed mid-run adopts its job on restart.

Skipped only where Ray is not installed (`pip install -e '.[ray]'`); CI installs it."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from org.cli import main
from org.ledger import Ledger
from test_org_runner import create_project, ledger_of, tiny_program

pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.slow


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ray_start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                             "--resources", '{"slot": 1}', "--object-store-memory", str(100 << 20), *args],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.fixture(scope="module")
def cluster():
    """The Jobs API address of a fresh two-node cluster (a head and one worker node)."""
    from ray.util.state import list_nodes
    temp = Path(tempfile.mkdtemp(prefix="nlray", dir="/tmp"))  # short: Ray's socket paths must fit
    gcs, dashboard = free_port("127.0.0.2"), free_port("127.0.0.1")
    head = ray_start(["--head", "--node-ip-address", "127.0.0.2", "--port", str(gcs), "--temp-dir", str(temp),
                      "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)], temp / "head.log")
    address = f"http://127.0.0.1:{dashboard}"
    nodes = [head]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(nodes) < 2:
            time.sleep(1)
            try:
                list_nodes(address=address)
            except Exception:
                continue
            nodes.append(ray_start(["--address", f"127.0.0.2:{gcs}", "--node-ip-address", "127.0.0.3"],
                                   temp / "node.log"))
        while time.monotonic() < deadline:
            try:
                if sum(n.state == "ALIVE" for n in list_nodes(address=address)) == 2:
                    break
            except Exception:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"the Ray cluster did not come up: {(temp / 'head.log').read_text()[-2000:]}")
        yield address
    finally:
        for proc in reversed(nodes):  # ours only, by process group: never `ray stop`
            with_group(proc, signal.SIGTERM)
        for proc in nodes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with_group(proc, signal.SIGKILL)
                proc.wait()
        for proc in nodes:
            with_group(proc, signal.SIGKILL)  # what the node left in its group


def with_group(proc: subprocess.Popen, sig: int):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def ray_program(address: str, **changes) -> dict:
    return tiny_program(runner={"backend": "ray", "address": address, "threads_per_slot": 1}, **changes)


def jobs_of(address: str, run: dict) -> list:
    from ray.job_submission import JobSubmissionClient
    prefix = run["job_id"].rsplit("-a", 1)[0] + "-a"
    return [j for j in JobSubmissionClient(address).list_jobs() if (j.submission_id or "").startswith(prefix)]


def test_runs_spread_over_the_clusters_slots_one_at_a_time_with_the_local_backends_numbers(cluster, tmp_path,
                                                                                            monkeypatch, capsys):
    root = create_project(tmp_path / "ray", ray_program(cluster))
    local = create_project(tmp_path / "local", tiny_program(runner={"threads_per_slot": 1}))
    for where in (root, local):
        monkeypatch.chdir(where)
        assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    with ledger_of(local) as ledger:
        local_runs = ledger.runs("tiny")
        here = {(r["arm"], r["seed"], r["purpose"]): r["val_bpb"] for r in local_runs}
    assert all(r["status"] == "completed" and r["job_id"] for r in runs), [(r["status"], r["reason"]) for r in runs]
    assert len({r["node"] for r in runs}) == 2                       # both nodes took runs
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
    budget = {**tiny_program()["budget"], "per_run": {"steps": 1_000_000}, "seeds": [0], "run_timeout_seconds": 4}
    root = create_project(tmp_path / "proj", ray_program(cluster, variants=[], budget=budget))
    monkeypatch.chdir(root)
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "killed" and "run_timeout_seconds (4s)" in run["reason"]
    result = json.loads(run["result"])
    assert result["status"] == "killed" and 0 < result["steps"] < 1_000_000   # the trainer wrote it, on SIGTERM


def test_an_unreachable_cluster_is_one_line_and_nothing_is_claimed(tmp_path, monkeypatch, capsys):
    root = create_project(tmp_path / "proj", ray_program(f"http://127.0.0.1:{free_port('127.0.0.1')}"))
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
