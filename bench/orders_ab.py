"""Two source trees of the shop, A and B, through the orders benchmark in alternating rounds.

On a 2-vCPU machine one run of `orders_wrk.py` moves by 10-15% from the next with the same code
(seen: 125 to 165 orders/s, 6.5 to 8.5 ms of CPU per order, in one hour). A change worth less
than that cannot be seen in one run each. This runs `orders_wrk.py --no-polling` (its quiet
phase only) for A, then B, then B, then A ... (ABBA order, so a drift of the machine falls on
both alike), each time on a fresh `shop run` whose `PYTHONPATH` puts that tree's `src/` first,
and prints every round's figures, then each side's median and the ratio B / A of the medians.

    .venv/bin/python bench/orders_ab.py --a /path/to/other/checkout [--b .] [--rounds 3]

`--a` and `--b` are repository roots (a `git worktree add /tmp/base <commit>` is one way to
have the older tree); `--b` defaults to this checkout. The same tree on both sides shows the
noise of the machine itself.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = {
    "orders/s": re.compile(r"completed\s+\d+ in [\d.]+s = (\d+) orders/s"),
    "CPU ms/order": re.compile(r"= ([\d.]+) ms per order"),
    "floor ms": re.compile(r"the floor \(([\d.]+) ms\)"),
    "saga p99 ms": re.compile(r"p99 (\d+) ms\s+max"),
}


def one_run(root: Path, duration: int, database_url: str | None) -> dict[str, float]:
    """One quiet phase of orders_wrk.py against the shop of `root` (its src/ first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    on_postgres = ["--database-url", database_url] if database_url else []
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "orders_wrk.py"),
            "--no-polling",
            "--duration",
            str(duration),
            "--floor-orders",
            "1000",
            *on_postgres,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 300,
        check=False,
    )
    figures: dict[str, float] = {}
    for name, pattern in FIGURES.items():
        found = pattern.search(out.stdout)
        if found:
            figures[name] = float(found.group(1))
    if out.returncode != 0 or len(figures) != len(FIGURES):
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-2000:])
        raise SystemExit(f"orders_wrk.py failed for {root} (exit {out.returncode})")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="repository root of side A (the baseline)")
    parser.add_argument("--b", default=str(HERE.parent), help="repository root of side B (this checkout)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of posting per run (10)")
    parser.add_argument("--database-url", help="both shops on this PostgreSQL server (as orders_wrk.py)")
    args = parser.parse_args()
    roots = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    for side, root in roots.items():
        if not (root / "src" / "shop").is_dir():
            parser.error(f"--{side.lower()} {root}: no src/shop there")
        print(f"-- {side}: {root}")
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    order = ["A", "B", "B", "A"] * ((args.rounds + 1) // 2)
    for side in order[: 2 * args.rounds]:
        figures = one_run(roots[side], args.duration, args.database_url)
        results[side].append(figures)
        print(f"   {side}  " + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    print(f"-- medians of {args.rounds} runs each, and B / A (in brackets: each side's lowest-highest)")
    medians: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    for name in FIGURES:
        for side in results:
            medians[side][name] = statistics.median(r[name] for r in results[side])
        a, b = medians["A"][name], medians["B"][name]
        spread = {s: (min(r[name] for r in results[s]), max(r[name] for r in results[s])) for s in results}
        print(
            f"   {name:<13} A {a:8.2f}  B {b:8.2f}  B/A {b / a:5.2f}"
            f"   (A {spread['A'][0]:.2f}-{spread['A'][1]:.2f}, B {spread['B'][0]:.2f}-{spread['B'][1]:.2f})"
        )
    ratio = {s: medians[s]["CPU ms/order"] / medians[s]["floor ms"] for s in medians}
    print(
        f"   {'x the floor':<13} A {ratio['A']:8.2f}  B {ratio['B']:8.2f}  B/A {ratio['B'] / ratio['A']:5.2f}"
        "   (median CPU per order / median floor)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
