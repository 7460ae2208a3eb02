"""The report: the table, the target verdicts, the floors summary and the run's provenance."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.contenders import nginx_binary
from bench.scenarios import FLOOR_ORDER, SCENARIOS
from bench.table import Row, Target, Targets
from testbed.processes import ROOT


def build(results: dict[str, Any], names: list[str]) -> tuple[list[Row], list[Target]]:
    """The table rows and the target verdicts for aistack-tts."""
    rows: list[Row] = []
    targets = Targets()
    for scenario in SCENARIOS:
        if scenario.number in results:
            rows += scenario.rows(results, names, targets)
    return rows, targets.found


def render_floors(results: dict[str, Any]) -> str:
    """The floors beside aistack-tts and the target, one line per measure."""
    floors = results.get("floors")
    if not floors:
        return ""
    lines = [
        "Twisted floors, measured in the same rounds (bench/floors.py; no gateway logic at all):"
    ]
    by_number = {scenario.number: scenario for scenario in SCENARIOS}
    for number in FLOOR_ORDER:
        lines += by_number[number].floor_lines(results, floors)
    return "\n".join(lines)


def render(rows: list[Row], names: list[str]) -> str:
    widths = {n: max(len(n), *(len(r.cells.get(n, "")) for r in rows)) for n in names}
    metric_w = max(len("scenario / metric"), *(len(r.metric) + 3 for r in rows))
    target_w = max(len("target (aistack-tts)"), *(len(r.target) for r in rows))
    header = f"{'scenario / metric':<{metric_w}}" + "".join(f"  {n:>{widths[n]}}" for n in names)
    header += f"  {'target (aistack-tts)':<{target_w}}  result"
    lines = [header, "-" * len(header)]
    last = ""
    for r in rows:
        if r.scenario != last and last:
            lines.append("")
        last = r.scenario
        label = f"{r.scenario}  {r.metric}" if not r.metric.startswith("  ") else f"   {r.metric}"
        line = f"{label:<{metric_w}}" + "".join(
            f"  {r.cells.get(n, ''):>{widths[n]}}" for n in names
        )
        lines.append(f"{line}  {r.target:<{target_w}}  {r.verdict}".rstrip())
    return "\n".join(lines)


def versions() -> dict[str, Any]:
    info: dict[str, Any] = {}
    binary = nginx_binary()
    if binary is not None:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True)
        info["nginx"] = (done.stderr or done.stdout).strip().rsplit("/", 1)[-1]
    else:
        info["nginx"] = None
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        found = re.search(r"\d+\.\d+(\.\d+)?", done.stdout or done.stderr)
        info["wrk"] = f"wrk {found.group(0)}" if found else "wrk"
    else:
        info["wrk"] = None
    try:
        info["aistack_tts"] = importlib.metadata.version("aistack-tts")
    except importlib.metadata.PackageNotFoundError:
        info["aistack_tts"] = None
    try:
        info["matplotlib"] = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        info["matplotlib"] = None
    git = shutil.which("git")
    if git is not None:
        head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
        dirty = subprocess.run(
            [git, "-C", str(ROOT), "status", "--porcelain", "--", "src", "twisted"],
            capture_output=True,
            text=True,
        )
        info["git_head"] = head.stdout.decode().strip() or None
        info["src_uncommitted_files"] = len(dirty.stdout.splitlines())
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
