"""Seeded random sample of JSONL records by count, fraction or size, e.g. 72 MB of an SFT file.

    python -m data_process.sample --input sft.jsonl --output sft_72mb.jsonl --mb 72 --seed 0

Two passes over the input: the first validates every line and records where each good one starts (20
bytes per line in memory), the second copies the chosen lines byte for byte, in their original order
unless --shuffle. With --mb/--bytes, records are taken in random order until the next one would exceed
the budget.
"""

import logging
from array import array

import numpy as np
from tqdm import tqdm

from data_process.io import (
    RejectedWriter,
    add_io_arguments,
    atomic_write,
    build_parser,
    cli,
    expand_inputs,
    get_validator,
    iter_records,
    rejected_path_for,
)

logger = logging.getLogger(__name__)

MB = 1_000_000


def index_lines(files, validate=None, rejected=None):
    """Arrays (file index, byte offset, byte length) of every good record."""
    file_ids, offsets, lengths = array("I"), array("Q"), array("Q")
    for file_index, path in enumerate(files):
        for _, offset, raw, _ in tqdm(iter_records(path, validate, rejected), desc=f"index {path.name}"):
            file_ids.append(file_index)
            offsets.append(offset)
            lengths.append(len(raw))
    return np.frombuffer(file_ids, np.uint32), np.frombuffer(offsets, np.uint64), np.frombuffer(lengths, np.uint64)


def choose(lengths, seed=0, count=None, fraction=None, max_bytes=None):
    """Indices of the chosen records, in random order; exactly one of count, fraction or max_bytes is used."""
    given = [x is not None for x in (count, fraction, max_bytes)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of count (--n), fraction (--fraction) or size (--mb/--bytes)")
    order = np.random.default_rng(seed).permutation(len(lengths))
    if count is not None:
        if count < 0:
            raise ValueError(f"--n must be >= 0, got {count}")
        return order[:count]
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"--fraction must be between 0 and 1, got {fraction}")
        return order[: round(fraction * len(lengths))]
    line_bytes = lengths[order] + 1
    return order[: int(np.searchsorted(np.cumsum(line_bytes), max_bytes, side="right"))]


def sample_jsonl(
    inputs, output, count=None, fraction=None, max_bytes=None, seed=0, shuffle=False, fmt="auto", skip_bad=False
):
    """Write a seeded sample of the records in `inputs` to `output`; return counts and bytes."""
    files = expand_inputs(inputs)
    rejected = RejectedWriter(rejected_path_for(output)) if skip_bad else None
    try:
        file_ids, offsets, lengths = index_lines(files, get_validator(fmt), rejected)
    finally:
        if rejected:
            rejected.close()
    chosen = choose(lengths, seed, count, fraction, max_bytes)
    if not shuffle:
        chosen = np.sort(chosen)
    written = 0
    handles = [open(path, "rb") for path in files]
    try:
        with atomic_write(output, "wb") as out:
            for index in tqdm(chosen, desc="write"):
                handle = handles[file_ids[index]]
                handle.seek(int(offsets[index]))
                out.write(handle.read(int(lengths[index])) + b"\n")
                written += int(lengths[index]) + 1
    finally:
        for handle in handles:
            handle.close()
    if count is not None and count > len(lengths):
        logger.warning("asked for %d records but the input has only %d; wrote them all", count, len(lengths))
    return {
        "input": len(lengths),
        "written": len(chosen),
        "bytes": written,
        "rejected": rejected.count if rejected else 0,
    }


def make_parser():
    parser = add_io_arguments(build_parser(__doc__))
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--n", type=int, help="number of records")
    size.add_argument("--fraction", type=float, help="fraction of records (0-1)")
    size.add_argument("--mb", type=float, help="target size in MB (10^6 bytes) of the output")
    size.add_argument("--bytes", type=int, help="target size in bytes of the output")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--shuffle", action="store_true", help="write in random order instead of the input order")
    return parser


@cli
def main(argv=None):
    args = make_parser().parse_args(argv)
    max_bytes = int(args.mb * MB) if args.mb is not None else args.bytes
    counts = sample_jsonl(
        args.input, args.output, args.n, args.fraction, max_bytes, args.seed, args.shuffle, args.format, args.skip_bad
    )
    print(f"wrote {counts['written']} of {counts['input']} records ({counts['bytes'] / MB:.2f} MB) to {args.output}")
    if counts["rejected"]:
        print(f"rejected {counts['rejected']} bad lines -> {rejected_path_for(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
