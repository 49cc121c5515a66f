"""Seeded random sample of JSONL records by count, fraction or size, e.g. 72 MB of an SFT file.

    python -m data_process.sample --input sft.jsonl --output sft_72mb.jsonl --mb 72 --seed 0

Two passes over the input: the first validates every line and records where each good one starts (20
bytes per line in memory), the second copies the chosen lines byte for byte, in their original order
unless --shuffle. With --mb/--bytes, records are taken in random order until the next one would exceed
the budget.
"""

import logging
from array import array
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from data_process.rejected import print_rejected
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main

logger = logging.getLogger(__name__)

MB = 1_000_000


def index_lines(records):
    """Arrays (file index, byte offset, byte length) of the records (InputRecord) given."""
    file_ids, offsets, lengths = array("I"), array("Q"), array("Q")
    for item in records:
        file_ids.append(item.file_index)
        offsets.append(item.offset)
        lengths.append(len(item.raw))
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
    written = 0
    with JsonlTransform(inputs, output, fmt, skip_bad, desc="index") as job, ExitStack() as stack:
        file_ids, offsets, lengths = index_lines(job.records())
        chosen = choose(lengths, seed, count, fraction, max_bytes)
        if not shuffle:
            chosen = np.sort(chosen)
        handles = [stack.enter_context(open(path, "rb")) for path in job.files]
        for index in tqdm(chosen, desc="write"):
            handle = handles[file_ids[index]]
            handle.seek(int(offsets[index]))
            job.write(handle.read(int(lengths[index])))
            written += int(lengths[index]) + 1
    if count is not None and count > len(lengths):
        logger.warning("asked for %d records but the input has only %d; wrote them all", count, len(lengths))
    return {"input": len(lengths), "written": len(chosen), "bytes": written, "rejected": job.rejected}


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__))
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--n", type=int, help="number of records")
    size.add_argument("--fraction", type=float, help="fraction of records (0-1)")
    size.add_argument("--mb", type=float, help="target size in MB (10^6 bytes) of the output")
    size.add_argument("--bytes", type=int, help="target size in bytes of the output")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--shuffle", action="store_true", help="write in random order instead of the input order")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    max_bytes = int(args.mb * MB) if args.mb is not None else args.bytes
    counts = sample_jsonl(
        args.input, args.output, args.n, args.fraction, max_bytes, args.seed, args.shuffle, args.format, args.skip_bad
    )
    print(f"wrote {counts['written']} of {counts['input']} records ({counts['bytes'] / MB:.2f} MB) to {args.output}")
    print_rejected(counts["rejected"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
