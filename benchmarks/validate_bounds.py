"""Time and peak memory of ``kdlib sweep validate`` on the worst sweep YAMLs (issue 13).

Writes each config to a temporary folder, runs ``kdlib sweep validate`` on it in a subprocess and
prints one line per run: wall seconds, peak RSS of that subprocess, exit code and the command.
Peak RSS is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a fresh measuring process per
run (that figure is a maximum over all children ever waited for, so each run gets its own parent).

    python benchmarks/validate_bounds.py           # every config, 3 runs each (the worst is printed)
    python benchmarks/validate_bounds.py --quick   # every config once

Exit code 1 when a run exceeds the limits (--max-seconds, --max-rss-mib) or exits otherwise than
expected (0 for the shipped quickstart and the 9996-trial sweep with 30000 exclusion rules, 2 for
every refused config).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"


def _configs(folder: Path) -> dict[str, tuple[Path, int]]:
    """name → (YAML file, expected exit code): the shipped quickstart and the worst inputs."""
    import yaml

    text = QUICKSTART.read_text()
    base = yaml.safe_load(text)

    def write(name: str, content: str | dict) -> Path:
        path = folder / f"{name}.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    bomb = ["bomb:", "  l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    bomb += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 13)]  # 10^13 nodes
    merge = ["bomb:", "  m0: &m0 {a: 1, b: 2, c: 3, d: 4}"]
    merge += [f"  m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 8)}], k{i}: {i}}}" for i in range(1, 12)]
    flat = text + "\nbomb: [" + "0," * 450_000 + "]\n"  # just under 1 MiB, past the node limit
    return {
        "quickstart": (QUICKSTART, 0),
        "alias-bomb": (write("alias_bomb", text + "\n" + "\n".join(bomb) + "\n"), 2),
        "merge-bomb": (write("merge_bomb", text + "\n" + "\n".join(merge) + "\n"), 2),
        "recursive-alias": (write("recursive", text + "\nbomb: &r [*r, *r]\n"), 2),
        "deep-nesting": (write("deep", text + "\nbomb: " + "[" * 200_000 + "]" * 200_000 + "\n"), 2),
        "many-nodes": (write("many_nodes", flat), 2),
        "huge-repeats": (write("huge_repeats", {**base, "search": {**base["search"], "repeats": 10**18}}), 2),
        "huge-grid": (write("huge_grid", {**base, "search": {**base["search"], "seed": list(range(5000)),
                                                             "grid": {"kd_weight": [0.5, 1.0, 2.0]}}}), 2),
        "many-exclusions": (write("many_exclusions", {**base, "search": {
            **base["search"], "seed": list(range(1666)), "exclude": [{"seed": -1 - i} for i in range(30_000)]}}), 0),
        "huge-int": (write("huge_int", re.sub(r"(?m)^  seed: \[.*\]$", "  seed: [" + "9" * 5000 + "]", text)), 2),
    }


def _measure(argv: list[str]) -> None:
    """Child mode: run ``argv`` once and print its wall seconds, peak RSS (KiB) and exit code as JSON."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"wall": wall, "rss_kib": rss, "rc": proc.returncode, "err": proc.stderr.strip()[-300:]}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one run per config (default: 3, the worst printed)")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--max-rss-mib", type=float, default=512.0)
    p.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        _measure(args.measure)
        return 0
    runs = 1 if args.quick else 3
    env = {**os.environ, "KDLIB_OUTPUT": ""}
    failed = False
    with tempfile.TemporaryDirectory(prefix="kdlib-bounds-") as tmp:
        env["KDLIB_OUTPUT"] = str(Path(tmp) / "out")
        for name, (path, expected) in _configs(Path(tmp)).items():
            cmd = [sys.executable, "-m", "kdlib.cli", "sweep", "validate", str(path)]
            worst = None
            for _ in range(runs):
                out = subprocess.run([sys.executable, __file__, "--measure", *cmd], capture_output=True, text=True,
                                     env=env, cwd=ROOT, check=True).stdout
                r = json.loads(out)
                if worst is None or (r["wall"], r["rss_kib"]) > (worst["wall"], worst["rss_kib"]):
                    worst = {**r, "rss_kib": max(r["rss_kib"], worst["rss_kib"] if worst else 0)}
            shown = " ".join(["kdlib", "sweep", "validate", f"<tmp>/{path.name}" if path != QUICKSTART
                              else str(path.relative_to(ROOT))])
            ok = (worst["rc"] == expected and worst["wall"] <= args.max_seconds
                  and worst["rss_kib"] / 1024 <= args.max_rss_mib)
            failed |= not ok
            print(f"{name:<16} wall {worst['wall']:6.2f} s  peak RSS {worst['rss_kib'] / 1024:7.1f} MiB  "
                  f"rc {worst['rc']}{'' if ok else ' FAIL'}  $ {shown}", flush=True)
            if not ok:
                print(f"{'':<16} {worst['err']}", flush=True)
        if Path(env["KDLIB_OUTPUT"]).exists():
            print("FAIL: validation created the output folder", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
