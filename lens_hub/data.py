"""Training and evaluation text: read documents, tokenize, join with EOS, cut into fixed-length sequences.

Documents are joined as ``EOS doc1 EOS doc2 ...`` and cut into full sequences (the tail is dropped). The UTF-8 bytes
of the text behind the tokens are counted so losses in nats per token convert to bits per byte:
``bits/byte = nats/token * tokens/byte / ln 2``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LensHubError

TEXT_SUFFIXES = (".txt", ".md")


class DataError(LensHubError):
    """The training or evaluation data cannot be read, or there is too little of it."""


def iter_documents(source: str | Path, *, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Yield documents from a text file, a folder of them, a ``.jsonl`` file, or a Hugging Face dataset.

    Args:
        source: A ``.txt``/``.md`` file (one document), a ``.jsonl`` file (one document per line, in
            ``text_column``), a folder (every such file inside, sorted), or a dataset name (``name`` or
            ``name:config``) loaded with the ``datasets`` library in streaming mode.
        text_column: Field holding the text in ``.jsonl`` files and datasets.
        split: Dataset split.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (*TEXT_SUFFIXES, ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .txt, .md or .jsonl files.")
        for file in files:
            yield from iter_documents(file, text_column=text_column)
    elif path.suffix == ".jsonl" and path.is_file():
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
                    raise DataError(f"{path}:{n}: no text field {text_column!r}; pass --text-column NAME")
                yield record[text_column]
    elif path.is_file():
        yield path.read_text(encoding="utf-8")
    elif path.suffix in (*TEXT_SUFFIXES, ".jsonl") or str(source).startswith((".", "/", "~")):
        raise DataError(f"{source} does not exist.")
    else:
        yield from _iter_dataset(str(source), text_column, split)


def _iter_dataset(name: str, text_column: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a local file; to read Hugging Face datasets, `pip install datasets`."
        ) from None
    dataset, _, config = name.partition(":")
    stream = datasets.load_dataset(dataset, config or None, split=split, streaming=True)
    for record in stream:
        if text_column not in record:
            raise DataError(f"dataset {name!r} has no column {text_column!r}; pass --text-column NAME")
        yield record[text_column]


@dataclass
class TokenData:
    """Fixed-length token sequences and the bytes of text behind them."""

    sequences: torch.Tensor  # [num_sequences, seq_len], int64
    num_bytes: int  # UTF-8 bytes of the documents consumed
    num_tokens_read: int  # tokens of those documents, EOS included (>= sequences.numel())
    source: str

    @property
    def seq_len(self) -> int:
        return int(self.sequences.shape[1])

    @property
    def tokens_per_byte(self) -> float:
        return self.num_tokens_read / max(self.num_bytes, 1)

    def bits_per_byte(self, nats_per_token: float) -> float:
        """Convert a loss in nats per token to bits per byte of text."""
        return nats_per_token * self.tokens_per_byte / math.log(2)

    def split(self, holdout: float | int) -> tuple[TokenData, TokenData]:
        """Split off the last ``holdout`` sequences (a fraction or a count) for evaluation."""
        n = len(self.sequences)
        k = holdout if isinstance(holdout, int) else round(n * holdout)
        if not 0 < k < n:
            raise DataError(f"cannot hold out {holdout} of {n} sequences; use more data or a smaller holdout.")
        ratio = self.num_bytes / self.num_tokens_read
        head, tail = self.sequences[: n - k], self.sequences[n - k :]
        return (
            TokenData(head, round(head.numel() * ratio), head.numel(), self.source),
            TokenData(tail, round(tail.numel() * ratio), tail.numel(), f"{self.source} (held out)"),
        )


def tokenize(
    documents: Iterator[str] | list[str],
    tokenizer: object,
    *,
    seq_len: int,
    max_sequences: int | None = None,
    source: str = "",
    batch_docs: int = 64,
) -> TokenData:
    """Tokenize documents into ``[n, seq_len]`` sequences, joined with the tokenizer's EOS.

    Stops once ``max_sequences`` full sequences exist (so a huge streamed dataset is read only as far as needed).
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents; set tokenizer.eos_token_id.")
    stream: list[int] = []
    num_bytes = 0
    limit = None if max_sequences is None else max_sequences * seq_len

    def flush(batch: list[str]) -> None:
        nonlocal num_bytes
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:  # type: ignore[operator]
            stream.append(eos)
            stream.extend(ids)
        num_bytes += sum(len(d.encode("utf-8")) for d in batch)

    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == batch_docs:
            flush(batch)
            batch = []
            if limit is not None and len(stream) >= limit:
                break
    if batch and (limit is None or len(stream) < limit):
        flush(batch)
    n = len(stream) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise DataError(f"{source or 'the data'} holds {len(stream)} tokens, less than one sequence of {seq_len}.")
    sequences = torch.tensor(stream[: n * seq_len], dtype=torch.int64).view(n, seq_len)
    return TokenData(sequences, num_bytes, len(stream), source)


def load_token_data(
    source: str | Path,
    tokenizer: object,
    *,
    seq_len: int,
    max_sequences: int | None = None,
    text_column: str = "text",
    split: str = "train",
) -> TokenData:
    """`iter_documents` + `tokenize`."""
    docs = iter_documents(source, text_column=text_column, split=split)
    return tokenize(docs, tokenizer, seq_len=seq_len, max_sequences=max_sequences, source=str(source))


def shuffled(num_sequences: int, seed: int) -> torch.Tensor:
    """A deterministic permutation of sequence indices (same seed, same order, on every machine)."""
    return torch.randperm(num_sequences, generator=torch.Generator().manual_seed(seed))
