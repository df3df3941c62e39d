"""Time the explorer (``lens-hub serve``): seconds per ``POST /api/trajectory`` by prompt length, on SmolLM2-135M.

What it measures: the latency a user waits for after pressing "Show trajectory", through the real app in-process
(FastAPI and its middleware, JSON encoding included, called with starlette's TestClient: no sockets), on the
offline SmolLM2-135M-Instruct (``smollm2-offline``: 30 layers, a 49,152-token vocabulary) on the CPU. Two setups:
``logit``, the logit lens alone, and ``compare``, a tuned lens (small random translators: the cost does not depend
on their values) beside the logit lens, as ``lens-hub serve smollm2-offline --lens ./lens --compare logit`` shows
them.

Every request reads a new prompt (the app's cache is off, and each repeat takes other text) of exactly N tokens,
cut from the bundled Jane Austen sample. One warm-up request per setup and length, then the median and minimum of
``--repeats``.

On a shared machine, compare versions of lens-hub in one run: ``--versions NAME=DIR ...`` starts one worker per
version (this script with DIR first on ``sys.path``, each loading the model once) and sends them the same requests
in turn, one request at a time, so that every version meets the same background load:

    cp -r lens_hub /tmp/before/       # before the change
    python bench/serve_latency.py --versions before=/tmp/before after=.

``--profile N`` prints the cProfile of one N-token reading instead (reading, payload and JSON, without HTTP).
Results: bench/RESULTS.md ("The explorer's latency").
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "lens_hub" / "samples" / "persuasion-ch1-8.txt"
SETUPS = ("logit", "compare")


def prompts(tokenizer, length: int, count: int) -> list[str]:
    """``count`` different texts of exactly ``length`` tokens (as the explorer tokenizes them), from the sample."""
    ids = tokenizer(SAMPLE.read_text(encoding="utf-8"))["input_ids"]
    out, start = [], 0
    while len(out) < count:
        text = tokenizer.decode(ids[start : start + length])
        if len(tokenizer(text)["input_ids"]) == length:  # a cut inside a word may tokenize otherwise: skip it
            out.append(text)
        start += length + 7
        if start + length > len(ids):
            raise SystemExit(f"the sample holds too few {length}-token texts")
    return out


class Bench:
    """The model, the lenses and one app per setup, loaded once."""

    def __init__(self, max_tokens: int) -> None:
        import torch
        from starlette.testclient import TestClient

        from lens_hub import LogitLens, TunedLens
        from lens_hub.core.models import load_smollm2
        from lens_hub.serve.app import create_app

        net, self.tokenizer = load_smollm2()
        lens = TunedLens.from_model(net)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in lens.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
        logit = LogitLens.from_model(net)
        self.apps = {
            "logit": create_app(net, self.tokenizer, logit, max_tokens=max_tokens, cache_size=0),
            "compare": create_app(net, self.tokenizer, lens, logit, max_tokens=max_tokens, cache_size=0),
        }
        self.clients = {name: TestClient(app, base_url="http://127.0.0.1") for name, app in self.apps.items()}

    def request(self, setup: str, text: str) -> tuple[float, int]:
        """Seconds one trajectory request of ``text`` takes, and the answer's size in bytes."""
        started = time.perf_counter()
        answer = self.clients[setup].post("/api/trajectory", json={"prompt": text, "stat": "entropy"})
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise SystemExit(f"{setup}: {answer.status_code} {answer.text[:200]}")
        return elapsed, len(answer.content)


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average {load}"
    )


