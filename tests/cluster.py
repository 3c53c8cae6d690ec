"""A real single-node Slurm (munge, slurmctld, slurmd from Debian's packages) for the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """ClusterName=clipbench-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def available() -> str | None:
    """None when Slurm can be started here, else why not."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"Slurm binaries missing ({', '.join(missing)}): make setup installs slurm-wlm and munge"
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path) -> dict:
    """Start munge (if needed), slurmctld and slurmd; return the environment that points at them."""
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(CONF.format(host=socket.gethostname(), d=folder, cpus=os.cpu_count() or 2,
                                ctld_port=_free_port(), d_port=_free_port()))
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["/usr/sbin/mungekey", "-c"], check=True)
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        subprocess.run(["/usr/sbin/munged", "--force"], check=True)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], check=True, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
        if out.strip() in ("idle", "mix", "alloc"):
            return env
        time.sleep(0.5)
    raise RuntimeError(f"Slurm did not come up: {(folder / 'slurmctld.log').read_text()[-2000:]}")


def stop(folder: Path, env: dict) -> None:
    """Shut both daemons down; one that ignores SIGTERM for 5 s is killed."""
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
    pids = []
    for pidfile in ("slurmd.pid", "slurmctld.pid"):
        try:
            pid = int((folder / pidfile).read_text())
            os.kill(pid, 15)
            pids.append(pid)
        except (OSError, ValueError):
            pass
    deadline = time.time() + 5
    while pids and time.time() < deadline:
        pids = [p for p in pids if _running(p)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
