"""Run the old ``tuned-lens`` (0.2.0) CLI unchanged, timing each optimizer step.

Usage (inside the venv that has tuned-lens 0.2.0):
    python bench/tuned_lens_timed.py --json-out RESULT.json -- train --model.name DIR ...

Everything after ``--`` is passed verbatim to ``tuned_lens.__main__.main`` (the same
entry point as ``python -m tuned_lens``). Nothing in the library is changed; this only
wraps, from outside:

* the ``trange`` the training loop iterates over, recording a ``perf_counter`` stamp
  each time the loop asks for its next micro-batch (and once when the loop ends), so a
  micro-batch's time covers fetching its data, the model forward, every lens
  forward/backward and, on the last micro-batch of a step, clipping + optimizer step;
* ``Train.calculate_gradient_accumulation_steps``, to learn how many micro-batches make
  one optimizer step;
* ``TunedLens.forward``, to record (once) whether CPU autocast was on, its dtype, and the
  dtype of the lens logits.

It also reports how many CPU cores this process and all other processes kept busy during
the training loop (from /proc/stat and os.times), since other load on a 2-core machine
skews the number. Model/data loading and the final ``lens.save`` are outside the timed region. Step 0 is
reported separately as warm-up; tokens/s is over the remaining steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import tuned_lens.scripts.train_loop as train_loop
from tuned_lens.__main__ import main as tuned_lens_main
from tuned_lens.nn.lenses import TunedLens

STAMPS: list[float] = []
INFO: dict[str, Any] = {}
CPU_MARKS: list[tuple[float, float]] = []  # (machine busy CPU-seconds, own CPU-seconds)


def _cpu_mark() -> tuple[float, float]:
    """Busy CPU-seconds of the whole machine (/proc/stat) and of this process."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(x) for x in fh.readline().split()[1:]]
        busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system


def _install_hooks() -> None:
    """Wrap the pieces of the training loop needed for timing (no library edits)."""
    orig_trange = train_loop.trange

    def timed_trange(*args: Any, **kwargs: Any) -> Iterator[int]:
        def gen() -> Iterator[int]:
            for i in orig_trange(*args, **kwargs):
                STAMPS.append(time.perf_counter())
                if len(STAMPS) == 1:
                    CPU_MARKS.append(_cpu_mark())
                yield i
            STAMPS.append(time.perf_counter())
            CPU_MARKS.append(_cpu_mark())

        return gen()

    train_loop.trange = timed_trange

    orig_calc = train_loop.Train.calculate_gradient_accumulation_steps

    def calc(self: Any, tokens_per_sample: int) -> int:
        steps = orig_calc(self, tokens_per_sample)
        INFO.update(
            grad_acc_steps=steps,
            tokens_per_sample=tokens_per_sample,
            per_gpu_batch_size=self.dist.per_gpu_batch_size,
            num_steps=self.num_steps,
            device=str(self.dist.device),
        )
        return steps

    train_loop.Train.calculate_gradient_accumulation_steps = calc

    orig_forward = TunedLens.forward

    def forward(self: TunedLens, h: torch.Tensor, idx: int) -> torch.Tensor:
        out = orig_forward(self, h, idx)
        if "autocast_cpu_enabled" not in INFO:
            INFO.update(
                autocast_cpu_enabled=torch.is_autocast_enabled("cpu"),
                autocast_cpu_dtype=str(torch.get_autocast_dtype("cpu")),
                hidden_dtype=str(h.dtype),
                lens_logits_dtype=str(out.dtype),
                lens_param_dtype=str(next(self.parameters()).dtype),
            )
        return out

    TunedLens.forward = forward  # type: ignore[method-assign]


def summarize() -> dict[str, Any]:
    """Turn the micro-batch stamps into per-step seconds and tokens/s."""
    g = INFO["grad_acc_steps"]
    tokens_per_step = g * INFO["per_gpu_batch_size"] * INFO["tokens_per_sample"]
    n_micro = len(STAMPS) - 1
    n_steps = n_micro // g
    step_s = [STAMPS[(s + 1) * g] - STAMPS[s * g] for s in range(n_steps)]
    timed = step_s[1:]
    res = dict(INFO)
    res.update(
        torch_threads=torch.get_num_threads(),
        tokens_per_step=tokens_per_step,
        steps_completed=n_steps,
        step_seconds=[round(x, 3) for x in step_s],
        warmup_step_seconds=round(step_s[0], 3) if step_s else None,
    )
    if len(CPU_MARKS) == 2 and len(STAMPS) > 1:
        wall = STAMPS[-1] - STAMPS[0]
        busy = CPU_MARKS[1][0] - CPU_MARKS[0][0]
        own = CPU_MARKS[1][1] - CPU_MARKS[0][1]
        ncpu = os.cpu_count() or 1
        res.update(
            train_loop_wall_seconds=round(wall, 2),
            own_cpu_cores_used=round(own / wall, 2),
            other_processes_cpu_cores_used=round(max(busy - own, 0.0) / wall, 2),
            machine_cores=ncpu,
        )
    if timed:
        mean_s = sum(timed) / len(timed)
        res.update(
            timed_steps=len(timed),
            mean_step_seconds=round(mean_s, 3),
            median_step_seconds=round(statistics.median(timed), 3),
            tokens_per_second=round(tokens_per_step * len(timed) / sum(timed), 2),
        )
    return res


def main() -> None:
    """Parse our flags, run the CLI, print and save the summary."""
    parser = argparse.ArgumentParser(description="Time the old tuned-lens CLI.")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("cli_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    _install_hooks()
    t0 = time.perf_counter()
    tuned_lens_main(cli_args)
    res = summarize()
    res["cli_wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["cli_args"] = cli_args
    text = json.dumps(res, indent=2)
    print("BENCH_RESULT " + json.dumps(res))
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
