"""Time ``TunedLens.from_pretrained`` of a large lens that is already in the Hugging Face cache.

What it measures: the cost of one *cached* load, the common case (a lens is downloaded once, then loaded by every
script and notebook that uses it). A cached load makes no HTTP request, but it still verifies the weights (the cache
is never trusted: a file swapped there after download must be caught), parses them, checks them for NaN / inf and
copies them into the lens. This script shows what that costs for a lens of about 1 GB.

How: it builds a random-weight base model whose hidden size and layer count give the lens its size (a Llama with
one attention head of width 8 and an MLP of width 8, so the model itself stays a few MB whatever the hidden size),
makes a lens of random weights for it, publishes it with ``push_to_hub`` to a `lens_hub.testing.LoopbackHub` (a real
HTTP server on 127.0.0.1, nothing leaves the machine) into a registry of its own, loads it once (the download), and
then times ``--loads`` cached loads by name, checking each one made no request and loaded the published weights.

Everything lives in a temporary directory, removed at the end (``--keep`` keeps it). Memory: about three times the
lens (the lens being published, then while loading: the file's bytes and the lens built from them).

Compare two versions of lens-hub by running the same script with each on ``PYTHONPATH`` and a ``--label`` each; the
runs are merged into one JSON file (``--out``) when the lens shape matches:

    git worktree add /tmp/old-wt HEAD
    PYTHONPATH=/tmp/old-wt python bench/load_lens.py --label before
    PYTHONPATH=. python bench/load_lens.py --label after

Defaults: hidden size 4096, 16 layers, float32 with biases: 16 x (4096 x 4096 + 4096) x 4 bytes = 1.07 GB (1.0 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before huggingface_hub is imported (by lens_hub)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "load_lens.json"
REPO_ID = "loopback/bench-lens"
BASE_MODEL = "loopback/bench-model"


def build_model(hidden_size: int, layers: int, vocab: int) -> torch.nn.Module:
    """A random Llama of the given width and depth whose blocks are tiny (one 8-wide head, an 8-wide MLP)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=8,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.config._name_or_path = BASE_MODEL  # the id the lens records, as if loaded from the Hub
    return model


def publish(model: torch.nn.Module, registry: Path, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Fit a random lens to ``model`` and push it; returns the seconds taken and two of its tensors (to check)."""
    from lens_hub import TunedLens

    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g).mul_(0.02))
    probe = {
        "translators.0.weight": lens.translators[0].weight.detach().clone(),
        f"translators.{len(lens.translators) - 1}.bias": lens.translators[-1].bias.detach().clone(),
    }
    start = time.perf_counter()
    lens.push_to_hub(REPO_ID, version="1.0.0", registry=registry)
    seconds = time.perf_counter() - start
    del lens
    return seconds, probe


def check(loaded: torch.nn.Module, probe: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    for name, tensor in probe.items():
        if not torch.equal(state[name], tensor):
            raise SystemExit(f"the loaded lens's {name} differs from the published one")


def code_identity() -> dict[str, object]:
    """Which lens-hub was measured: its path, and the commit of its checkout (with uncommitted changes or not)."""
    import lens_hub

    root = Path(lens_hub.__file__).resolve().parent.parent
    info: dict[str, object] = {"lens_hub": str(root), "version": lens_hub.__version__}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "lens_hub"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["commit"] = head.stdout.strip()
        info["uncommitted_changes_in_lens_hub"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def run(args: argparse.Namespace) -> dict[str, object]:
    from lens_hub import TunedLens
    from lens_hub.testing import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub, hub_environment

    work = Path(tempfile.mkdtemp(prefix="lens-hub-bench-load-", dir=args.tmp))
    try:
        model = build_model(args.hidden_size, args.layers, args.vocab)
        registry = work / "registry"
        with (
            LoopbackHub(work / "hub", tokens={LOOPBACK_TOKEN: LOOPBACK_USER}, default_user=LOOPBACK_USER) as hub,
            hub_environment(hub, work / "hf_home", token=LOOPBACK_TOKEN) as cache,
        ):
            push_s, probe = publish(model, registry, args.seed)
            start = time.perf_counter()
            first = TunedLens.from_pretrained(BASE_MODEL, model=model, registry=registry)
            download_s = time.perf_counter() - start
            check(first, probe)
            del first
            weights = next(cache.glob("models--*/snapshots/*/lens.safetensors"))
            size = weights.stat().st_size
            print(f"lens: {size / 1e9:.2f} GB; pushed in {push_s:.1f}s, first load (download) {download_s:.1f}s")
            times = []
            for i in range(args.loads):
                hub.clear_log()
                start = time.perf_counter()
                loaded = TunedLens.from_pretrained(BASE_MODEL, model=model, registry=registry)
                times.append(time.perf_counter() - start)
                if hub.requests:
                    raise SystemExit(f"a cached load made {len(hub.requests)} requests")
                check(loaded, probe)
                del loaded
                print(f"  cached load {i + 1}/{args.loads}: {times[-1]:.3f}s", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "lens": {
            "hidden_size": args.hidden_size,
            "num_layers": args.layers,
            "dtype": "float32",
            "bias": True,
            "weights_bytes": size,
        },
        "run": {
            **code_identity(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "push_seconds": round(push_s, 3),
            "first_load_seconds": round(download_s, 3),
            "cached_load_seconds": [round(t, 4) for t in times],
            "min_seconds": round(min(times), 4),
            "median_seconds": round(statistics.median(times), 4),
            "gb_per_second_median": round(size / 1e9 / statistics.median(times), 3),
        },
    }


def merge(out: Path, label: str, result: dict[str, object]) -> dict[str, object]:
    """``result`` under ``label`` in the runs of ``out``, keeping other labels' runs of the same lens shape."""
    doc: dict[str, object] = {}
    if out.is_file():
        try:
            doc = json.loads(out.read_text(encoding="utf-8"))
        except ValueError:
            doc = {}
    same = {k: v for k, v in doc.get("lens", {}).items() if k != "weights_bytes"} == {
        k: v for k, v in result["lens"].items() if k != "weights_bytes"
    }
    runs = doc.get("runs", {}) if same else {}
    runs[label] = result["run"]
    return {
        "benchmark": "cached TunedLens.from_pretrained of a registry lens (bench/load_lens.py)",
        "lens": result["lens"],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hidden-size", type=int, default=4096, help="lens width d (each translator is d x d)")
    parser.add_argument("--layers", type=int, default=16, help="number of translators (= the model's layers)")
    parser.add_argument("--vocab", type=int, default=128, help="vocabulary of the random base model")
    parser.add_argument("--loads", type=int, default=5, help="cached loads to time (min and median are reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the lens's random weights")
    parser.add_argument("--label", default="current", help="name of this run in the JSON (e.g. before / after)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    parser.add_argument("--tmp", type=Path, default=None, help="where to make the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary hub, cache and registry")
    args = parser.parse_args(argv)
    if args.loads < 1:
        parser.error("--loads must be at least 1")

    result = run(args)
    r = result["run"]
    print(
        f"{args.label}: cached from_pretrained of a {result['lens']['weights_bytes'] / 1e9:.2f} GB lens: "
        f"min {r['min_seconds']:.3f}s, median {r['median_seconds']:.3f}s over {args.loads} loads "
        f"({r['threads']} threads)"
    )
    doc = merge(args.out, args.label, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
