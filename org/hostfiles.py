"""
What of the host a box's uid 0 could change. Where the harness runs as root so does a box (uid
0, without capabilities), and the kernel lets uid 0 change what it owns, root's files:
- the kernel's settings in its /proc (`echo '|cmd' > /proc/sys/kernel/core_pattern`, then a
  crash, ran cmd as root outside every box): bound read-only (kernel_settings_read_only);
- the device files bwrap's --dev binds in, the host's: a box made /dev/null mode 000 for every
  later box and the host's own users, and wrote 450 kbit/s into its times for a box running
  beside it to read. Each box now binds copies of them, made for it alone and owned by nobody:
  it reads and writes the devices, and changes nothing of the files. The copies lie where no box
  looks. (A mode set on a file of a box's /proc held in every procfs: Sandbox.wrap remounts it
  read-only.)

    own_devices()       # bwrap's --dev-bind arguments: copies of BASIC at their paths
    forget(wrapped)     # once the box has ended: its copies go (a dead process's go at the next box)
    gpu_devices(visible)  # a GPU box's device files: its slot's GPUs' alone, and the driver's shared ones

Where the harness is not root no box is either, and the host's device files are bound as bwrap
binds them; so where copies cannot be made (a container that dropped CAP_MKNOD).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path

from org import pid_alive, user_cache

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # a folder per GPU (its PCI address), with its `information`
DEVICES = Path("/dev")
GPU_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")  # every GPU's
BASIC = ("null", "zero", "full", "random", "urandom", "tty")  # what bwrap's --dev binds from the host
NOBODY = 65534


def root() -> Path:
    return user_cache("devices")  # (hidden in every box: Sandbox.wrap)


def kernel_settings_read_only() -> list[str]:
    """bwrap's arguments binding the kernel's settings read-only over the box's own /proc (bwrap
    does so for /proc/sys only where it can first write it)."""
    return [arg for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
            for arg in ("--ro-bind-try", path, path)]


def own_devices(host: list[Path] | None = None, inside: list[Path] | None = None) -> list[str]:
    """bwrap's arguments binding, at each path inside, a copy of the host's device file, or of a
    folder of them (the host's own where none can be made, or it is neither: a test's stand-in);
    BASIC's by default. A copy grants everyone what the host's grants its owner, root, which the
    box was: it is the box's alone."""
    basic = host is None
    host = [Path("/dev") / name for name in BASIC] if basic else host
    inside = host if inside is None else inside
    folder = made() if os.geteuid() == 0 and host else None
    if folder is None and basic:
        return []  # (bwrap's --dev binds the host's already)
    args = [arg for source, target in zip(host, inside)
            for arg in ("--dev-bind", str(copied(source, folder / source.name) if folder else source), str(target))]
    if folder:
        with contextlib.suppress(OSError):
            folder.rmdir()  # (empty: nothing could be copied)
    return args


def copied(source: Path, copy: Path) -> Path:
    """A copy of a device file (or of each one in a folder of them) owned by nobody; source where none can be made."""
    try:
        st = os.stat(source)
        if stat.S_ISDIR(st.st_mode):
            copy.mkdir()
            for entry in os.scandir(source):
                copied(Path(entry.path), copy / entry.name)
            return copy
        if not stat.S_ISCHR(st.st_mode):
            return source
        rw = (st.st_mode >> 6) & 0o6
        os.mknod(copy, stat.S_IFCHR | 0o600, st.st_rdev)
        os.chmod(copy, rw << 6 | rw << 3 | rw)  # (whatever our umask)
        os.chown(copy, NOBODY, NOBODY)
        return copy
    except OSError:
        return source


MADE: set[Path] = set()  # the folders of copies this process made, until their box ends


def made() -> Path | None:
    """A new folder for one box's copies, named by this process (a dead one's are swept now)."""
    sweep()
    folder = root() / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir(parents=True)
        if os.statvfs(folder).f_flag & os.ST_NODEV:  # (no device opens there: the host's files, as before)
            folder.rmdir()
            return None
    except OSError:
        return None
    MADE.add(folder)
    return folder


def forget(wrapped: list[str]):
    """The copies a box's command line (wrapped) bound, once the box has ended: only folders this
    process made (the command's own words are in wrapped too: an agent's may name any path)."""
    for folder in {Path(b).parent for a, b in zip(wrapped, wrapped[1:]) if a == "--dev-bind"} & MADE:
        MADE.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)


def sweep():
    for folder in root().glob("*-*") if root().is_dir() else ():
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


# --- GPUs: a box binds only its own ------------------------------------------------------

def gpu_devices(visible: str | None) -> tuple[list[Path], str]:
    """The device files a GPU box binds, and its CUDA_VISIBLE_DEVICES inside. `visible` is the
    slot's CUDA_VISIBLE_DEVICES: GPU indices in nvidia-smi's order (the PCI bus's) or their UUIDs.
    The variable alone is advice the run's own code can drop before CUDA starts, and a box that
    bound every /dev/nvidia* let a run train on every GPU of the machine, other slots' included,
    with one on the record. With only its own device files there, CUDA finds only its GPUs, as
    0..n-1 inside. A name this machine has no GPU for binds nothing: CUDA then finds none, and the
    trainer says so. None (no variable): every GPU."""
    gpus = nvidia_gpus()
    if visible is None:
        chosen = gpus
    else:
        names = [v.strip() for v in visible.split(",") if v.strip()]
        by_name = {**{str(i): g for i, g in enumerate(gpus)}, **{g["uuid"]: g for g in gpus if g["uuid"]}}
        chosen = [by_name[n] for n in names if n in by_name]
    chosen = [g for g in chosen if g["minor"] is not None]
    if not chosen:
        return [], ""
    shared = [DEVICES / name for name in GPU_SHARED if (DEVICES / name).exists()]
    return [DEVICES / f"nvidia{g['minor']}" for g in chosen] + shared, ",".join(map(str, range(len(chosen))))


def nvidia_gpus() -> list[dict]:
    """The machine's NVIDIA GPUs in PCI bus order (nvidia-smi's), each {"minor": N of its
    /dev/nvidiaN, "uuid": "GPU-..."}, from the driver's /proc files; [] without the driver."""
    gpus = []
    for folder in sorted(NVIDIA_GPUS.iterdir()) if NVIDIA_GPUS.is_dir() else ():
        try:
            fields = {k.strip(): v for k, v in (line.split(":", 1) for line in
                                                (folder / "information").read_text().splitlines() if ":" in line)}
            gpus.append({"minor": int(fields["Device Minor"]), "uuid": fields.get("GPU UUID", "").strip()})
        except (OSError, KeyError, ValueError):  # described otherwise: keeps its place, bound by none
            gpus.append({"minor": None, "uuid": ""})
    return gpus
