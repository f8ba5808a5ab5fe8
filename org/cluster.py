"""
Runs on a Ray cluster (`runner: {backend: ray, address: http://HEAD:8265}`): each run is one Ray
job, submitted through the Jobs API; the ledger stays the queue and the runner the only judge.

    jobs = RayJobs("http://127.0.0.2:8265", gpu=False)   # OrgError (one line) if unusable
    jobs.slots()              # runs the cluster holds at once, by kind of device: {"kind:epyc": 2, ...}
    jobs.submit("nanolab-softcap-1a2b3c4d-run7-a1", argv, cwd, env, log, box, timeout, grace, kind)
    returncode, killed = jobs.wait(job_id, timeout, grace, stopping)
    jobs.machine(job_id)      # the device model the job's node reported: "NVIDIA H200"

Why jobs: a job belongs to the cluster, so a runner SIGKILLed mid-run leaves it running, and the
next runner finds it again by its id (deterministic: program, ledger, run, attempt) and adopts
it. A slot is a custom `slot` resource on CPU nodes (`ray start --resources '{"slot": 1}'`) or
one GPU; the runner submits only when one of its slot threads is free, so jobs never queue in
Ray. The run's snapshot, data and run directory are paths on a filesystem every node shares
(one machine, or NFS): the job runs the same command line the local runner would, in the same
box (bwrap), and writes result.json, metrics and the checkpoint where the runner reads them.
The harness's measurement of each run happens on the runner's machine, as for local runs.

Kinds of device: a node's kind is what the cluster declares of it, Ray's own
`accelerator_type:<GPU model>` resource on GPU nodes, or a `kind:<name>` resource its operator
gives it (`ray start --resources '{"slot": 1, "kind:epyc-7b13": 1}'`). Each slot has a kind; a
job asks for a sliver of its kind's resource, so Ray places it on a node of that kind. The
runner keeps every run of one seed on one kind (baseline and variants alike: they are compared
seed by seed), and each job's process names the device it ran on (machine()), so the referee
sees what the harness saw, not what the operator declared.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

from org import OrgError
from org.ledger import Ledger
from org.sandbox import Sandbox

POLL_SECONDS = 0.25
UNANSWERED_SECONDS = 60  # the cluster silent this long: the runner stops (its jobs go on, adopted later)
GPU = "@RAY_GPU@"  # a run's CUDA_VISIBLE_DEVICES on a cluster: whichever GPU Ray gives its job
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
KIND_SHARE = 0.001  # a job's request of its node's kind resource: placement only, never scarce
MACHINE_LINE = "nanolab machine: "  # how a job's own process names its device, in the job's log
STOPPED_LINE = "nanolab stopped: "  # and why the harness killed the run's box, if it did (org/diskwatch.py)


class RayJobs:
    def __init__(self, address: str, gpu: bool):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise OrgError("runner.backend ray needs Ray: pip install -e '.[ray]' (on the runner's "
                           "machine and on every node)") from None
        self.address, self.gpu = address, gpu
        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:  # ConnectionError, ValueError: Ray's words for an unreachable head
            raise OrgError(f"runner.address {address}: no Ray cluster answers there "
                           f"({_first_line(e)})") from None

    def slots(self) -> dict[str | None, int]:
        """How many runs the cluster holds at once, by kind of device: {kind: slots} over the
        nodes alive now, a slot being a `slot` resource (a GPU for a GPU program). None is the
        kind of a cluster that declares none. No slot, or kinds declared on some nodes only, is
        refused before any run is claimed."""
        from ray.util.state import list_nodes
        try:
            nodes = list_nodes(address=self.address, detail=True)
        except Exception as e:
            raise OrgError(f"runner.address {self.address}: cannot list the cluster's nodes ({_first_line(e)})") from None
        alive = {n.node_id: n.resources_total for n in nodes if n.state == "ALIVE"}
        return slots_by_kind(self.address, alive, self.gpu)

    def submit(self, job_id: str, argv: list[str], cwd, env: dict, log, box: Sandbox | None,
               timeout: float, grace: float, kind: str | None = None) -> str:
        """Start argv as job `job_id` on a free slot of `kind` (any node when None): in `box` (the
        local runner's, rebuilt on the node by launch() below), in cwd, with exactly `env`, its
        output in `log`, stopped past `timeout` seconds (SIGTERM, SIGKILL `grace` seconds later).
        Submitting an id that already exists adopts that job (a runner that died after submitting)."""
        job = {"argv": argv, "cwd": str(cwd), "env": env, "log": str(log), "box": box.spec() if box else None,
               "timeout": timeout, "grace": grace}
        # exec: the job's process is launch() itself, so stop_job's SIGTERM reaches it, not a shell
        entrypoint = "exec " + shlex.join([sys.executable, "-P", "-m", "org.cluster", json.dumps(job)])
        resources = {kind: KIND_SHARE} if kind else {}
        slot = (dict(entrypoint_num_gpus=1, entrypoint_resources=resources) if self.gpu
                else dict(entrypoint_resources={"slot": 1, **resources}))
        runtime_env = {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(int(grace))}}
        try:
            return self.client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                                          metadata={"nanolab": job_id}, **slot)
        except RuntimeError as e:
            if "already exists" in str(e):
                return job_id
            raise OrgError(f"runner.address {self.address}: submitting {job_id} failed ({_first_line(e)})") from None

    def status(self, job_id: str) -> str | None:
        """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED; None when the cluster has no such job."""
        info = self.info(job_id)
        return str(info.status) if info else None

    def node(self, job_id: str) -> str | None:
        info = self.info(job_id)
        return (info.driver_node_id or None) if info else None

    def machine(self, job_id: str) -> str | None:
        """The device the job's node trained on, as the job's own process (launch(), harness
        code outside the run's box) named it in the job's log; None if it never got that far."""
        return self.said(job_id, MACHINE_LINE)

    def said(self, job_id: str, mark: str) -> str | None:
        """The first line of the job's own output (launch()'s, harness code) that starts with mark,
        without it; None if there is none, or no log."""
        try:
            logs = self.client.get_job_logs(job_id)
        except Exception:  # gone with its node or its head
            return None
        named = [line[len(mark):].strip() for line in logs.splitlines() if line.startswith(mark)]
        return named[0] if named else None

    def info(self, job_id: str):
        """The job's JobDetails, None if the cluster has no such job. A head that does not answer
        is asked again for UNANSWERED_SECONDS, then OrgError: the runner stops, the jobs go on."""
        deadline = time.monotonic() + UNANSWERED_SECONDS
        while True:
            try:
                return self.client.get_job_info(job_id)
            except Exception as e:  # requests' ConnectionError, or Ray's RuntimeError with HTTP status
                if "does not exist" in str(e):
                    return None
                if time.monotonic() > deadline:
                    raise OrgError(f"runner.address {self.address}: the cluster stopped answering "
                                   f"({_first_line(e)}); its jobs go on, and `org run` again adopts them") from None
            time.sleep(1.0)

    def wait(self, job_id: str, timeout: float, grace: float, stopping) -> tuple[int | None, str | None]:
        """Wait for the job: (its exit status, None if the cluster lost it with its node; why it
        was killed, or None). Its time cap is enforced on the node (launch() below: SIGTERM to the
        trainer, which writes a 'killed' result after its step); stop_job only if that fails, or
        when `stopping` (an Event: Ctrl-C, org stop) is set, which reads as 'stopping'."""
        killed, started = None, None
        while True:
            info = self.info(job_id)
            if info is None:  # gone from the cluster's records with its head: as a lost job
                return None, killed
            status = str(info.status)
            if status == "RUNNING" and started is None:
                started = time.monotonic()
            ran = time.monotonic() - started if started is not None else 0.0
            if status in TERMINAL:
                if killed is None and ran >= timeout:
                    killed = f"wall time over run_timeout_seconds ({timeout:g}s), killed by the runner"
                killed = killed or self.said(job_id, STOPPED_LINE)  # its disk, on the node
                code = getattr(info, "driver_exit_code", None)
                return (0 if status == "SUCCEEDED" and code is None else code), killed
            if killed is None and (stopping.is_set() or ran > timeout + grace + 30):
                killed = "stopping" if stopping.is_set() else f"wall time over run_timeout_seconds ({timeout:g}s), " \
                                                              "killed by the runner"
                self.stop(job_id)
            time.sleep(POLL_SECONDS)

    def stop(self, job_id: str):
        try:
            self.client.stop_job(job_id)
        except RuntimeError:  # finished meanwhile, or gone with its node
            pass


def connect(program, ledger_path) -> tuple[RayJobs, str]:
    """The program's cluster, checked before any run is claimed (OrgError: one line), and the
    key that makes its job ids unique to this ledger and stable across the runner's restarts."""
    jobs = reach(program)
    with Ledger(ledger_path) as ledger:
        started = ledger.program(program.name)["created_at"]
    return jobs, hashlib.sha1(f"{ledger_path.resolve()}:{started}".encode()).hexdigest()[:8]


def reach(program) -> RayJobs | None:
    """The cluster of a program whose runs go to Ray, once it answers and has slots for them
    (OrgError: one line); None for a program that runs here. `org run` and `org launch` ask
    before they create anything: a program started on an address that was a typo was left behind."""
    if program.runner.backend != "ray":
        return None
    try:
        jobs = RayJobs(program.runner.address, gpu=program.train.device == "cuda")
        jobs.slots()
    except OrgError as e:
        raise OrgError(f"program {program.name}: {e}") from None
    return jobs


def slots_by_kind(address: str, nodes: dict[str, dict], gpu: bool) -> dict[str | None, int]:
    """{kind: slots} over nodes ({node id: its resources}); see slots()."""
    resource, kinds, undeclared = ("GPU" if gpu else "slot"), {}, []
    for node, resources in sorted(nodes.items()):
        n = int(resources.get(resource, 0))
        if n:
            kind = node_kind(resources, gpu)
            kinds[kind] = kinds.get(kind, 0) + n
            undeclared += [node[:12]] if kind is None else []
    if not kinds:
        how = "start nodes with GPUs" if gpu else "start nodes with `ray start --resources '{\"slot\": 1}'`"
        raise OrgError(f"runner.address {address}: the cluster has no {resource!r} resource for runs to take; {how}")
    if undeclared and len(kinds) > 1:  # a run there could not be kept with its seed's others
        raise OrgError(f"runner.address {address}: node{'s' * (len(undeclared) > 1)} {', '.join(undeclared)} "
                       f"declare{'s' * (len(undeclared) == 1)} no kind of device while others do "
                       f"({', '.join(sorted(k for k in kinds if k))}); give every node a `kind:<name>` resource")
    return kinds


def node_kind(resources: dict, gpu: bool) -> str | None:
    """The resource that names a node's kind of device: its operator's `kind:<name>`, else (for
    a GPU program) Ray's `accelerator_type:<model>`; None when the node declares neither."""
    for prefix in ("kind:",) + (("accelerator_type:",) if gpu else ()):
        named = sorted(key for key in resources if key.startswith(prefix))
        if named:
            return named[0]
    return None


def job_id(program: str, ledger_key: str, run_id: int, attempt: int) -> str:
    """The job's id, chosen by us: a runner that restarts finds the job of a claimed run again."""
    return f"nanolab-{program}-{ledger_key}-run{run_id}-a{attempt}"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# --- on the node: the job's own process ------------------------------------------------------

def launch(job: dict) -> int:
    """The job's process (`python -m org.cluster JOB`): the run's command in the same box the
    local runner makes (limits and process cgroup included), its output in the log, and its time
    cap as the local runner keeps it: past `timeout` a SIGTERM to the trainer itself (stop_job
    would signal the box too, and the box's death kills the trainer before it writes its `killed`
    result), SIGKILL `grace` seconds later. The job ends as the command did (a signal, as one)."""
    env = dict(job["env"])
    if env.get("CUDA_VISIBLE_DEVICES") == GPU:  # the GPU Ray gave this job
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(MACHINE_LINE + machine(env.get("CUDA_VISIBLE_DEVICES")), flush=True)  # before the run can act
    with open(job["log"], "wb") as log:
        how = dict(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if job["box"]:
            proc = Sandbox.from_spec(job["box"]).popen(job["argv"], job["cwd"], env, **how)
        else:
            proc = subprocess.Popen(job["argv"], cwd=job["cwd"], env=env, **how)
    try:
        code = proc.wait(timeout=job["timeout"])
    except subprocess.TimeoutExpired:
        os.kill(getattr(proc, "inner_pid", proc.pid), signal.SIGTERM)
        try:
            code = proc.wait(timeout=job["grace"])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    if getattr(proc, "stopped", None):  # its disk (org/diskwatch.py): for the runner's record
        print(STOPPED_LINE + proc.stopped, flush=True)
    if code < 0:  # died of a signal: so does the job, and the runner reads it as such
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def machine(gpus: str | None = None) -> str:
    """The model of the device a run trains on, seen by harness code on the machine that runs
    it: the first of `gpus` (CUDA_VISIBLE_DEVICES) by nvidia-smi's name for it, else the CPU."""
    if gpus:
        try:
            named = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i",
                                    gpus.split(",")[0]], capture_output=True, text=True, timeout=20)
            if named.returncode == 0 and named.stdout.strip():
                return named.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        return f"GPU {gpus.split(',')[0]} (nvidia-smi did not name it)"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "an unknown CPU"


if __name__ == "__main__":
    sys.exit(launch(json.loads(sys.argv[1])))
