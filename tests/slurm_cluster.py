"""A single-node Slurm on this machine, for tests/test_slurm.py (not a test module itself).

``LocalSlurm(workdir)`` writes a slurm.conf (ports on localhost, SlurmUser root, proctrack/
linuxproc, no cgroups, no accounting) and a munge key under ``workdir``, starts munged, slurmctld
and slurmd in the foreground as child processes of this one, waits until the node is idle, and
stops them again (``with LocalSlurm(d) as slurm: ...``). ``env`` is what a client (sbatch, squeue,
scancel) needs: SLURM_CONF. ``why_not()`` gives the one reason it cannot start here (binaries
missing, not root), or None. Every wait is bounded.

By hand: ``python tests/slurm_cluster.py DIR`` brings it up, prints the environment to use and
waits for Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
#: the node's name is this host's, so that mpirun inside the allocation starts the ranks itself
#: (a node of another name is a remote node to Open MPI: it would start a daemon there by srun)
NODE = socket.gethostname()


def why_not() -> str | None:
    """The reason a local Slurm cannot start here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing; Debian: apt-get "
                f"install slurm-wlm munge)")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a local Slurm needs root here (SlurmUser root, slurmd runs jobs as their user)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(d: Path, ctl_port: int, node_port: int, cpus: int) -> str:
    host = socket.gethostname()
    return f"""ClusterName=dpmlptest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


class LocalSlurm:
    def __init__(self, workdir: Path, cpus: int = 4, timeout: float = 60.0):
        self.dir, self.cpus, self.timeout = Path(workdir), cpus, timeout
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.dir / "slurm.conf"))

    # ---------------------------------------------------------------- start / stop
    def _spawn(self, args: list[str], log: str) -> None:
        out = open(self.dir / log, "ab")
        self.procs.append(subprocess.Popen(args, env=self.env, stdout=out, stderr=out,
                                           start_new_session=True))

    def start(self) -> "LocalSlurm":
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        key = d / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chmod(key, 0o600)
        ctl, node = _free_ports(2)
        (d / "slurm.conf").write_text(slurm_conf(d, ctl, node, self.cpus))
        self._spawn([_binary("munged"), "-F", "-f", f"--socket={d}/munge.socket",
                     f"--key-file={key}", f"--pid-file={d}/munged.pid",
                     f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"], "munged.out")
        self._wait_for(lambda: (d / "munge.socket").exists(), "munged's socket")
        self._spawn([_binary("slurmctld"), "-D", "-c", "-i"], "slurmctld.out")
        self._spawn([_binary("slurmd"), "-D"], "slurmd.out")
        self._wait_for(self._node_idle, "the node to be idle")
        return self

    def _node_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
        out = self.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], check=False, timeout=10)
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed")

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"local Slurm: timed out waiting for {what}: {self.logs()}")

    def _cancel_jobs(self, timeout: float = 30) -> None:
        """Cancel every job of this cluster and wait (bounded) until none is left, so that no
        job step outlives the daemons."""
        if not self.procs:
            return
        self.run(["scancel", "--full", "--user", "root"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10)
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(1)

    def stop(self) -> None:
        try:
            self._cancel_jobs()
        except (OSError, subprocess.TimeoutExpired):
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self.procs = []

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---------------------------------------------------------------- clients
    def run(self, args: list[str], check: bool = True, timeout: float = 30, **kw):
        proc = subprocess.run(args, env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def job_state(self, job: str) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ... ('' once forgotten)."""
        out = self.run(["scontrol", "show", "job", job], check=False)
        for word in out.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return ""

    def wait_job(self, job: str, timeout: float, done=("COMPLETED", "FAILED", "CANCELLED",
                                                       "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state in done or state == "":
                return state
            time.sleep(1)
        self.run(["scancel", job], check=False)
        raise TimeoutError(f"job {job} still {self.job_state(job)} after {timeout} s")

    def logs(self) -> str:
        tails = []
        for name in ("munged.out", "munged.log", "slurmctld.log", "slurmd.log",
                     "slurmctld.out", "slurmd.out"):
            path = self.dir / name
            if path.exists():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace")
                                                         .splitlines()[-15:]))
        return "\n".join(tails)


if __name__ == "__main__":
    reason = why_not()
    if reason:
        sys.exit(reason)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # TERM stops it like Ctrl-C
    with LocalSlurm(Path(sys.argv[1])) as slurm:
        print(f"export SLURM_CONF={slurm.env['SLURM_CONF']}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
