"""The fault suite's table: every test appends rows (common.record) to one file, printed at the end.

`make test-faults` sets ``MEDFLOW_FAULTS_REPORT``; without it the controller makes a temporary file
before the xdist workers start, and they inherit its name.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path


def pytest_configure(config):
    if not os.environ.get("MEDFLOW_FAULTS_REPORT") and not hasattr(config, "workerinput"):
        fd, name = tempfile.mkstemp(prefix="medflow-faults-", suffix=".jsonl")
        os.close(fd)
        os.environ["MEDFLOW_FAULTS_REPORT"] = name


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"machine: {cpu}, {os.cpu_count()} cores, {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}, "
            f"{mem:.1f} GiB, Python {platform.python_version()}")


def table(rows: list[dict]) -> str:
    head = ("area", "what was tried", "tries", "survived", "figures")
    body = [(r["area"], r["tried"], str(r["attempts"]), str(r["survived"]), r["figures"]) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in body]
    total = sum(r["attempts"] for r in rows), sum(r["survived"] for r in rows)
    return "\n".join([*lines, f"total: {total[1]} of {total[0]} survived"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    path = os.environ.get("MEDFLOW_FAULTS_REPORT")
    if not path or not Path(path).exists() or not Path(path).stat().st_size:
        return
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    order = ["kill -9", "disk", "damage", "concurrency", "server load", "hostile payload", "paths"]
    rows.sort(key=lambda r: (order.index(r["area"]) if r["area"] in order else len(order), r["tried"]))
    terminalreporter.write_sep("=", "medflow fault suite: what was tried and what survived")
    terminalreporter.write_line(machine_line())
    terminalreporter.write_line(table(rows))
