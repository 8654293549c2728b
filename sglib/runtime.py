"""CPU thread settings, applied the same way by the CLI, ``make`` and the notebooks; the torchrun process group
that training and extraction share (:func:`process_group`: a stopped or failed process ends them all).

Two things keep a run from crawling when it shares the CPU with another busy process:

* ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import sglib`` unless already set, and by the Makefile):
  OpenMP threads that wait for work sleep instead of spinning, so a thread that lost its core to
  another process does not hold up the others' barrier while they burn the remaining core.
  It must be in the environment before torch loads its OpenMP runtime: import ``sglib`` first.
* :func:`configure_threads`: one thread count for torch, the BLAS under numpy, and faiss; by
  default ``$SGLIB_THREADS`` if set, else ``$OMP_NUM_THREADS`` if set, else the CPUs this process may
  use (affinity mask and control-group CPU quota, :func:`available_cpus`) minus those that other
  processes keep busy (sampled for 0.2 s). The CLI (``--threads``), the Makefile and the notebooks (``THREADS``)
  all go through it.

Measured on the 2-core development machine (MobileNetV2 at 384 px, ms per image): alone, 1 thread 80-86,
2 threads 66 (spinning) / 70 (passive); beside one CPU-bound process, 2 threads 261 (spinning) / 104
(passive), 1 thread 85-91.

The printed numbers (mAP) and the feature-cache keys do not depend on the thread count: the one
computation whose result did (the whitening's eigenbasis) is made canonical in
:mod:`sglib.models.whitening`. Descriptors themselves can differ in their last bits (about 1e-8)
between thread counts, as convolutions sum in another order.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings


_CGROUP_FS = "/sys/fs/cgroup"          # where the kernel mounts the control groups (module constants: tests move them)
_PROC_CGROUP = "/proc/self/cgroup"


def _cgroup_quota_v2(path: str) -> float | None:
    """CPUs allowed by ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") in a cgroup-v2 folder, None without a limit."""
    try:
        with open(os.path.join(path, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)


def _cgroup_quota_v1(path: str) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in a cgroup-v1 folder, None without a limit."""
    try:
        with open(os.path.join(path, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(path, "cpu.cfs_period_us")) as f:
            period = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_quota() -> float | None:
    """The CPU time this process's control group may use, in CPUs (a container's ``--cpus``, a batch
    scheduler's limit): the smallest quota on the way from its cgroup up to the root; None without one."""
    try:
        with open(_PROC_CGROUP) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    quotas = []
    for _, controllers, rel in (parts for parts in lines if len(parts) == 3):
        if controllers == "":                                     # cgroup v2, one unified tree
            base, read = _CGROUP_FS, _cgroup_quota_v2
        elif "cpu" in controllers.split(","):                     # cgroup v1, the cpu controller's tree
            base, read = os.path.join(_CGROUP_FS, controllers), _cgroup_quota_v1
            if not os.path.isdir(base):
                base = os.path.join(_CGROUP_FS, "cpu")
        else:
            continue
        rel = rel.strip("/")
        while True:   # a limit set on any ancestor applies too
            quota = read(os.path.join(base, rel))
            if quota is not None:
                quotas.append(quota)
            if not rel:
                break
            rel = os.path.dirname(rel)
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and no more than its control group's CPU quota
    (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cpu_times(cpus) -> dict:
    """``{cpu: (busy, total)}`` jiffies from /proc/stat for the given CPU numbers."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields[:8]]
                idle = values[3] + values[4]                      # idle + iowait
                times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_cpus(interval: float = 0.2) -> float:
    """How many of this process's CPUs other work keeps busy, measured over ``interval`` seconds.

    Sampled while this process waits, so it counts other processes only (a load average would also count
    the run that just finished before this one). 0.0 where /proc/stat cannot be read.
    """
    try:
        cpus = os.sched_getaffinity(0)
        before = _cpu_times(cpus)
        time.sleep(interval)
        after = _cpu_times(cpus)
    except (AttributeError, OSError, ValueError):
        return 0.0
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        busy += (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def free_cpus() -> int:
    """:func:`available_cpus` minus those :func:`busy_cpus` finds busy (rounded), at least 1."""
    cpus = available_cpus()
    return max(1, min(cpus, cpus - round(busy_cpus())))


def _threads_from_env(name: str) -> int | None:
    """The thread count in environment variable ``name`` (OMP_NUM_THREADS may list nesting levels: "4,2" gives 4),
    None when unset or empty; ValueError naming the variable when it is not an integer >= 1."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    first = text.split(",")[0].strip() if name == "OMP_NUM_THREADS" else text
    if not first.isdigit() or int(first) < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {text!r}")
    return int(first)


def configure_threads(n: int | None = None) -> int:
    """Use ``n`` threads in torch, numpy's BLAS and faiss; returns ``n``.

    ``n=None``: ``$SGLIB_THREADS`` when set (an integer >= 1), else ``$OMP_NUM_THREADS`` (how shared servers and
    batch schedulers limit a job; its first number when it lists several levels), else :func:`free_cpus`.
    More than :func:`available_cpus` (affinity and cgroup quota) is capped there, with a warning.
    """
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    if n is None:
        n = _threads_from_env("SGLIB_THREADS") or _threads_from_env("OMP_NUM_THREADS") or free_cpus()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {n!r}")
    usable = available_cpus()
    if n > usable:   # more threads than CPUs only makes them wait for each other
        warnings.warn(f"{n} threads asked for, but this process may use {usable} CPU(s): using {usable}",
                      stacklevel=2)
        n = usable
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
    faiss.omp_set_num_threads(n)
    return n


def process_runs(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (as any user); False for pid <= 0."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it runs, as another user
        return True
    return True


# ----------------------------------------------------------------------------------- torchrun process groups

DEFAULT_DIST_TIMEOUT = 600.0   # seconds; long enough for a machine that swaps for a while, short against hours
_groups_made = 0               # process groups this process has made: each group's keys are its own


def check_dist_timeout(value) -> float:
    """``value`` as seconds (a finite number > 0); ValueError naming ``dist_timeout`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"dist_timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


class _PeerWatch(threading.Thread):
    """Each process's watch on the others, through the rendezvous store (TCP, outside gloo and NCCL).

    Every ``interval`` it bumps its own counter ``alive/RANK``, reads the next rank's counter and the
    ``failed`` key. A counter that has not moved for ``timeout`` seconds means a process that runs no
    code (stopped, hung inside C, on a lost machine): the watch publishes that as the run's failure. A
    published failure (this check's, or a rank's exception, see :func:`process_group`) ends this
    process with the reason on stderr: the main thread may be blocked inside a collective that
    no Python code can interrupt, so the watch calls ``os._exit(1)``, as NCCL's own watchdog does.
    Each rank watches one neighbour, so the store serves O(processes) requests per interval.
    """

    def __init__(self, store, rank: int, world: int, timeout: float):
        super().__init__(name="sglib-peer-watch", daemon=True)
        self.store, self.rank, self.peer, self.timeout = store, rank, (rank + 1) % world, timeout
        self.interval = min(1.0, timeout / 10)
        self.stopping = threading.Event()

    def run(self) -> None:
        beat, seen, contact = -1, time.monotonic(), time.monotonic()
        while not self.stopping.wait(self.interval):
            now = time.monotonic()
            try:
                self.store.add(f"alive/{self.rank}", 1)
                failure = self.store.get("failed").decode() if self.store.check(["failed"]) else None
                peer_beat = self.store.add(f"alive/{self.peer}", 0)
                peer_done = self.store.check([f"done/{self.peer}"])
            except Exception as exc:   # the store's host is gone: tolerated for `timeout`, like a silent rank
                if now - contact > self.timeout:
                    self.end(f"the rendezvous store ({os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                             f") has not answered for {self.timeout:g} s (--dist-timeout): {exc}")
                continue
            contact = now
            if self.stopping.is_set():
                return
            if failure is not None:
                self.end(failure)
            if peer_beat != beat or peer_done:
                beat, seen = peer_beat, now
            elif now - seen > self.timeout:
                self.end(f"rank {self.peer} ({self.where(self.peer)}) has run no code for {self.timeout:g} s "
                         "(--dist-timeout): it is stopped, hung or on a lost machine", silent=self.peer)

    def published(self, key: str) -> str:
        """The store's value of ``key``; ``?`` when it has none or cannot be read."""
        try:
            return self.store.get(key).decode() if self.store.check([key]) else "?"
        except Exception:
            return "?"

    def where(self, rank: int) -> str:
        """``pid N on HOST`` of ``rank``, as it published it (``pid ? on ?`` when it did not)."""
        return f"pid {self.published(f'pid/{rank}')} on {self.published(f'host/{rank}')}"

    def end(self, reason: str, silent: int | None = None) -> None:
        """Publish ``reason`` (unless a failure was published first, which is then printed), print it, end the
        ``silent`` rank if it is a sibling (:func:`_kill_silent_sibling`), exit 1."""
        try:
            reason = self.store.compare_set("failed", "", reason).decode()
        except Exception:
            pass
        print(f"[sglib rank {self.rank}] ending this process: {reason}", file=sys.stderr, flush=True)
        if silent is not None:
            _kill_silent_sibling(self.published(f"pid/{silent}"), silent)
        os._exit(1)


def _kill_silent_sibling(pid: str, rank: int) -> None:
    """SIGKILL process ``pid`` if it is rank ``rank`` under this process's own launcher (same parent, RANK=rank).

    A stopped process does not act on torchrun's SIGTERM, and torchrun (2.x) then waits 30 s before its SIGKILL
    whatever its --shutdown-timeout; the process is being ended anyway, so it is ended now. One on another
    machine (not a child of this launcher) is left to its own launcher.
    """
    try:
        ppid = int(open(f"/proc/{int(pid)}/stat").read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{int(pid)}/environ", "rb") as f:
            env = f.read().split(b"\0")
        if ppid == os.getppid() and f"RANK={rank}".encode() in env:
            os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError, IndexError):   # not on this machine, already gone, or not Linux
        pass


PEER_REASON_WAIT_S = 10.0   # how long a rank whose connection broke waits for the failed rank's reason


def _follows_from_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's broken connection: another process's failure seen from here."""
    import torch.distributed as dist
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        words in text for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _wait_for_key(store, key: str, seconds: float) -> None:
    """Return once ``key`` is in ``store`` or ``seconds`` have passed (or the store is gone)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            if store.check([key]):
                return
        except Exception:   # the store went with its host
            return
        time.sleep(0.1)


@contextlib.contextmanager
def process_group(backend: str, collective_timeout: float, dist_timeout: float = DEFAULT_DIST_TIMEOUT):
    """Join the ``torchrun`` process group (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the environment)
    for the ``with`` block, with a watch that ends every process soon after one fails; yields (rank, world).

    * A rank that runs no code for ``dist_timeout`` seconds (SIGSTOP, a hang inside C, a lost machine)
      ends all the others, each printing which rank and the timeout; its watcher kills it when both run
      under the same launcher (:func:`_kill_silent_sibling`).
    * An exception on any rank is published with its rank before it propagates; the other ranks print
      it and end within a second, wherever they are blocked. The others' own errors that follow from it
      ("Connection closed by peer") come with the first rank's reason printed beside them.

    ``collective_timeout`` (seconds) is the process group's own limit on one collective, gloo's and
    NCCL's: it bounds how far a live process may lag behind the others (rank 0 validating, a slower GPU
    finishing its shards), so it is long; a silent process is the watch's, within ``dist_timeout``.
    Under torchrun the store lives in the launcher of node 0, so the watch keeps working whichever
    training process stops.
    """
    import torch.distributed as dist

    dist_timeout = check_dist_timeout(dist_timeout)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=collective_timeout)
    store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=world,
                            timeout=timeout)
    global _groups_made
    _groups_made += 1
    # keys of this group only: a torchrun restart or a second group in this process starts clean
    peers = dist.PrefixStore(f"sglib_peers/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{_groups_made}", store)
    peers.set(f"host/{rank}", socket.gethostname())
    peers.set(f"pid/{rank}", str(os.getpid()))
    # NCCL's set-up does not wait for every rank: without this, a late rank would look silent to its watcher
    peers.wait([f"pid/{r}" for r in range(world)])
    watch = _PeerWatch(peers, rank, world, dist_timeout)
    watch.start()
    try:
        yield rank, world
    except BaseException as exc:
        watch.stopping.set()   # this rank's own traceback is printed by the caller, not by the watch
        reason = f"rank {rank} ({watch.where(rank)}) failed: {type(exc).__name__}: {exc}"
        if _follows_from_a_peer(exc):   # its socket closed first: give the failed rank time to publish its reason
            _wait_for_key(peers, "failed", PEER_REASON_WAIT_S)
        try:
            first = peers.compare_set("failed", "", reason).decode()
        except Exception:   # the store is gone with its host: this rank's own error is all there is
            first = reason
        if first != reason:
            print(f"[sglib rank {rank}] an error that follows from: {first}", file=sys.stderr, flush=True)
        raise
    else:
        peers.set(f"done/{rank}", "1")
    finally:
        dist.destroy_process_group()
        watch.stopping.set()
