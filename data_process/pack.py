"""Tokenize and pack documents into fixed-length blocks for padding-free pretraining.

    python -m data_process.pack --input data/synth/pretrain.jsonl --output data/packed \\
        --tokenizer runs/tokenizer --block_size 512 --num_proc 2 --bin

Documents are tokenized in batches by `datasets.map(num_proc=...)`, each followed by eos, then packed one of two
ways (`PACKERS`):
- `stream` (the default): concatenated and cut into full blocks. `position_ids` restart at 0 at every document start
  and at every block start, so a model given no attention mask sees each document on its own (see
  create_causal_mask). Tokens after the last full block are dropped and their count is logged.
- `best_fit`: whole documents placed best-fit-decreasing into rows of at most `block_size` tokens by TRL's
  `pack_dataset` (strategy "bfd"), so every row starts at a document start, as each of upstream MiniMind's samples
  does; a document longer than a block keeps its first `block_size` tokens (the dropped tail is counted). Rows carry
  `seq_lengths` and are right-padded in the batch by the collator.
Everything streams through Arrow files on disk: memory does not grow with the corpus.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_process.jsonl import umask
from data_process.loading import load_text_dataset
from modeling_miniminds.cli import FlagParser, command_main
from modeling_miniminds.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

PACK_BATCH_DOCS = 1000
BIN_NAME = "input_ids.bin"
INDEX_NAME = "input_ids.json"


def _tokenize(batch, tokenizer, text_column, eos_id):
    ids = tokenizer(batch[text_column], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if eos_id is not None:
        ids = [row + [eos_id] for row in ids]
    return {"input_ids": ids}


def tokenize_dataset(dataset, tokenizer, text_column="text", num_proc=None, add_eos=True, batch_size=1000):
    """One row of token ids per document (eos appended), computed in batches across `num_proc` processes."""
    if text_column not in dataset.column_names:
        raise ValueError(f"no column '{text_column}' to tokenize (columns: {', '.join(dataset.column_names)})")
    eos_id = tokenizer.eos_token_id if add_eos else None
    if add_eos and eos_id is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token")
    return dataset.map(
        _tokenize,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "text_column": text_column, "eos_id": eos_id},
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}),
        desc="tokenize",
    )


def block_position_ids(doc_starts):
    """Position ids for blocks given a bool array (blocks, block_size) marking the first token of each document.

    Each block also restarts at 0, since a document continued from the previous block has lost its context.
    """
    starts = doc_starts.copy()
    starts[:, 0] = True
    index = np.broadcast_to(np.arange(starts.shape[1]), starts.shape)
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return index - last_start


class BlockPacker:
    """A batched `datasets.map` function that cuts the token stream into blocks, carrying the unfinished block to
    the next batch so no document boundary is lost between batches. Whole batches go to Arrow at once (a per-row
    generator spent more time than the tokenizer). Batches must arrive in order, so it runs in one process."""

    def __init__(self, block_size):
        self.block_size = block_size
        self.carry_ids = np.empty(0, dtype=np.int32)
        self.carry_starts = np.empty(0, dtype=bool)

    def __call__(self, batch):
        column = batch.column("input_ids")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        starts = np.zeros(len(flat), dtype=bool)
        starts[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
        ids = np.concatenate([self.carry_ids, flat])
        doc_starts = np.concatenate([self.carry_starts, starts])
        full = len(ids) // self.block_size * self.block_size
        positions = block_position_ids(doc_starts[:full].reshape(-1, self.block_size))
        self.carry_ids, self.carry_starts = ids[full:], doc_starts[full:]
        return pa.table(
            {
                "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(ids[:full]), self.block_size),
                "position_ids": pa.FixedSizeListArray.from_arrays(
                    pa.array(positions.ravel().astype(np.int32)), self.block_size
                ),
            }
        )


def pack_dataset(dataset, tokenizer, block_size, text_column="text", num_proc=None, add_eos=True):
    """Tokenize `dataset[text_column]` and pack it into rows of `input_ids` and `position_ids` (block_size each).

    Blocks are filled across document boundaries; the final partial block is dropped (count logged).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    tokenized = tokenize_dataset(dataset, tokenizer, text_column, num_proc, add_eos)
    total = _total_tokens(tokenized)
    num_blocks, dropped = divmod(total, block_size)
    if num_blocks == 0:
        raise ValueError(f"the dataset has {total} tokens, fewer than one block of block_size={block_size}")
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32"), length=block_size),
            "position_ids": datasets.Sequence(datasets.Value("int32"), length=block_size),
        }
    )
    packed = tokenized.with_format("arrow").map(
        BlockPacker(block_size),
        batched=True,
        batch_size=PACK_BATCH_DOCS,
        remove_columns=tokenized.column_names,
        features=features,
        desc="pack",
    )
    packed = packed.with_format(None)
    logger.info("packed %d documents, %d tokens into %d blocks of %d", len(dataset), total, num_blocks, block_size)
    if dropped:
        logger.warning("dropped the last %d of %d tokens (after the last full block of %d)", dropped, total, block_size)
    return packed