def worker(max_tokens: int) -> None:
    """Answer the coordinator's requests, one JSON line each way: {"setup", "text"} -> {"seconds", "bytes"}."""
    import lens_hub

    bench = Bench(max_tokens)
    print(json.dumps({"ready": str(Path(lens_hub.__file__).parent)}), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        seconds, size = bench.request(order["setup"], order["text"])
        print(json.dumps({"seconds": seconds, "bytes": size}), flush=True)


def paired(args: argparse.Namespace) -> list[dict]:
    """Each request sent to every version in turn (see the module's docstring)."""
    from lens_hub.core.models import OFFLINE_NAME, load_tokenizer

    tokenizer = load_tokenizer(OFFLINE_NAME)  # the prompts need the tokenizer only: the workers load the model
    workers = {}
    for spec in args.versions:
        name, _, directory = spec.partition("=")
        env = {**os.environ, "PYTHONPATH": str(Path(directory).resolve())}
        command = [sys.executable, __file__, "--worker", "--max-tokens", str(max(args.lengths))]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        workers[name] = child
        print(f"{name}: lens_hub from {json.loads(child.stdout.readline())['ready']}", flush=True)
    print(machine())

    def ask(name: str, setup: str, text: str) -> float:
        workers[name].stdin.write(json.dumps({"setup": setup, "text": text}) + "\n")
        workers[name].stdin.flush()
        return json.loads(workers[name].stdout.readline())["seconds"]

    rows = []
    print(f"{'setup':<8} {'tokens':>6} " + " ".join(f"{name + ' s':>12}" for name in workers) + "   (median of "
          f"{args.repeats}; min)")  # fmt: skip
    for setup in args.setups:
        for length in args.lengths:
            texts = prompts(tokenizer, length, args.repeats + 1)
            times: dict[str, list[float]] = {name: [] for name in workers}
            for i, text in enumerate(texts):
                for name in workers if i % 2 else reversed(workers):  # alternate who goes first
                    seconds = ask(name, setup, text)
                    if i:  # the first request warms up
                        times[name].append(seconds)
            for name, values in times.items():
                row = {"label": name, "setup": setup, "tokens": length, "median_s": statistics.median(values),
                       "min_s": min(values)}  # fmt: skip
                rows.append(row)
            cells = " ".join(f"{statistics.median(v):>7.2f};{min(v):>4.1f}" for v in times.values())
            print(f"{setup:<8} {length:>6} {cells}", flush=True)
    for child in workers.values():
        child.stdin.close()
        child.wait(timeout=60)
    return rows


def single(args: argparse.Namespace) -> list[dict]:
    """This lens-hub's latencies alone."""
    import lens_hub

    bench = Bench(max(args.lengths))
    print(f"lens_hub from {Path(lens_hub.__file__).parent}; {machine()}")
    rows = []
    print(f"{'setup':<8} {'tokens':>6} {'median s':>9} {'min s':>7} {'MB':>6}")
    for setup in args.setups:
        for length in args.lengths:
            measured = [bench.request(setup, text) for text in prompts(bench.tokenizer, length, args.repeats + 1)]
            times, size = [seconds for seconds, _ in measured[1:]], measured[-1][1]
            row = {"label": args.label, "setup": setup, "tokens": length, "median_s": statistics.median(times),
                   "min_s": min(times), "bytes": size}  # fmt: skip
            rows.append(row)
            print(f"{setup:<8} {length:>6} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {size / 1e6:>6.2f}", flush=True)
    return rows


def profile(length: int, setup: str) -> None:
    """The cProfile of one reading (after a warm-up reading), with the time of each step."""
    bench = Bench(length)
    explorer = bench.apps[setup].state.explorer
    warm, text = prompts(bench.tokenizer, length, 2)
    explorer.read(warm)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    reading = explorer.read(text)
    read = time.perf_counter()
    payload = explorer.payload(reading, "entropy")
    built = time.perf_counter()
    encoded = json.dumps(payload)
    profiler.disable()
    print(machine())
    print(f"read {read - started:.3f} s, payload {built - read:.3f} s, JSON {time.perf_counter() - built:.3f} s "
          f"({len(encoded) / 1e6:.2f} MB)")  # fmt: skip
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 16, 64, 256], help="Prompt lengths (tokens).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed requests per length and setup.")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--versions", nargs="+", metavar="NAME=DIR", help="Compare lens-hub checkouts, in turn.")
    parser.add_argument("--label", default="", help="A name for this run's rows in --out.")
    parser.add_argument("--profile", type=int, metavar="N", help="Print the cProfile of one N-token reading.")
    parser.add_argument("--out", type=Path, help="Append the results to this JSON-lines file.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-tokens", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.max_tokens)
    if args.profile:
        return profile(args.profile, args.setups[-1])
    rows = paired(args) if args.versions else single(args)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return None


if __name__ == "__main__":
    sys.exit(main())
