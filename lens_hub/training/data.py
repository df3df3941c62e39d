"""Training and evaluation text: read documents, tokenize, join with EOS, cut into fixed-length sequences.

Documents are joined as ``EOS doc1 EOS doc2 ...`` and cut into full sequences (the tail is dropped). The UTF-8 bytes
of the text behind the tokens are counted so losses in nats per token convert to bits per byte:
``bits/byte = nats/token * tokens/byte / ln 2``.
"""

from __future__ import annotations

import codecs
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.format import text_lines
from ..errors import DataError, LensHubError

TEXT_SUFFIXES = (".txt", ".md")
SAMPLES = Path(__file__).parents[1] / "samples"  # texts shipped in the package, named ``sample:FILE`` in `--data`
SAMPLE_PREFIX = "sample:"
_READABLE = (*TEXT_SUFFIXES, ".jsonl")


def local_path(source: str | os.PathLike[str]) -> Path:
    """The file or folder a local `source` names: ``sample:NAME`` is ``NAME`` among the package's shipped texts
    (``sample:persuasion-ch1-8.txt``, so that examples run wherever lens-hub is installed); anything else is itself.

    Raises:
        DataError: ``sample:NAME`` where the package ships no such text (naming those it ships).
    """
    text = os.fspath(source)
    if not text.startswith(SAMPLE_PREFIX) or Path(text).exists():
        return Path(text).expanduser()
    name = text[len(SAMPLE_PREFIX) :]
    path = SAMPLES / name
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or not path.exists():
        shipped = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*") if p.suffix in _READABLE)
        raise DataError(f"--data {text}: lens-hub ships no such sample; the samples are {', '.join(shipped)}.")
    return path


def is_local(source: str | os.PathLike[str]) -> bool:
    """Whether `source` names a local file or folder (existing or meant to be, or a shipped ``sample:``) rather than
    a Hub dataset."""
    text = os.fspath(source)
    path = Path(text)
    return path.exists() or path.suffix in _READABLE or text.startswith((".", "/", "~", SAMPLE_PREFIX))


def iter_documents(
    source: str | Path, *, text_column: str = "text", split: str = "train", revision: str | None = None
) -> Iterator[Document]:
    """Yield documents from a text file, a folder of them, a ``.jsonl`` file, or a Hugging Face dataset.

    A text file is one document, yielded as an iterator of pieces (read lazily: see `tokenize`); the others as
    strings.

    Args:
        source: A ``.txt``/``.md`` file (one document), a ``.jsonl`` file (one document per line, in
            ``text_column``), a folder (every such file inside, sorted), a shipped sample (``sample:NAME``, see
            `local_path`), or a Hub dataset (``org/name`` or ``org/name:config``, see
            [`HubDataset`][lens_hub.training.data.HubDataset]), streamed.
        text_column: Field holding the text in ``.jsonl`` files and datasets.
        split: Dataset split.
        revision: Dataset branch, tag or commit (default: the main branch, pinned when first resolved).

    Raises:
        DataError: A missing file, a malformed line, or a dataset, config, split or column that does not exist.
    """
    if not is_local(source):
        yield from HubDataset.resolve(str(source), revision).documents(split=split, text_column=text_column)
        return
    path = local_path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _READABLE and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .txt, .md or .jsonl files.")
        for file in files:
            yield from iter_documents(file, text_column=text_column)
    elif path.suffix == ".jsonl" and path.is_file():
        try:
            for n, record in text_lines(path, records=True):
                if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
                    raise DataError(f"{path}:{n}: no text field {text_column!r}; pass --text-column NAME")
                yield record[text_column]
        except ValueError as exc:
            raise DataError(f"{exc}: write one JSON object per line") from None
    elif path.is_file():
        yield _file_pieces(path)
    else:
        raise DataError(f"{source} does not exist.")


PIECE_CHARS = 1 << 20  # text tokenized at once: a huge document is read and tokenized in pieces of this size


