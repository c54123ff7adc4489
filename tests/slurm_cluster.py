"""A real single-node Slurm cluster for tests: Debian's slurm-wlm and munge, started as root in a
temporary directory, this host its controller and its only node, and stopped afterwards.

State, spool, logs and the munge key and socket live in a fresh directory under /tmp (which the
munge user can reach), removed afterwards; the daemons listen on free ports and use their own
munge socket, so nothing else on the machine is touched. The one file outside it is the
configuration, at Slurm's default path /etc/slurm/slurm.conf (written only where none exists, and
removed afterwards): the SLURM executor plugin runs each job's step with `srun` in an environment
stripped of SLURM_* variables, SLURM_CONF included, so only the default path reaches it, as on
a real cluster.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
PACKAGES = ("slurm-wlm", "munge")
PLUGIN = "snakemake-executor-plugin-slurm==2.8.0"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order


def install() -> None:
    """Slurm, munge and the Snakemake SLURM executor plugin, where missing (needs root, apt, PyPI)."""
    if not all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, capture_output=True
        )
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PLUGIN], check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """`with SlurmCluster() as cluster:` starts munged, slurmctld and slurmd; the node is idle
    when the block begins, and every daemon is stopped (by its pid file) and the directory removed
    when it ends."""

    def __init__(self, partitions: tuple[str, ...] = ("cpu", "gpu")):
        # Not under pytest's tmp_path: munged runs as the munge user and must reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="softcot-slurm-", dir="/tmp"))
        self.root.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.partitions = partitions
        self.wrote_conf = False
        self.conf = CONF

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    # --- set-up -------------------------------------------------------------------------------
    def _munge(self) -> None:
        munge = self.root / "munge"  # the socket's directory must be searchable by everyone
        key_dir = munge / "key"
        key_dir.mkdir(parents=True)
        (key_dir / "munge.key").write_bytes(os.urandom(1024))
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key_dir, "munge", "munge")
        shutil.chown(key_dir / "munge.key", "munge", "munge")
        munge.chmod(0o755)
        key_dir.chmod(0o700)
        (key_dir / "munge.key").chmod(0o400)
        self.munge_socket = munge / "munge.socket"
        subprocess.run(
            [
                "runuser", "-u", "munge", "--", "munged",
                f"--socket={self.munge_socket}",
                f"--key-file={key_dir / 'munge.key'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={key_dir / 'munged.seed'}",
            ],
            check=True,
        )  # fmt: skip

    def _write_conf(self) -> None:
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir()
        lines = [
            "ClusterName=softcot-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            # No cgroups, no accounting database: what a container or a CI runner can host.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=600",  # squeue keeps a finished job's state this long (the status command)
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={_memory_mb() - 1024} State=UNKNOWN",
        ]
        for i, name in enumerate(self.partitions):
            default = "YES" if i == 0 else "NO"
            lines.append(
                f"PartitionName={name} Nodes={self.node} Default={default} MaxTime=INFINITE State=UP"
            )
        if self.conf.exists():
            raise FileExistsError(f"{self.conf} exists: this machine has its own Slurm configuration")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")
        self.wrote_conf = True

    def __enter__(self) -> SlurmCluster:
        try:
            self._munge()
            self._write_conf()
            subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env())
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", self.node], check=True, env=self.env())
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, env=self.env()
            )
            if result.returncode == 0 and result.stdout.split() and set(result.stdout.split()) == {"idle"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster's node did not become idle:\n{self.logs()}")

    # --- tear-down ----------------------------------------------------------------------------
    def _pid_files(self) -> dict[str, Path]:
        return {
            "slurmd": self.root / "slurmd.pid",
            "slurmctld": self.root / "slurmctld.pid",
            "munged": self.root / "munge" / "munged.pid",
        }

    def stop(self) -> None:
        """Stop the three daemons this cluster started, by the pids they recorded."""
        for name in DAEMONS:
            path = self._pid_files()[name]
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.wrote_conf:
            self.conf.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        texts = []
        for path in sorted((self.root / "log").glob("*.log")):
            texts.append(f"--- {path.name}\n" + path.read_text()[-3000:])
        return "\n".join(texts)
