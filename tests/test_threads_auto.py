"""Threads when the config sets none: the free cores (affinity and quota less the load), recorded in metrics.json."""

import json

import torch

from luban.training import cpu, hardware


def _choose(monkeypatch, cores, load, in_use=None):
    monkeypatch.setattr(cpu, "available_cores", lambda: cores)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(cpu, "cores_in_use_elsewhere", lambda: load if in_use is None else in_use)
    return cpu.auto_threads()


def test_backs_off_by_whole_busy_cores(monkeypatch):
    assert _choose(monkeypatch, 2, 0.7).threads == 2  # an idle machine's background noise keeps every core
    assert _choose(monkeypatch, 2, 1.3).threads == 1
    assert _choose(monkeypatch, 8, 3.9).threads == 5
    c = _choose(monkeypatch, 2, 6.5)
    assert (c.threads, c.busy) == (1, 2)  # never fewer than one
    assert c.describe() == "1 thread (2 of 2 cores busy: load 6.5, 6.5 in use; trainer.num_threads to override)"
    assert _choose(monkeypatch, 4, 0.0).describe() == "4 threads"


def test_load_without_cpu_in_use_keeps_every_core(monkeypatch):
    """A load average that no process's CPU use backs (tasks waiting in uninterruptible sleep, or this process's own
    work a moment ago) takes no core away; CPU in use but a low load takes none either."""
    c = _choose(monkeypatch, 2, 1.02, in_use=0.01)
    assert (c.threads, c.busy, c.in_use) == (2, 0, 0.01) and c.describe() == "2 threads"
    assert _choose(monkeypatch, 2, 3.0, in_use=1.1).threads == 1
    assert _choose(monkeypatch, 2, 0.4, in_use=1.8).threads == 2


def test_cpu_in_use_elsewhere_takes_this_process_out(monkeypatch):
    """Cores in use elsewhere = (busy ticks of this process's cores - its own ticks) / all ticks x cores: over a
    sample where 2 cores ran 200 ticks, 60 of them idle and 100 this process's, 0.4 cores were others'."""
    times = iter([(1000, 500), (1200, 560)])
    own = iter([300, 400])
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu, "_cpu_times", lambda cpus: next(times))
    monkeypatch.setattr(cpu, "_own_ticks", lambda: next(own))
    monkeypatch.setattr(cpu.time, "sleep", lambda s: None)
    assert cpu.cores_in_use_elsewhere() == 0.4


def test_cpu_in_use_elsewhere_reads_this_machine():
    """The real sample: /proc/stat over this process's cores (not Linux: None)."""
    seen = cpu.cores_in_use_elsewhere(0.2)
    assert seen is None or 0.0 <= seen <= len(cpu.os.sched_getaffinity(0))
    times = cpu._cpu_times(sorted(cpu.os.sched_getaffinity(0)))
    assert times[0] > times[1] >= 0 and cpu._own_ticks() >= 0


def test_no_load_average_means_every_core(monkeypatch):
    monkeypatch.setattr(cpu, "available_cores", lambda: 3)

    def missing():
        raise OSError("no load average here")
    monkeypatch.setattr(cpu.os, "getloadavg", missing)
    assert cpu.auto_threads().threads == 3


def test_cgroup_quota_bounds_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 3)
    assert cpu.available_cores() == 3
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: None)
    assert cpu.available_cores() == 16


def test_set_threads_unset_uses_the_choice_and_says_so(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "_threads_set", False)
    monkeypatch.setattr(cpu, "available_cores", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.setattr(cpu, "cores_in_use_elsewhere", lambda: 1.0)
    try:
        hardware.set_threads(None)
        assert torch.get_num_threads() == 1
        assert hardware.thread_choice().busy == 1
        hardware.set_threads(1)  # explicit: obeyed, and no longer reported as automatic
        assert hardware.thread_choice() is None
    finally:
        torch.set_num_threads(before)


def test_run_records_where_its_threads_came_from(monkeypatch, tmp_path, capsys):
    """A run whose config sets no threads takes the automatic choice and says so, on the console and in metrics."""
    import luban
    from conftest import text_config, write_csv, zh_sentences

    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "_threads_set", False)
    monkeypatch.setattr(cpu, "available_cores", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.2, 1.0, 1.0))  # one core busy: one thread, as tests want
    monkeypatch.setattr(cpu, "cores_in_use_elsewhere", lambda: 0.97)
    try:
        cfg = text_config(tmp_path, "auto", write_csv(tmp_path / "train.csv", zh_sentences(40, seed=3)),
                          trainer={"num_threads": None, "epochs": 1})
        run = luban.train(cfg)
    finally:
        torch.set_num_threads(before)
    env = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["environment"]
    assert (env["threads"], env["threads_from"], env["cores"], env["cores_busy"], env["load_avg"],
            env["cores_in_use_elsewhere"]) == (1, "auto", 2, 1, 1.2, 0.97)
    assert "1 thread (1 of 2 cores busy: load 1.2, 1.0 in use; trainer.num_threads to override)" in \
        capsys.readouterr().out
