"""CPU time and memory of a process and its descendants, read from Linux's ``/proc``.

The parsers (``parse_stat``, ``parse_status``, ``descendants``) take text and tables and
do no I/O; the readers (``snapshot``, ``tree``, ``cpu_seconds``, ``memory``) read the live
files. Knows nothing of what the processes are or how they were started.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")      # units of utime/stime in /proc/PID/stat (proc(5))


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/PID/stat`` the benchmark uses; times are in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int      # waited-for children that have exited
    cstime: int
    starttime: int   # with the PID, names one process even if the PID is reused

    @property
    def ticks(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> Stat:
    """Parse ``/proc/PID/stat``. The command name may hold spaces and parentheses, so the
    fields are counted from the last ``)`` (proc(5): fields 4, 14-17 and 22)."""
    pid = int(text[:text.index("(")])
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): field N is fields[N - 3].
    return Stat(pid=pid, ppid=int(fields[1]), utime=int(fields[11]), stime=int(fields[12]),
                cutime=int(fields[13]), cstime=int(fields[14]), starttime=int(fields[19]))


def parse_status(text: str) -> dict[str, int]:
    """The ``kB`` lines of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ...) in bytes."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0]) * 1024
    return values


def parse_cpu_busy(text: str) -> int:
    """Ticks the whole machine spent busy, from the ``cpu`` line of ``/proc/stat``: every
    column but idle and iowait (proc(5); guest time is already inside user time)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(value) for value in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
            return user + nice + system + irq + softirq + steal
    raise ValueError("no cpu line in /proc/stat")


def descendants(root: int, stats: dict[int, Stat]) -> list[int]:
    """``root`` and every process below it in ``stats`` (PID to Stat), parents first."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, queue = [], [root] if root in stats else []
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(sorted(children.get(pid, ())))
    return found


def read_stat(pid: int) -> Stat | None:
    """The live ``Stat`` of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return parse_stat(handle.read())
    except (OSError, ValueError, IndexError):
        return None


def snapshot() -> dict[int, Stat]:
    """Every process's ``Stat``, by PID."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int) -> list[Stat]:
    """``root`` and its live descendants (a gunicorn master and its worker, nginx's workers)."""
    stats = snapshot()
    return [stats[pid] for pid in descendants(root, stats)]


def cpu_seconds(root: int) -> float:
    """User plus system CPU time of ``root``'s process tree, including reaped children."""
    return sum(stat.ticks for stat in tree(root)) / CLOCK_TICKS


def memory(root: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in bytes, summed over ``root``'s process tree."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for stat in tree(root):
        try:
            with open(f"/proc/{stat.pid}/status") as handle:
                values = parse_status(handle.read())
        except OSError:
            continue
        for key in total:
            total[key] += values.get(key, 0)
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores together."""
    with open("/proc/stat") as handle:
        return parse_cpu_busy(handle.read()) / CLOCK_TICKS