def pack_best_fit(dataset, tokenizer, block_size, text_column="text", num_proc=None, add_eos=True):
    """Tokenize `dataset[text_column]` and pack whole documents best-fit into rows of at most `block_size` tokens
    (`input_ids`, `seq_lengths`), each row starting at a document start; the tails cut from documents longer than a
    block are counted and logged."""
    from trl.data_utils import pack_dataset as trl_pack_dataset

    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    tokenized = tokenize_dataset(dataset, tokenizer, text_column, num_proc, add_eos)
    total = _total_tokens(tokenized)
    if total == 0:
        raise ValueError("the dataset holds no tokens to pack")
    map_kwargs = {"num_proc": num_proc if num_proc and num_proc > 1 else None, "desc": "pack best-fit"}
    packed = trl_pack_dataset(tokenized, block_size, strategy="bfd", map_kwargs=map_kwargs)
    kept = _total_tokens(packed)
    logger.info(
        "packed %d documents, %d tokens best-fit into %d rows of at most %d (%.1f%% of the row space filled)",
        len(dataset),
        kept,
        len(packed),
        block_size,
        100 * kept / (len(packed) * block_size),
    )
    if kept < total:
        logger.warning(
            "dropped %d of %d tokens: the tails of documents longer than a block of %d", total - kept, total, block_size
        )
    return packed


# How text becomes training rows, by the name `--packing` takes.
PACKERS = {"stream": pack_dataset, "best_fit": pack_best_fit}


def _total_tokens(tokenized):
    total = 0
    for batch in tokenized.with_format("arrow").iter(batch_size=10 * PACK_BATCH_DOCS):
        total += int(pc.sum(pc.list_value_length(batch.column("input_ids"))).as_py() or 0)
    return total


