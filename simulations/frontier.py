"""One frontier per exchange and budget: a model's accuracy against the best attacker's
recognition, every defense and setting a point (mean and standard deviation over seeds),
the Pareto front marked.

    python -m simulations.frontier DIR[=LABEL] [DIR[=LABEL] ...] --out OUT

Each ``DIR`` is a :mod:`simulations.compare` output: its ``results.csv`` (one seed) or its
``seed-*/results.csv`` (``--seeds N``); ``LABEL`` names its budget (default: the folder's
name). Two attackers per point, each the best attack scored on enough images in that seed,
then averaged over seeds: the best non-adaptive one (``best_attack_recognition``) and the
best of all, adaptive ones included (``best_adaptive_attack_recognition``). An arm whose
attacks were scored on too few images (``compare_attacks.MIN_RANKED_IMAGES``) has no point.

A point is on the front when no other point of its exchange, budget and attacker has a
mean accuracy at least as high and a mean recognition at least as low, one of them strictly.
A difference is *within noise* when it is under twice its standard error,
``2 * sqrt(sd_a^2 / n_a + sd_b^2 / n_b)``; one seed has no noise estimate, so none is.

Files in ``OUT``: ``summary.csv`` (per budget and arm, the mean and deviation of every
figure in ``results.csv``), ``frontier.jsonl`` (a line per budget, attacker and arm),
``frontier.md`` and ``frontier.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from common.protocol import EXCHANGES
from simulations.seeds import mean_sd

ATTACKERS = {"non-adaptive": "best_attack_recognition", "adaptive": "best_adaptive_attack_recognition"}
# Figures of results.csv that are not numbers, or not per-arm measurements.
TEXT_COLUMNS = frozenset({"arm", "exchange", "defense", "setting", "status", "accuracy_source", "best_attack",
                          "best_adaptive_attack"})


def read_seeds(directory: Path) -> list[list[dict]]:
    """The rows of ``results.csv`` per seed: ``DIR/results.csv`` or ``DIR/seed-*/results.csv``."""
    files = sorted(directory.glob("seed-*/results.csv")) or [directory / "results.csv"]
    if not files[0].exists():
        raise SystemExit(f"{str(directory)!r}: no results.csv and no seed-*/results.csv (not a compare output)")
    return [list(csv.DictReader(f.read_text().splitlines())) for f in files]


def summarise(seeds: Sequence[Sequence[dict]]) -> list[dict]:
    """Per arm (in the first seed's order): ``seeds`` (completed runs), and ``K_mean``,
    ``K_sd`` and ``K_n`` for every numeric figure ``K`` that some seed measured."""
    out = []
    for first in seeds[0]:
        runs = [row for rows in seeds for row in rows if row["arm"] == first["arm"] and row["status"] == "completed"]
        summary: dict = {k: first[k] for k in ("arm", "exchange", "defense", "setting")} | {"seeds": len(runs)}
        for key in first:
            values = [float(r[key]) for r in runs if key not in TEXT_COLUMNS and r.get(key, "") != ""]
            if values:
                mean, sd = mean_sd(values)
                summary |= {f"{key}_mean": mean, f"{key}_sd": sd, f"{key}_n": len(values)}
        out.append(summary)
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (accuracy, recognition): whether no other point dominates it (accuracy at
    least as high and recognition at least as low, one strictly)."""
    return [not any(a >= acc and r <= rec and (a > acc or r < rec) for a, r in points) for acc, rec in points]


def within_noise(row: dict, other: dict, key: str) -> bool | None:
    """Whether the means of ``key`` differ by less than twice the standard error; None
    without a deviation (one seed)."""
    n_a, n_b = row.get(f"{key}_n", 0), other.get(f"{key}_n", 0)
    if n_a < 2 or n_b < 2:
        return None
    error = math.sqrt(row[f"{key}_sd"] ** 2 / n_a + other[f"{key}_sd"] ** 2 / n_b)
    return abs(row[f"{key}_mean"] - other[f"{key}_mean"]) < 2 * error


def frontier(summary: Sequence[dict], budget: str) -> list[dict]:
    """Points per exchange and attacker, each marked on or off the front."""
    points = []
    for exchange in EXCHANGES:
        arms = [r for r in summary if r["exchange"] == exchange and "test_accuracy_mean" in r]
        baseline = next((r for r in arms if r["defense"] == "none"), None)
        for attacker, key in ATTACKERS.items():
            scored = [r for r in arms if f"{key}_mean" in r]
            front = pareto_front([(r["test_accuracy_mean"], r[f"{key}_mean"]) for r in scored])
            for row, on_front in zip(scored, front, strict=True):
                points.append({
                    "budget": budget, "exchange": exchange, "attacker": attacker, "arm": row["arm"],
                    "seeds": row["seeds"], "on_front": on_front,
                    "accuracy": round(row["test_accuracy_mean"], 4), "accuracy_sd": round(row["test_accuracy_sd"], 4),
                    "recognition": round(row[f"{key}_mean"], 4), "recognition_sd": round(row[f"{key}_sd"], 4),
                    "accuracy_within_noise_of_none": None if baseline is None or baseline is row
                    else within_noise(row, baseline, "test_accuracy"),
                })
    return points


def _pm(mean: float, sd: float, seeds: int) -> str:
    return f"{mean:.3f} +- {sd:.3f}" if seeds > 1 else f"{mean:.3f}"


def write_markdown(points: Sequence[dict], budgets: Sequence[str], unranked: dict[str, list[str]], path: Path,
                   command: str) -> None:
    lines = ["# Accuracy against the best attacker", "", f"`{command}`", "",
             "Mean +- sample standard deviation over seeds; **bold**: on the Pareto front (no other arm of the "
             "exchange is at least as accurate and at least as private). `vs none`: the accuracy difference "
             "from no defense is within noise (under twice its standard error) or not.", ""]
    for budget in budgets:
        for exchange in EXCHANGES:
            rows = [p for p in points if p["budget"] == budget and p["exchange"] == exchange]
            left_out = unranked.get(f"{budget}/{exchange}", [])
            if not rows and not left_out:
                continue
            lines += [f"## {exchange}, {budget}", ""]
            if rows:
                lines += ["| arm | seeds | accuracy | non-adaptive attacker | adaptive attacker | vs none |",
                          "|---|---|---|---|---|---|"]
            by_arm: dict[str, dict[str, dict]] = {}
            for p in rows:
                by_arm.setdefault(p["arm"], {})[p["attacker"]] = p
            for arm, cells in by_arm.items():
                any_point = next(iter(cells.values()))
                noise = any_point["accuracy_within_noise_of_none"]
                figures = []
                for attacker in ATTACKERS:
                    p = cells.get(attacker)
                    text = "" if p is None else _pm(p["recognition"], p["recognition_sd"], p["seeds"])
                    figures.append(f"**{text}**" if p and p["on_front"] else text)
                lines.append(f"| {arm} | {any_point['seeds']} | "
                             f"{_pm(any_point['accuracy'], any_point['accuracy_sd'], any_point['seeds'])} | "
                             f"{figures[0]} | {figures[1]} | "
                             f"{'' if noise is None else 'within noise' if noise else 'differs'} |")
            if left_out:
                lines += ["", f"No attack scored on enough images for: {', '.join(left_out)}."]
            lines.append("")
    path.write_text("\n".join(lines))


def plot(points: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((p["budget"], p["exchange"]) for p in points)) or [("", "")]
    fig, axes = plt.subplots(len(panels), len(ATTACKERS), figsize=(11, 4 * len(panels)), squeeze=False)
    for (budget, exchange), row_axes in zip(panels, axes, strict=True):
        for attacker, ax in zip(ATTACKERS, row_axes, strict=True):
            mine = [p for p in points if (p["budget"], p["exchange"], p["attacker"]) == (budget, exchange, attacker)]
            for p in mine:
                ax.errorbar(p["recognition"], p["accuracy"], xerr=p["recognition_sd"], yerr=p["accuracy_sd"],
                            fmt="o" if p["on_front"] else "x", color="tab:red" if p["on_front"] else "tab:grey",
                            capsize=2)
                ax.annotate(p["arm"].split("-", 1)[1], (p["recognition"], p["accuracy"]), fontsize=6)
            front = sorted((p["recognition"], p["accuracy"]) for p in mine if p["on_front"])
            if front:
                ax.step(*zip(*front, strict=True), where="post", color="tab:red", alpha=0.5)
            ax.set(title=f"{exchange}, {budget}: {attacker}", xlabel="best attacker's recognition (lower: more private)",
                   ylabel="test accuracy")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_frontier(budgets: dict[str, Path], out: Path, command: str) -> list[dict]:
    """Every output of this module for ``budgets`` (label -> compare output); the points."""
    out.mkdir(parents=True, exist_ok=True)
    points, table, unranked = [], [], {}
    for budget, directory in budgets.items():
        summary = summarise(read_seeds(directory))
        table += [{"budget": budget} | row for row in summary]
        points += frontier(summary, budget)
        for row in summary:
            if "best_adaptive_attack_recognition_mean" not in row:
                unranked.setdefault(f"{budget}/{row['exchange']}", []).append(row["arm"])
    columns = list(dict.fromkeys(k for row in table for k in row))
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(table)
    (out / "frontier.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    write_markdown(points, list(budgets), unranked, out / "frontier.md", command)
    plot(points, out / "frontier.png")
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compare", nargs="+", help="a simulations.compare output, DIR or DIR=LABEL")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    budgets: dict[str, Path] = {}
    for item in args.compare:
        directory, _, label = item.partition("=")
        path = Path(directory)
        if not path.is_dir():
            parser.error(f"compare output {directory!r}: no such folder")
        budgets[label or path.name] = path
    command = "python -m simulations.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
    points = write_frontier(budgets, args.out, command)
    print(f"[frontier] {len(points)} points, {sum(p['on_front'] for p in points)} on the front: {args.out / 'frontier.md'}")


if __name__ == "__main__":
    main()
