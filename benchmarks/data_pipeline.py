"""Throughput of tokenize+pack and dedup: the batched multi-process path against one line at a time.

    python benchmarks/data_pipeline.py --mb 200 --num_proc 2

Generates a JSONL corpus of --mb MB from data_process.synth (several synthetic documents per line), trains
a 6400-token tokenizer on its first 2 MB, then times each path in this process on the same file and
prints wall and CPU seconds, MB/s, peak memory (PSS of this process plus its workers) and the speed-up
over the baseline. Run it on an otherwise idle machine: the multi-process rows need free cores.

Baselines, written the way the upstream scripts do it:
- tokenize+pack: json.loads and tokenizer.encode per line, a Python token buffer cut into blocks,
  blocks appended to a .bin file;
- dedup: json.loads per line, a fresh datasketch MinHash (default SHA-1 per shingle) per document,
  then the same LSH query/insert.
"""

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from modeling_miniminds.cli import FlagParser

MB = 1_000_000
DOCS_PER_LINE = 4
TOKENIZER_SAMPLE_DOCS = 3000


class PeakMemory:
    """Samples the memory of this process and its workers in a background thread.

    Proportional set size (PSS) is summed, so pages a forked worker shares with its parent count once.
    Reading PSS walks /proc/<pid>/smaps, which costs CPU, hence the half-second interval.
    """

    def __init__(self, interval=0.5):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _pss(self):
        import psutil

        total = self.process.memory_full_info().pss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_full_info().pss
            except psutil.Error:
                continue  # the worker exited between listing and reading
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._pss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def generate_corpus(path, mb, seed):
    """Write about `mb` MB of pretraining JSONL; return the number of lines."""
    from tqdm import tqdm

    from data_process.synth import iter_records

    docs = iter_records("pretrain", seed=seed)
    written = lines = 0
    target = int(mb * MB)
    bar = tqdm(total=target, unit="B", unit_scale=True, desc="generate")
    with open(path, "w", encoding="utf-8") as handle, bar:
        while written < target:
            text = "\n".join(next(docs)["text"] for _ in range(DOCS_PER_LINE))
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            handle.write(line)
            size = len(line.encode("utf-8"))
            written += size
            lines += 1
            bar.update(min(size, target - bar.n))
    return lines


def baseline_pack(path, tokenizer, block_size, output):
    """One line at a time: parse, encode, buffer, cut blocks, append them to a flat uint16 file."""
    import numpy as np

    buffer, blocks = [], 0
    with open(path, encoding="utf-8") as lines, open(output, "wb") as out:
        for line in lines:
            buffer.extend(tokenizer.encode(json.loads(line)["text"], add_special_tokens=False))
            buffer.append(tokenizer.eos_token_id)
            while len(buffer) >= block_size:
                np.array(buffer[:block_size], dtype=np.uint16).tofile(out)
                del buffer[:block_size]
                blocks += 1
    return blocks


def fresh_link(path, tag):
    """A new name for the same file: the datasets cache keys on the path, so each timed run starts cold."""
    link = path.with_name(f"{path.stem}-{tag}{path.suffix}")
    link.unlink(missing_ok=True)
    os.link(path, link)
    return link


def batched_pack(path, tokenizer, block_size, num_proc):
    from data_process.loading import load_text_dataset
    from data_process.pack import pack_dataset

    dataset = load_text_dataset(fresh_link(path, f"pack{num_proc}"))
    return len(pack_dataset(dataset, tokenizer, block_size, num_proc=num_proc))


def baseline_dedup(path, output, config):
    """One line at a time with a fresh MinHash per document and datasketch's default hash per shingle."""
    from datasketch import MinHash, MinHashLSH

    from data_process.dedup import TOKEN, normalize

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    kept = 0
    with open(path, encoding="utf-8") as lines, open(output, "w", encoding="utf-8") as out:
        for number, line in enumerate(lines):
            tokens = TOKEN.findall(normalize(json.loads(line)["text"]))
            starts = range(max(len(tokens) - config.ngram + 1, 1))
            shingles = {" ".join(tokens[i : i + config.ngram]) for i in starts}
            minhash = MinHash(num_perm=config.num_perm, seed=config.seed)
            for shingle in shingles:
                minhash.update(shingle.encode("utf-8"))
            if lsh.query(minhash):
                continue
            lsh.insert(number, minhash)
            out.write(line)
            kept += 1
    return kept


