"""The chart: one panel per scenario, the floors as grey lines (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import MB
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    DIRECT,
    LEAN_FLOOR,
    NGINX,
    RELAY_FLOOR,
    TWISTED,
    WEB_FLOOR,
)
from bench.goals import (
    BUSY_VS_BARE_WEB,
    CLOSE_P99_GOAL_MS,
    RSS_GOAL_MIB,
    STREAM_VS_RELAY,
    STREAM_VS_TWISTED,
    TTFB_VS_TWISTED,
)

COLOURS = {DIRECT: "#7f7f7f", AISTACK: "#1f77b4", TWISTED: "#ff7f0e", NGINX: "#2ca02c"}


def chart(report: dict[str, Any], path: Path) -> str:
    """Draw the PNG; returns a note on what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no chart (pip install matplotlib)"
    results = report["results"]
    names: list[str] = report["contenders"]
    verdicts: dict[str, list[bool]] = {}
    for t in report["targets"]:
        verdicts.setdefault(t["scenario"], []).append(t["passed"])

    def title(scenario: str, text: str) -> str:
        marks = verdicts.get(scenario)
        if not marks:
            return text
        return f"{text}\naistack-tts: {'PASS' if all(marks) else 'FAIL'}"

    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    flat = list(axes.flat)

    def bars(ax: Any, values: dict[str, float], unit: str, log_scale: bool = False) -> None:
        labels = [n for n in names if n in values]
        heights = [values[n] for n in labels]
        drawn = ax.bar(labels, heights, color=[COLOURS[n] for n in labels])
        ax.bar_label(drawn, labels=[f"{v:.3g}" for v in heights], fontsize=8)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        if log_scale:
            ax.set_yscale("symlog", linthresh=1)

    def grouped(ax: Any, series: dict[str, dict[str, float]], unit: str) -> None:
        labels = [n for n in names if any(n in s for s in series.values())]
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            present = [(i, n) for i, n in enumerate(labels) if n in values]
            drawn = ax.bar(
                [i + k * width for i, _ in present],
                [values[n] for _, n in present],
                width,
                color=[COLOURS[n] for _, n in present],
                alpha=1.0 if k == 0 else 0.45,
                hatch="" if k == 0 else "//",
                edgecolor="white" if k == 0 else "black",
                linewidth=0.3,
            )
            ax.bar_label(drawn, labels=[f"{values[n]:.3g}" for _, n in present], fontsize=7)
            # A grey proxy for the legend: the series, not a contender.
            ax.bar(
                [0],
                [0],
                0,
                color="#555555",
                alpha=drawn[0].get_alpha() or 1.0,
                hatch="" if k == 0 else "//",
                label=label,
            )
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)

    floors = results.get("floors", {})
    styles: dict[str, Any] = {
        WEB_FLOOR: ":",
        AGENT_FLOOR: "-.",
        LEAN_FLOOR: (0, (5, 2)),
        RELAY_FLOOR: (0, (1, 3)),
    }

    def floor_lines(ax: Any, values: dict[str, float], what: str = "") -> None:
        """The Twisted floors measured in the same rounds, as grey lines."""
        for name, value in values.items():
            label = f"floor: {name}{what}"
            ax.axhline(value, color="#444444", linestyle=styles[name], linewidth=1.2, label=label)
        if values:
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, top * 1.3)  # room for the legend above the bars
            ax.legend(fontsize=7, loc="upper right")

    panels = iter(flat)
    if "1" in results:
        for key, label in (("1conn", "1 connection"), ("16conn", "16 connections")):
            summary = results["1"]["summary"][key]
            ax = next(panels)
            grouped(
                ax,
                {
                    "added p50": {
                        n: e["added_p50_us"] for n, e in summary.items() if "added_p50_us" in e
                    },
                    "added p99": {
                        n: e["added_p99_us"] for n, e in summary.items() if "added_p99_us" in e
                    },
                },
                "us over direct",
            )
            floor_lines(
                ax,
                {n: e["added_p50_us"] for n, e in floors.get("1", {}).get(key, {}).items()},
                " (p50)",
            )
            ax.set_title(title("1", f"1. GET /v1/audio/voices, {label}: added latency"), fontsize=9)
    if "2" in results:
        ax = next(panels)
        summary = results["2"]["summary"]
        bars(ax, {n: e["mb_per_s"] for n, e in summary.items()}, "MB/s")
        if TWISTED in summary:
            goal = STREAM_VS_TWISTED * summary[TWISTED]["mb_per_s"]
            ax.axhline(goal, color="red", linestyle="--", linewidth=0.8)
        relay = floors.get("2", {}).get(RELAY_FLOOR)
        if relay is not None:
            goal = STREAM_VS_RELAY * relay["mb_per_s"]
            ax.axhline(goal, color="red", linestyle=":", linewidth=0.8)
        floor_lines(ax, {n: e["mb_per_s"] for n, e in floors.get("2", {}).items()})
        ax.set_title(
            title(
                "2",
                f"2. {results['2']['bytes'] // MB} MB stream: MB/s (median)\n"
                f"targets: {STREAM_VS_TWISTED:g}x twisted (dashed), {STREAM_VS_RELAY:g}x relay "
                "(dotted)",
            ),
            fontsize=9,
        )
    if "3" in results:
        ax = next(panels)
        grouped(
            ax,
            {
                label: {
                    n: e["added_p50_ms"]
                    for n, e in results["3"]["summary"][variant].items()
                    if "added_p50_ms" in e
                }
                for variant, label in (
                    ("late_head", "head with audio"),
                    ("early_head", "head at once"),
                )
            },
            "ms over direct",
        )
        twisted = results["3"]["summary"]["late_head"].get(TWISTED)
        if twisted is not None:
            goal = TTFB_VS_TWISTED * twisted["added_p50_ms"]
            ax.axhline(goal, color="red", linestyle="--", linewidth=0.8)
        floor_lines(
            ax,
            {n: e["added_p50_ms"] for n, e in floors.get("3", {}).get("late_head", {}).items()},
            " (head with audio)",
        )
        ax.set_title(title("3", "3. first byte after 100 ms: added p50"), fontsize=9)
    if "4" in results:
        ax = next(panels)
        bars(
            ax,
            {n: max(0.0, e["max_growth_mib"]) for n, e in results["4"]["summary"].items()},
            "MiB (symlog)",
            log_scale=True,
        )
        ax.axhline(RSS_GOAL_MIB, color="red", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 4 * max(RSS_GOAL_MIB, *ax.get_ylim()))
        ax.set_title(title("4", "4. stalled client: RSS growth (worst trial)"), fontsize=9)
    if "5" in results:
        ax = next(panels)
        summary = results["5"]["summary"]
        grouped(
            ax,
            {
                "p50": {n: e["p50_ms"] for n, e in summary.items() if "p50_ms" in e},
                "p99": {n: e["p99_ms"] for n, e in summary.items() if "p99_ms" in e},
            },
            "ms",
        )
        ax.axhline(CLOSE_P99_GOAL_MS, color="red", linestyle="--", linewidth=0.8)
        never = [n for n, e in summary.items() if "p50_ms" not in e]
        note = f" (never closed: {', '.join(never)})" if never else ""
        ax.set_title(title("5", f"5. client close -> upstream closed{note}"), fontsize=9)
    if "6" in results and AISTACK in results["6"]["summary"]:
        ax = next(panels)
        e = results["6"]["summary"][AISTACK]
        labels = ["burst p50", "burst p99", "alone p50", "alone p99"]
        values = [e["p50_ms"], e["p99_ms"], e["sequential_p50_ms"], e["sequential_p99_ms"]]
        drawn = ax.bar(labels, values, color=COLOURS[AISTACK])
        ax.bar_label(drawn, labels=[f"{v:.3g}" for v in values], fontsize=8)
        bare = floors.get("6", {}).get(WEB_FLOOR)
        if bare is not None:
            goal = BUSY_VS_BARE_WEB * bare["p99_ms"]
            ax.axhline(goal, color="red", linestyle="--", linewidth=0.8)
        floor_lines(
            ax, {n: e["p99_ms"] for n, e in floors.get("6", {}).items()}, ", fixed 503 (p99)"
        )
        ax.set_ylabel("ms")
        ax.set_title(title("6", "6. aistack-tts 503 while the slot is held"), fontsize=9)
    if "7" in results:
        ax = next(panels)
        bars(
            ax,
            {
                n: e["gateway_cpu_s_per_gb"]
                for n, e in results["7"]["summary"].items()
                if e["gateway_cpu_s_per_gb"] is not None
            },
            "CPU s / GB",
        )
        floor_lines(ax, {n: e["gateway_cpu_s_per_gb"] for n, e in floors.get("7", {}).items()})
        ax.set_title("7. gateway CPU per GB streamed", fontsize=9)
    for ax in panels:
        ax.axis("off")
    fig.suptitle(
        f"aistack-tts benchmarks {report['date']} - {report['machine']['nproc']} CPUs "
        f"({report['machine']['cpu']}), Python {report['machine']['python']}, Twisted "
        f"{report['machine']['twisted']}, nginx {report['machine'].get('nginx') or 'absent'}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"
