"""What a run found, three ways: JSON for machines, a markdown table for the README, a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LABELS = {
    "clerk-sync": "clerk-sync",
    "clerk-sync-logged": "clerk-sync, a log line per delivery",
    "express": "Express + svix + pg",
    "starlette": "Starlette + svix + asyncpg",
    "baseline": "Starlette, 204, no DB",
}
COLD_START_LABELS = {
    "clerk-sync": "clerk-sync, direct PostgreSQL",
    "clerk-sync-rest": "clerk-sync, REST mode (Supabase stand-in)",
}


def ratios(throughput: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """clerk-sync divided by each other server: throughput, p99 and CPU per delivery."""
    ours = throughput.get("clerk-sync")
    if not ours:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, theirs in throughput.items():
        if name.startswith("clerk-sync"):
            continue
        out[name] = {
            "throughput": round(ours["deliveries_per_s"] / theirs["deliveries_per_s"], 3),
            "p99": round(ours["p99_ms"] / theirs["p99_ms"], 3),
            "server_cpu": round(ours["server_cpu_s_per_1k"] / theirs["server_cpu_s_per_1k"], 3),
        }
    return out


def columns_cost(throughput: dict[str, dict[str, Any]]) -> dict[str, float]:
    """clerk-sync with the custom columns of bench/columns.toml divided by clerk-sync without."""
    ours, plain = throughput["clerk-sync-columns"], throughput["clerk-sync"]
    return {
        "throughput": round(ours["deliveries_per_s"] / plain["deliveries_per_s"], 3),
        "p99": round(ours["p99_ms"] / plain["p99_ms"], 3),
        "server_cpu": round(ours["server_cpu_s_per_1k"] / plain["server_cpu_s_per_1k"], 3),
    }


def goals(throughput: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 6's throughput goal: 1.5x the better reference, p99 no worse than either's."""
    references = [throughput[n] for n in ("express", "starlette") if n in throughput]
    ours = throughput.get("clerk-sync")
    if not ours or not references:
        return {}
    best = max(references, key=lambda r: r["deliveries_per_s"])
    target = 1.5 * best["deliveries_per_s"]
    return {
        "throughput_target": round(target, 1),
        "throughput_met": ours["deliveries_per_s"] >= target,
        "p99_target_ms": min(r["p99_ms"] for r in references),
        "p99_met": all(ours["p99_ms"] <= r["p99_ms"] for r in references),
    }