def batched_dedup(path, output, config):
    from data_process.dedup import dedup_jsonl

    return dedup_jsonl([path], output, config, fmt="pretrain")["kept"]


def cpu_seconds():
    """CPU time of this process and of its finished (joined) worker processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(name, fn, size_mb):
    with PeakMemory() as memory:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        result = fn()
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {
        "name": name,
        "seconds": seconds,
        "cpu": cpu,
        "mb_s": size_mb / seconds,
        "peak_mb": memory.peak / MB,
        "result": result,
    }


def print_table(stage, rows):
    baseline = rows[0]["mb_s"]
    print(f"\n{stage}")
    print(f"  {'path':<26}{'wall s':>8}{'CPU s':>8}{'MB/s':>8}{'peak PSS MB':>13}{'vs baseline':>13}  result")
    for row in rows:
        ratio = row["mb_s"] / baseline
        numbers = f"{row['seconds']:>8.1f}{row['cpu']:>8.1f}{row['mb_s']:>8.2f}{row['peak_mb']:>13.0f}{ratio:>12.2f}x"
        print(f"  {row['name']:<26}{numbers}  {row['result']}")


def make_parser():
    parser = FlagParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=200, help="size of the generated JSONL corpus in MB")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes for the batched path")
    parser.add_argument("--block_size", type=int, default=512, help="tokens per packed block")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--workdir", default=None, help="folder for the corpus and outputs; None makes a temp dir")
    parser.add_argument(
        "--stages", nargs="+", default=["pack", "dedup"], choices=["pack", "dedup"], help="which stages to time"
    )
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="miniminds-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh datasets cache: a cache hit from an earlier run would time nothing.
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-cache")
    # One process uses one core: the Rust tokenizer's own threads would blur the process comparison.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from data_process.dedup import DedupConfig
    from data_process.loading import iter_texts
    from modeling_miniminds.tokenizer import train_tokenizer

    corpus = workdir / "corpus.jsonl"
    lines = generate_corpus(corpus, args.mb, args.seed)
    size_mb = corpus.stat().st_size / MB
    tokenizer = train_tokenizer(iter_texts([corpus], TOKENIZER_SAMPLE_DOCS), workdir / "tokenizer", vocab_size=6400)
    print(f"corpus: {size_mb:.1f} MB, {lines} lines; {os.cpu_count()} CPUs; num_proc={args.num_proc}")
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine skews wall times)"
    )

    if "pack" in args.stages:
        block = args.block_size
        rows = [
            measure("one line at a time", lambda: baseline_pack(corpus, tokenizer, block, workdir / "b.bin"), size_mb),
            measure("batched, 1 process", lambda: batched_pack(corpus, tokenizer, block, 1), size_mb),
            measure(
                f"batched, {args.num_proc} processes",
                lambda: batched_pack(corpus, tokenizer, block, args.num_proc),
                size_mb,
            ),
        ]
        print_table(f"tokenize+pack (block_size={args.block_size}; result = blocks)", rows)
    if "dedup" in args.stages:
        config = DedupConfig()
        rows = [
            measure("one line at a time", lambda: baseline_dedup(corpus, workdir / "d0.jsonl", config), size_mb),
            measure("batched, 1 process", lambda: batched_dedup(corpus, workdir / "d1.jsonl", config), size_mb),
            measure(
                f"batched, {args.num_proc} processes",
                lambda: batched_dedup(corpus, workdir / "d2.jsonl", DedupConfig(num_proc=args.num_proc)),
                size_mb,
            ),
        ]
        print_table(f"dedup (threshold={config.threshold}, num_perm={config.num_perm}; result = kept lines)", rows)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"outputs in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
