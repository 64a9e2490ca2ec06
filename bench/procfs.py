"""What the benchmarks read of a process in /proc: a `kB` field of its status (or smaps_rollup), its peak RSS
reset, its CPU seconds. Linux only, like the benchmarks' memory figures."""

from __future__ import annotations

import os

MIB = 1024 * 1024


def proc_mib(pid: int | str, field: str, name: str = "status") -> float:
    """A `kB` field (`VmHWM:`, `VmRSS:`, `Pss:`) of /proc/PID/NAME in MiB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def reset_peak(pid: int | str) -> bool:
    """Reset VmHWM to the current RSS (`5` to clear_refs); False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads together."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