def _file_pieces(path: Path) -> Iterator[str]:
    """A text file as pieces of at most `PIECE_CHARS` characters, read lazily (one document, never whole).

    Raises:
        DataError: The file is not UTF-8 text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        while True:
            block = f.read(PIECE_CHARS)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text ({exc.reason}); give a .txt or .md file of text.") from None
            if text:
                yield text
            if not block:
                return


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of at most `PIECE_CHARS` characters, cut after a newline or a space where there is one (a
    cut elsewhere would split a word into other tokens)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        window = start + PIECE_CHARS
        cut = max(text.rfind("\n", start, window), text.rfind(" ", start, window))
        cut = cut + 1 if cut > start else window
        yield text[start:cut]
        start = cut
    yield text[start:]


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face Hub, pinned to a commit, read by streaming with the ``datasets`` library.

    Streaming reads the files only as far as the documents consumed, so training on the first few million tokens of
    a terabyte corpus downloads a few shards, not the corpus.
    """

    name: str
    config: str | None
    commit: str

    @classmethod
    def resolve(cls, spec: str, revision: str | None = None) -> HubDataset:
        """Parse ``org/name[:config]`` and pin ``revision`` (default: the main branch) to its commit.

        Raises:
            DataError: The ``datasets`` package is missing, or the dataset or revision does not exist or cannot
                be read (offline, private, unreachable).
        """
        from ..hub.files import is_offline, resolve_commit

        name, _, config = spec.partition(":")
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataError(
                f"{spec!r} is not a local file, so it names a Hub dataset; reading those needs the datasets "
                "package: `pip install 'lens-hub[datasets]'`."
            ) from None
        if is_offline():
            raise DataError(
                f"{spec!r} is not a local file, so it names a Hub dataset, which is streamed from the Hub, but offline "
                "mode is on (HF_HUB_OFFLINE=1). Pass a local .txt/.jsonl file or folder instead."
            )
        try:
            commit = resolve_commit(name, "dataset", revision or "main")
        except LensHubError as exc:
            raise DataError(f"dataset {exc} (a local path must exist; a dataset is org/name[:config])") from None
        return cls(name, config or None, commit)

    def __str__(self) -> str:
        return f"{self.name}{':' + self.config if self.config else ''}@{self.commit}"

    def documents(self, *, split: str = "train", text_column: str = "text") -> Iterator[str]:
        """Yield the ``text_column`` of each record of ``split``, streamed in order.

        Raises:
            DataError: The config, split or column does not exist, or a record's text is not a string.
        """
        import datasets

        try:
            stream = datasets.load_dataset(self.name, self.config, split=split, revision=self.commit, streaming=True)
            for n, record in enumerate(stream):
                text = record.get(text_column)
                if not isinstance(text, str):
                    problem = f"no column {text_column!r}" if text_column not in record else f"a {type(text).__name__}"
                    raise DataError(
                        f"dataset {self} split {split!r} record {n}: {problem} where text was expected "
                        f"(columns: {', '.join(record)}); pass --text-column NAME"
                    )
                yield text
        except ValueError as exc:  # datasets' way of saying: no such config or split (it lists the choices)
            raise DataError(
                f"dataset {self}: {' '.join(str(exc).split())} (choose with --data NAME:CONFIG and --split)"
            ) from None


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


Document = str | Iterator[str]  # a text, or a text read in pieces (`iter_documents` reads text files so)


def tokenize(
    documents: Iterator[Document] | list[Document],
    tokenizer: object,
    *,
    seq_len: int,
    max_sequences: int | None = None,
    source: str = "",
    batch_docs: int = 64,
) -> TokenData:
    """Tokenize documents into ``[n, seq_len]`` sequences, joined with the tokenizer's EOS.

    Long documents are tokenized in pieces of at most `PIECE_CHARS` characters, and reading stops once
    ``max_sequences`` full sequences exist: a huge record or a one-line 40 MiB file costs only what the run reads.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents; set tokenizer.eos_token_id.")
    stream: list[int] = []
    num_bytes = 0
    limit = None if max_sequences is None else max_sequences * seq_len
    batch: list[tuple[bool, str]] = []  # (starts a document, text)

    def flush() -> None:
        nonlocal num_bytes
        texts = [text for _, text in batch]
        for (first, _), ids in zip(batch, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):  # type: ignore[operator]
            if first:
                stream.append(eos)
            stream.extend(ids)
        num_bytes += sum(len(t.encode("utf-8")) for t in texts)
        batch.clear()

    def enough() -> bool:
        return limit is not None and len(stream) >= limit

    for doc in documents:
        pieces = _pieces(doc) if isinstance(doc, str) else (p for whole in doc for p in _pieces(whole))
        for k, piece in enumerate(pieces):
            batch.append((k == 0, piece))
            if len(batch) >= batch_docs or sum(len(t) for _, t in batch) >= PIECE_CHARS:
                flush()
                if enough():
                    break
        if enough():
            break
    if batch and not enough():
        flush()
    n = len(stream) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise DataError(
            f"{source or 'the data'} holds {len(stream):,} tokens, less than one sequence of seq_len {seq_len:,} "
            "tokens; lower seq_len (--seq-len) or give more text."
        )
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
    revision: str | None = None,
) -> TokenData:
    """Read, tokenize and cut text into ``[n, seq_len]`` sequences (`iter_documents` + `tokenize`).

    Args:
        source: A local file or folder, or a Hub dataset ``org/name[:config]`` (see `iter_documents`).
        tokenizer: A Hugging Face tokenizer with an EOS token.
        seq_len: Tokens per sequence.
        max_sequences: Stop after this many sequences (a streamed dataset is read only that far).
        text_column: Field holding the text in ``.jsonl`` files and datasets.
        split: Dataset split.
        revision: Dataset branch, tag or commit (default: main).

    Returns:
        The sequences; their ``source`` names a Hub dataset with its pinned commit and split, e.g.
        ``org/name@<commit> (train)``, for the lens's provenance.

    Raises:
        DataError: The data cannot be read, or holds less than one sequence.
    """
    if is_local(source):
        docs, label = iter_documents(source, text_column=text_column), str(source)
    else:
        dataset = HubDataset.resolve(str(source), revision)
        docs, label = dataset.documents(split=split, text_column=text_column), f"{dataset} ({split})"
    return tokenize(docs, tokenizer, seq_len=seq_len, max_sequences=max_sequences, source=label)


def shuffled(num_sequences: int, seed: int) -> torch.Tensor:
    """A deterministic permutation of sequence indices (same seed, same order, on every machine)."""
    return torch.randperm(num_sequences, generator=torch.Generator().manual_seed(seed))
