"""Build a tiny random-weight GPT-2 and a jsonl text corpus for CPU lens-training benchmarks.

No GPT-2 weights are available offline, so this builds a GPT-2-architecture model with
random weights (default: 3 layers, d_model 96, 4 heads, the real GPT-2 vocabulary of
50257 tokens, 1024 positions) and saves it with ``save_pretrained`` into a folder together
with the real GPT-2 tokenizer files, so that ``AutoModelForCausalLM.from_pretrained(dir)``
and ``AutoTokenizer.from_pretrained(dir)`` both work on that folder (e.g. the old
``tuned-lens`` CLI's ``--model.name DIR``).

Weights are drawn from one seeded ``torch.Generator`` in sorted parameter-name order with
GPT-2's init scheme (normal(0, 0.02); residual projections scaled by 1/sqrt(2 n_layer);
zero biases; unit LayerNorm gains), so they do not depend on the transformers version's
own init order. Needs only torch and transformers (tested with 4.57.6 and 5.24).

The corpus is the Austen novels (one ``*.txt`` per novel): one jsonl document per
paragraph (blank-line separated; hard-wrapped lines joined with single spaces; headings
such as "CHAPTER I" are their own short paragraphs), novels in sorted file-name order,
written as ``{"text": ...}`` lines.

Usage:
    python bench/tiny_gpt2.py --model-out DIR --data-out FILE.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

DEFAULT_TOKENIZER_DIR = Path("/work/shared/data/gpt2-tokenizer")
DEFAULT_CORPUS_DIR = Path("/work/shared/data/austen")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256


def init_weights_(model: GPT2LMHeadModel, n_layer: int, seed: int) -> None:
    """Re-initialise every parameter deterministically, independent of library init order."""
    gen = torch.Generator().manual_seed(seed)
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(".bias"):
                param.zero_()
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                param.fill_(1.0)
            else:
                std = resid_std if name.endswith("c_proj.weight") else 0.02
                sample = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
                param.copy_(sample.to(param.dtype))


def build_model(
    out_dir: Path,
    tokenizer_dir: Path,
    n_layer: int = 3,
    n_embd: int = 96,
    n_head: int = 4,
    vocab_size: int = GPT2_VOCAB_SIZE,
    n_positions: int = 1024,
    seed: int = 0,
) -> int:
    """Save a random GPT-2 plus the tokenizer files to ``out_dir``; return the parameter count."""
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=GPT2_EOS_ID,
        eos_token_id=GPT2_EOS_ID,
    )
    model = GPT2LMHeadModel(config).float().eval()
    init_weights_(model, n_layer, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    for fname in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / fname, out_dir / fname)
    return sum(p.numel() for p in model.parameters())


def paragraphs(text: str) -> list[str]:
    """Split a hard-wrapped text into paragraphs (blank-line separated), unwrapping lines."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped:
            current.append(stripped)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def write_corpus(corpus_dir: Path, out_path: Path) -> tuple[int, int]:
    """Write one ``{"text": paragraph}`` jsonl line per paragraph; return (docs, chars)."""
    files = sorted(corpus_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no *.txt files in {corpus_dir}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_docs = n_chars = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for path in files:
            for para in paragraphs(path.read_text(encoding="utf-8")):
                fh.write(json.dumps({"text": para}, ensure_ascii=False) + "\n")
                n_docs += 1
                n_chars += len(para)
    return n_docs, n_chars


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-out", type=Path, help="folder for the model + tokenizer")
    parser.add_argument("--data-out", type=Path, help="jsonl file to write the corpus to")
    parser.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--n-layer", type=int, default=3)
    parser.add_argument("--n-embd", type=int, default=96)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=GPT2_VOCAB_SIZE)
    parser.add_argument("--n-positions", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.model_out is None and args.data_out is None:
        parser.error("give --model-out and/or --data-out")
    if args.model_out is not None:
        n_params = build_model(
            args.model_out,
            args.tokenizer_dir,
            n_layer=args.n_layer,
            n_embd=args.n_embd,
            n_head=args.n_head,
            vocab_size=args.vocab_size,
            n_positions=args.n_positions,
            seed=args.seed,
        )
        print(f"model: {args.model_out} ({n_params:,} parameters)")
    if args.data_out is not None:
        n_docs, n_chars = write_corpus(args.corpus_dir, args.data_out)
        print(f"data: {args.data_out} ({n_docs:,} paragraph documents, {n_chars:,} chars)")


if __name__ == "__main__":
    main()
