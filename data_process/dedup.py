"""Remove exact and near-duplicate records (MinHash LSH from datasketch), streaming.

    python -m data_process.dedup --input clean.jsonl --output dedup.jsonl --threshold 0.8 --num_proc 2

The first occurrence is kept. Exact duplicates match after NFKC, case folding and whitespace collapsing.
Near duplicates share enough shingles (estimated Jaccard >= threshold; LSH candidates are verified
against the stored signature, so LSH false positives are not removed). A shingle is `ngram` consecutive
tokens, a token being one CJK character or one run of other letters and digits: n=3 is three Chinese
characters or three English words, and punctuation or spacing edits do not matter. Memory holds the LSH
index and one 16-byte digest per kept record; kept signatures live in a temporary file on disk. Kept lines
are copied byte for byte.
"""

import hashlib
import os
import re
import tempfile
import unicodedata
import zlib
from array import array
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from data_process.jsonl import dumps
from data_process.records import record_text
from data_process.rejected import print_rejected
from data_process.text import CJK
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main

SPACES = re.compile(r"\s+")
TOKEN = re.compile(rf"[{CJK}]|[^\W{CJK}]+")
ROLL_PRIME = np.uint64(1_000_003)
MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class DedupConfig:
    """Exact and/or near-duplicate removal; near-duplicates by MinHash over token n-grams."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 3
    exact: bool = True
    near: bool = True
    seed: int = 1
    num_proc: int = 1
    batch_size: int = 1000

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be at least 16, got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {self.num_proc}")


def normalize(text):
    """What counts as the same text: NFKC, case-folded, whitespace runs collapsed to one space."""
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_digest(normalized):
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def shingle_hashes(normalized, ngram):
    """Distinct 32-bit hashes of the n-grams of tokens; n-gram hashes are combined with numpy, not per n-gram."""
    codes = np.array([zlib.crc32(t.encode("utf-8")) for t in TOKEN.findall(normalized)], dtype=np.uint64)
    if len(codes) == 0:
        return np.zeros(0, dtype=np.uint32)
    n = min(ngram, len(codes))
    count = len(codes) - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        hashes = hashes * ROLL_PRIME + codes[k : k + count]
    hashes = (hashes ^ (hashes >> np.uint64(31))) * MIX
    return np.unique((hashes >> np.uint64(32)).astype(np.uint32))


def _identity(value):
    """datasketch hashes each value it is given; shingle_hashes has already done that."""
    return value


class Signer:
    """MinHash signatures from one reusable sketch: permutations are built once, not per document."""

    def __init__(self, num_perm, seed, ngram):
        self.ngram = ngram
        self.sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity)
        self.scheme = self.sketch.scheme
        self.dtype = self.sketch.hashvalues.dtype

    def sign(self, normalized):
        self.sketch.clear()
        self.sketch.update_batch(shingle_hashes(normalized, self.ngram))
        return self.sketch.hashvalues.copy()


_worker_signer = None


def _init_worker(num_perm, seed, ngram):
    global _worker_signer
    _worker_signer = Signer(num_perm, seed, ngram)


def _sign_batch(texts):
    normalized = [normalize(t) for t in texts]
    return [(exact_digest(n), _worker_signer.sign(n)) for n in normalized]


class SignatureStore:
    """Kept signatures appended to a temporary file and read back by row for verification."""

    def __init__(self, num_perm, dtype):
        self.row_bytes = num_perm * np.dtype(dtype).itemsize
        self.dtype = dtype
        self.handle = tempfile.TemporaryFile(prefix="miniminds-minhash-")  # noqa: SIM115 (open for the store's life)
        self.rows = 0

    def append(self, signature):
        self.handle.write(np.ascontiguousarray(signature).tobytes())
        self.rows += 1
        return self.rows - 1

    def get(self, row):
        self.handle.flush()
        return np.frombuffer(os.pread(self.handle.fileno(), self.row_bytes, row * self.row_bytes), dtype=self.dtype)

    def close(self):
        self.handle.close()


class Deduplicator:
    """Decides, record by record in input order, whether a text duplicates one already kept."""

    def __init__(self, config):
        self.config = config
        self.signer = Signer(config.num_perm, config.seed, config.ngram)
        try:
            self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        except ValueError as err:
            raise ValueError(f"threshold={config.threshold} with num_perm={config.num_perm}: {err}") from None
        self.store = SignatureStore(config.num_perm, self.signer.dtype)
        self.digests = {}
        self.origin_files = array("I")
        self.origin_lines = array("Q")

    def origin(self, row):
        """(file index, line number) of a kept record."""
        return self.origin_files[row], self.origin_lines[row]

    def check(self, digest, signature, origin):
        """Return (kind, row of the kept original, similarity) for a duplicate, or None after keeping it."""
        if self.config.exact and digest in self.digests:
            return "exact", self.digests[digest], 1.0
        sketch = LeanMinHash(seed=self.config.seed, hashvalues=signature, scheme=self.signer.scheme)
        if self.config.near:
            for row in sorted(self.lsh.query(sketch)):
                similarity = float(np.mean(self.store.get(row) == signature))
                if similarity >= self.config.threshold:
                    return "near", row, similarity
        row = self.store.append(signature)
        self.origin_files.append(origin[0])
        self.origin_lines.append(origin[1])
        if self.config.exact:
            self.digests[digest] = row
        if self.config.near:
            self.lsh.insert(row, sketch)
        return None

    def close(self):
        self.store.close()


def _chunks(records, size):
    chunk = []
    for item in records:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _signatures(pool, signer, texts, batch_size):
    if pool is None:
        return [(exact_digest(n), signer.sign(n)) for n in map(normalize, texts)]
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    return [pair for batch in pool.map(_sign_batch, batches) for pair in batch]


def _duplicate_entry(item, kind, similarity, original, files):
    """One line of the --duplicates report: the removed record and the kept original it repeats."""
    original_file, original_line = original
    return {
        "file": str(item.path),
        "line": item.line,
        "kind": kind,
        "similarity": round(similarity, 4),
        "duplicate_of": {"file": str(files[original_file]), "line": original_line},
    }


def dedup_jsonl(inputs, output, config=None, fmt="auto", skip_bad=False, duplicates_path=None):
    """Write the first occurrence of each record to `output`; return counts (input, kept, exact, near, rejected)."""
    config = config or DedupConfig()
    job = JsonlTransform(inputs, output, fmt, skip_bad, desc="dedup")
    dedup = Deduplicator(config)
    counts = {"input": 0, "kept": 0, "exact": 0, "near": 0}
    pool = None
    if config.num_proc > 1:
        pool = Pool(config.num_proc, initializer=_init_worker, initargs=(config.num_perm, config.seed, config.ngram))
    # Records are read in chunks of a few batches per worker, so memory stays bounded while workers stay busy.
    chunk_size = config.batch_size * config.num_proc * 4
    try:
        with job, open(duplicates_path, "w", encoding="utf-8") if duplicates_path else nullcontext() as dup_handle:
            for chunk in _chunks(job.records(), chunk_size):
                texts = [record_text(item.record) for item in chunk]
                signed = _signatures(pool, dedup.signer, texts, config.batch_size)
                for item, (digest, signature) in zip(chunk, signed):
                    counts["input"] += 1
                    found = dedup.check(digest, signature, (item.file_index, item.line))
                    if found is None:
                        job.write(item.raw)
                        counts["kept"] += 1
                        continue
                    kind, row, similarity = found
                    counts[kind] += 1
                    if dup_handle:
                        entry = _duplicate_entry(item, kind, similarity, dedup.origin(row), job.files)
                        dup_handle.write(dumps(entry) + "\n")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        dedup.close()
    counts["rejected"] = job.rejected
    return counts


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__))
    defaults = DedupConfig()
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="estimated Jaccard similarity (0-1) at which two texts are near duplicates",
    )
    parser.add_argument(
        "--num_perm", type=int, default=defaults.num_perm, help="MinHash permutations: more is more accurate and slower"
    )
    parser.add_argument(
        "--ngram", type=int, default=defaults.ngram, help="shingle size in tokens (CJK characters or words)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="MinHash permutation seed")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes computing signatures")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="records per worker task")
    parser.add_argument("--no_exact", action="store_true", help="skip exact-duplicate removal")
    parser.add_argument("--no_near", action="store_true", help="skip near-duplicate (MinHash) removal")
    parser.add_argument("--duplicates", default=None, help="write one line per removed record naming the kept original")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    config = DedupConfig(
        threshold=args.threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        exact=not args.no_exact,
        near=not args.no_near,
        seed=args.seed,
        num_proc=args.num_proc,
        batch_size=args.batch_size,
    )
    counts = dedup_jsonl(args.input, args.output, config, args.format, args.skip_bad, args.duplicates)
    print(
        f"kept {counts['kept']} of {counts['input']} records in {args.output}; removed {counts['exact']} exact "
        f"and {counts['near']} near duplicates"
    )
    print_rejected(counts["rejected"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