def write_bin(packed, output_dir, vocab_size, eos_token_id=None):
    """Write the blocks as one flat uint16 (vocab <= 65536) or uint32 memmap file plus a JSON index."""
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    block_size = len(packed[0]["input_ids"])
    output_dir = Path(output_dir)
    bin_path = output_dir / BIN_NAME
    with open(bin_path, "wb") as handle:
        for batch in packed.with_format("arrow").iter(batch_size=PACK_BATCH_DOCS):
            flat = pc.list_flatten(batch.column("input_ids")).to_numpy(zero_copy_only=False)
            handle.write(flat.astype(dtype).tobytes())
    index = {
        "file": BIN_NAME,
        "dtype": np.dtype(dtype).name,
        "num_blocks": len(packed),
        "block_size": block_size,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "note": "row-major blocks; a document ends with eos_token_id",
    }
    (output_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return bin_path


def load_bin(output_dir):
    """Memory-map the blocks written by `write_bin` as an array of shape (num_blocks, block_size)."""
    output_dir = Path(output_dir)
    index = json.loads((output_dir / INDEX_NAME).read_text(encoding="utf-8"))
    return np.memmap(
        output_dir / index["file"], dtype=index["dtype"], mode="r", shape=(index["num_blocks"], index["block_size"])
    )


def save_packed(packed, output_dir, tokenizer=None, write_memmap=False):
    """Save atomically: write a sibling temporary folder, then move it into place."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        packed.save_to_disk(str(tmp))
        if write_memmap:
            write_bin(packed, tmp, len(tokenizer), tokenizer.eos_token_id)
        tmp.chmod(0o777 & ~umask())
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def check_blocks(dataset, name: str, block_size: int, vocab_size: int) -> None:
    """Packed blocks must all be `block_size` long (best-fit rows, with `seq_lengths`, at most that) and hold only
    ids the model's embedding table has."""
    if len(dataset) == 0:
        raise ValueError(
            f"{name}: no complete {block_size}-token block; the dataset holds fewer tokens than --block_size."
        )
    input_ids = dataset.data.column("input_ids")
    lengths = pc.list_value_length(input_ids)
    shortest, longest = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    best_fit = "seq_lengths" in dataset.column_names
    if longest > block_size or (not best_fit and shortest != block_size):
        raise ValueError(
            f"{name}: packed blocks are {shortest}..{longest} tokens long but --block_size is {block_size}; "
            "re-pack the data or pass the block size it was packed with."
        )
    max_id = pc.max(pc.list_flatten(input_ids)).as_py()
    if max_id >= vocab_size:
        raise ValueError(
            f"{name}: token id {max_id} is outside the model's vocabulary of {vocab_size}; the data was packed "
            "with a different tokenizer."
        )


def row_counts(rows, eos_token_id) -> tuple[np.ndarray, np.ndarray]:
    """(documents, tokens) of each packed row. A best-fit row lists its documents in `seq_lengths`; a stream block
    (all of one length) counts those that end in it (their eos), so a document cut across blocks counts once."""
    documents, tokens = [], []
    for batch in rows.with_format("arrow").iter(batch_size=10 * PACK_BATCH_DOCS):
        ids = batch.column("input_ids")
        tokens.append(pc.list_value_length(ids).to_numpy(zero_copy_only=False))
        if "seq_lengths" in batch.column_names:
            documents.append(pc.list_value_length(batch.column("seq_lengths")).to_numpy(zero_copy_only=False))
        else:
            is_eos = pc.list_flatten(ids).to_numpy(zero_copy_only=False) == eos_token_id
            documents.append(is_eos.reshape(len(ids), -1).sum(axis=1))
    return np.concatenate(documents).astype(np.int64), np.concatenate(tokens).astype(np.int64)


def load_blocks(
    name,
    tokenizer,
    block_size: int,
    vocab_size: int,
    split="train",
    text_column="text",
    num_proc=None,
    packing: str = "stream",
):
    """Training rows from any dataset `load_text_dataset` reads, packed here (`packing`, a name in `PACKERS`) unless
    packed already."""
    if packing not in PACKERS:
        raise ValueError(f"--packing: expected one of {', '.join(PACKERS)}, got {packing!r}")
    dataset = load_text_dataset(name, split=split, text_column=text_column)
    if "input_ids" not in dataset.column_names:
        dataset = PACKERS[packing](dataset, tokenizer, block_size, text_column=text_column, num_proc=num_proc)
    check_blocks(dataset, name, block_size, vocab_size)
    return dataset


def make_parser():
    parser = FlagParser(description=__doc__)
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL/parquet files, folders, globs or a Hub id (see data_process.loading.load_text_dataset)",
    )
    parser.add_argument("--output", required=True, help="folder for the packed dataset (save_to_disk)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id")
    parser.add_argument("--block_size", type=int, default=512, help="tokens per block (the training sequence length)")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenizer processes")
    parser.add_argument("--text_column", default="text", help="column holding the document text")
    parser.add_argument("--no_eos", action="store_true", help="do not append eos after each document")
    parser.add_argument(
        "--packing",
        choices=list(PACKERS),
        default="stream",
        help="stream: back to back, cut into full blocks (default); best_fit: whole documents, every row starting at one",
    )
    parser.add_argument("--bin", action="store_true", help="also write input_ids.bin (uint16/uint32 memmap) + index")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.bin and args.packing == "best_fit":
        raise ValueError("--bin writes fixed-length blocks; best_fit rows vary in length (leave out --bin)")
    tokenizer = load_tokenizer(args.tokenizer)
    parts = [load_text_dataset(name, text_column=args.text_column) for name in args.input]
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    packed = PACKERS[args.packing](
        dataset, tokenizer, args.block_size, args.text_column, args.num_proc, not args.no_eos
    )
    save_packed(packed, args.output, tokenizer, write_memmap=args.bin)
    print(
        f"wrote {len(packed)} rows of {'at most ' if args.packing == 'best_fit' else ''}{args.block_size} tokens to {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
