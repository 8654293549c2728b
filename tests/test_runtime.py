"""Thread counts as people set them (sglib.runtime.configure_threads): SGLIB_THREADS, else OMP_NUM_THREADS, else the
CPUs the process may use (affinity and cgroup CPU quota) that others leave idle; each in a fresh process."""
import os
import subprocess
import sys

import pytest

from sglib import runtime

SHOW = "import sglib.runtime as r, torch; n = r.configure_threads(); print(n, torch.get_num_threads())"


def threads_in_subprocess(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ("SGLIB_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", SHOW], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout.split(), done.stderr


@pytest.mark.skipif(runtime.available_cpus() < 2, reason="needs 2 usable CPUs to tell the settings apart")
@pytest.mark.parametrize("env,expected", [
    ({"OMP_NUM_THREADS": "1"}, "1"),                           # a scheduler's limit is respected
    ({"OMP_NUM_THREADS": "1,1"}, "1"),                         # nesting levels: the first one
    ({"SGLIB_THREADS": "2", "OMP_NUM_THREADS": "1"}, "2"),     # sglib's own setting comes first
    ({"SGLIB_THREADS": "1"}, "1"),
])
def test_environment_thread_settings_in_their_order(env, expected):
    code, out, err = threads_in_subprocess(**env)
    assert code == 0 and out == [expected, expected], (out, err)


@pytest.mark.parametrize("env,words", [({"OMP_NUM_THREADS": "abc"}, "OMP_NUM_THREADS: expected an integer >= 1"),
                                       ({"SGLIB_THREADS": "0"}, "SGLIB_THREADS: expected an integer >= 1")])
def test_a_nonsense_thread_variable_is_named(env, words):
    code, out, err = threads_in_subprocess(**env)
    assert code != 0 and words in err, err


def _cgroup_tree(tmp_path, proc_line: str, files: dict):
    (tmp_path / "proc").write_text(proc_line + "\n")
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)


@pytest.mark.parametrize("proc_line,files,expected", [
    ("0::/job", {"job/cpu.max": "150000 100000"}, 1.5),                                  # v2, --cpus=1.5
    ("0::/a/b", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "max 100000"}, 1.0),       # v2, an ancestor's limit
    ("0::/job", {"job/cpu.max": "max 100000"}, None),                                     # v2, no limit
    ("4:cpu,cpuacct:/docker/x", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000",
                                 "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"}, 0.5),  # v1
    ("4:cpu,cpuacct:/x", {"cpu,cpuacct/x/cpu.cfs_quota_us": "-1",
                          "cpu,cpuacct/x/cpu.cfs_period_us": "100000"}, None),             # v1, no limit
])
def test_cgroup_cpu_quota_is_read_from_either_layout(tmp_path, monkeypatch, proc_line, files, expected):
    _cgroup_tree(tmp_path, proc_line, files)
    monkeypatch.setattr(runtime, "_PROC_CGROUP", str(tmp_path / "proc"))
    monkeypatch.setattr(runtime, "_CGROUP_FS", str(tmp_path / "fs"))
    assert runtime.cpu_quota() == expected
    if expected is not None:
        assert runtime.available_cpus() == max(1, min(len(os.sched_getaffinity(0)), -(-expected // 1)))