def markdown(results: dict[str, Any]) -> str:
    throughput: dict[str, dict[str, Any]] = results["throughput"]
    settings = results["settings"]
    lines = [
        f"wrk -t{settings['threads']} -c{settings['connections']}, {settings['duration']} s "
        f"after {settings['warmup']} s warm-up, ~{settings['body_bytes']:,} B signed bodies; "
        f"{results['machine']['cpus']} CPUs, server, PostgreSQL and wrk on one machine.",
        f"Stream: {settings['mix']}.",
        "",
        "| server | deliveries/s | p50 ms | p99 ms | non-2xx | server CPU s / 1k | "
        "PostgreSQL CPU s / 1k | clerk-sync / this |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ours = throughput.get("clerk-sync")
    for name, row in throughput.items():
        ratio = (
            f"{ours['deliveries_per_s'] / row['deliveries_per_s']:.2f}x"
            if ours and not name.startswith("clerk-sync")
            else ""
        )
        db_cpu = f"{row['db_cpu_s_per_1k']:.3f}" if row["db_cpu_s_per_1k"] is not None else "-"
        lines.append(
            f"| {LABELS.get(name, name)} | {row['deliveries_per_s']:,.0f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['non2xx'] + row['socket_errors']} | "
            f"{row['server_cpu_s_per_1k']:.3f} | {db_cpu} | {ratio} |"
        )
    lines.append("")
    lines.append(
        f"Each server measured {settings.get('rounds', 1)} times, taking turns; the table shows "
        "the median round by throughput. Every round, deliveries/s (p99 ms):"
    )
    for name, row in throughput.items():
        every = ", ".join(
            f"{r['deliveries_per_s']:,.0f} ({r['p99_ms']:.1f})" for r in row.get("rounds", [row])
        )
        lines.append(f"- {LABELS.get(name, name)}: {every}")
    stored = [
        f"- {LABELS.get(name, name)}: {row['users_stored']:,} users, "
        f"{row['organizations_stored']:,} organizations, {row['memberships_stored']:,} memberships"
        for name, row in throughput.items()
        if "organizations_stored" in row
    ]
    if stored:
        lines += ["", "Rows stored at the end of the median round:", *stored]
    for name, r in results.get("ratios", {}).items():
        lines.append("")
        lines.append(
            f"clerk-sync / {LABELS.get(name, name)}: throughput {r['throughput']:.2f}x, "
            f"p99 {r['p99']:.2f}x, server CPU per delivery {r['server_cpu']:.2f}x"
        )
    cost = results.get("columns_cost")
    if cost:
        held = throughput["clerk-sync-columns"].get("custom_columns_held", {})
        lines += [
            "",
            f"clerk-sync with 3 custom columns / without, same run: throughput "
            f"{cost['throughput']:.2f}x, p99 {cost['p99']:.2f}x, server CPU per delivery "
            f"{cost['server_cpu']:.2f}x (users holding role {held.get('role', 0):,}, plan "
            f"{held.get('plan', 0):,}, credits {held.get('credits', 0):,} of "
            f"{held.get('users', 0):,}).",
        ]
    goal = results.get("goals")
    if goal:
        lines += [
            "",
            f"Goal (1.5x the better reference, {goal['throughput_target']:,.0f}/s): "
            f"{'met' if goal['throughput_met'] else 'not met'}; p99 no worse than either "
            f"reference ({goal['p99_target_ms']:.1f} ms): {'met' if goal['p99_met'] else 'not met'}.",
        ]
    cold = results.get("cold_start")
    if cold:
        lines += ["", cold_start_markdown(cold)]
    return "\n".join(lines)


def cold_start_markdown(cold: dict[str, Any]) -> str:
    lines = [
        "| cold start (spawn → first answered delivery) | median ms | runs ms |",
        "| --- | ---: | --- |",
    ]
    for name, row in cold["servers"].items():
        runs = ", ".join(f"{ms:.0f}" for ms in row["runs_ms"])
        label = COLD_START_LABELS.get(name, LABELS.get(name, name))
        lines.append(f"| {label} | {row['median_ms']:.0f} | {runs} |")
    imports = cold["imports"]
    heaviest = ", ".join(f"{n} {ms:.0f}" for n, ms in imports["import_self_ms_by_package"].items())
    lines += [
        "",
        f"`python -c 'import clerk_sync.app'`: {imports['clerk_sync.app']['median_ms']:.0f} ms, "
        f"`import clerk_sync.cli`: {imports['clerk_sync.cli']['median_ms']:.0f} ms "
        f"(the interpreter alone: {imports['interpreter']['median_ms']:.0f} ms). "
        f"Import self time by package, ms: {heaviest}.",
    ]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def chart(path: Path, results: dict[str, Any]) -> None:
    """Throughput bars, p99 written on each, the goal as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput: dict[str, dict[str, Any]] = results["throughput"]
    names = list(throughput)
    rates = [throughput[n]["deliveries_per_s"] for n in names]
    colors = {
        "clerk-sync": "#6c47ff",
        "clerk-sync-logged": "#a993ff",
        "express": "#8a8a8a",
        "starlette": "#b0b0b0",
    }
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    bars = ax.bar(
        [LABELS.get(n, n).replace(", ", ",\n", 1).replace(" + ", "\n+ ", 1) for n in names],
        rates,
        color=[colors.get(n, "#dcdcdc") for n in names],
        edgecolor="#333333",
        linewidth=0.6,
    )
    for bar, name in zip(bars, names, strict=True):
        row = throughput[name]
        ax.annotate(
            f"{row['deliveries_per_s']:,.0f}/s\np99 {row['p99_ms']:.1f} ms",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    goal = results.get("goals")
    if goal and "clerk-sync" in names:
        # The goal as a dashed line across clerk-sync's bar only.
        bar = bars[names.index("clerk-sync")]
        left, right = bar.get_x() - 0.08, bar.get_x() + bar.get_width() + 0.08
        ax.hlines(
            goal["throughput_target"], left, right, colors="#6c47ff", linestyles="--",
            label=f"goal: 1.5x the better reference ({goal['throughput_target']:,.0f}/s)",
        )  # fmt: skip
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    settings = results["settings"]
    ax.set_ylabel("signed deliveries per second")
    ax.set_ylim(0, max(rates) * 1.2)
    ax.set_title(
        f"Clerk webhook deliveries/s, wrk -t{settings['threads']} -c{settings['connections']}, "
        f"{results['machine']['cpus']} CPUs (server, PostgreSQL, wrk on one machine)",
        fontsize=9,
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
