"""Print the JSON lines of `bench/bench_step.py` as a markdown table (the rows of bench/RESULTS.md).

python bench/gpu/summary.py results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    print("| config | tokens/step | device | step | tok/s | peak GiB | speed-up | max loss diff | max grad diff |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in sys.argv[1:]:
        text = Path(path).read_text().strip()
        if not text:
            print(f"| {Path(path).stem} | *no result* | | | | | | | |")
            continue
        info = json.loads(text.splitlines()[-1])
        shape = f"{info['batch']} x {info['seq']}" + (f", chunk {info['chunk']}" if info.get("chunk") else "")
        for step, r in info.items():
            if not isinstance(r, dict):
                continue
            diffs = [f"{r[k]:.1e}" if k in r else "" for k in ("max_loss_diff", "max_grad_diff")]
            speedup = f"{r['speedup']}x" if "speedup" in r else ""
            row = [info["config"], shape, info["device"], step, f"{r['tokens_per_s']:,.0f}", f"{r['peak_gib']:.2f}"]
            print("| " + " | ".join([*row, speedup, *diffs]) + " |")


if __name__ == "__main__":
    main()
