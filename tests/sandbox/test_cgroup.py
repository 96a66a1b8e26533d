"""Finding the memory cgroup to put jobs under, on cgroup v1, v2 and hybrid hosts."""

from __future__ import annotations

from pathlib import Path

from sandbox.cgroup import JobCgroup, find_memory_group

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / {root}/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:27 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def fake_host(tmp_path: Path, cgroup: str, mounts: str) -> tuple[str, str]:
    (tmp_path / "cgroup").write_text(cgroup)
    (tmp_path / "mountinfo").write_text(mounts.format(root=tmp_path / "fs"))
    return str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")


def test_cgroup_v1_memory_wins_over_a_hybrid_unified_tree(tmp_path):
    own = tmp_path / "fs" / "memory" / "svc" / "a"
    own.mkdir(parents=True)
    (tmp_path / "fs" / "unified").mkdir()
    files = fake_host(tmp_path, "8:pids:/\n4:memory:/svc/a\n0::/\n", V1_MOUNTS)
    assert find_memory_group(*files) == (1, own)


def test_cgroup_v2_is_used_where_memory_is_among_its_controllers(tmp_path):
    own = tmp_path / "fs" / "system.slice" / "opsd.service"
    own.mkdir(parents=True)
    files = fake_host(tmp_path, "0::/system.slice/opsd.service\n", V2_MOUNTS)
    (own / "cgroup.controllers").write_text("cpu io pids\n")
    assert find_memory_group(*files) is None  # no memory controller to use
    (own / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert find_memory_group(*files) == (2, own)


def test_a_job_cgroup_is_capped_and_counts_its_oom_kills(tmp_path):
    v1 = JobCgroup(1, tmp_path / "v1", 200)
    assert (v1.path / "memory.limit_in_bytes").read_text() == "200"
    (v1.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert v1.oom_kills() == 3
    v2 = JobCgroup(2, tmp_path / "v2", 300)
    assert (v2.path / "memory.max").read_text() == "300"
    assert v2.oom_kills() == 0
    (v2.path / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    assert v2.oom_kills() == 2
