"""Pretraining against upstream MiniMind's own trainer: the same model shape, tokenizer, documents, batch size,
sequence length and number of optimizer steps, both run here one after the other; prints the wall-time ratio, the
useful (non-pad) tokens each trained on per second, and both held-out losses with a paired interval.

Upstream's `trainer/train_pretrain.py` runs unchanged from a copy of ../shared/upstream-minimind (it writes beside
itself), in fp32 on the CPU. Each of its samples is one document cut or padded to --seq_len; the recipe packs documents
into blocks of --seq_len tokens (`--ours_flags "--packing best_fit"`: whole documents, every row starting at one, as
upstream's samples do). Upstream saves its weights in fp16; they are loaded back through the project's strict `.pth`
import.

Held-out loss: --heldout_docs documents neither side trained on, each cut to --seq_len and read by each model in the
framing it was trained on (upstream: bos + text + eos, as its dataset; MiniMinds: text + eos, as its packer), scored on
the same tokens (the text after its first token, then eos), so the two losses compare token for token.

    python benchmarks/pretrain_vs_upstream.py              # docstrings of Python's own library, 30M shape, 81 x 8 x 340
    python benchmarks/pretrain_vs_upstream.py --data texts.jsonl --steps 200
    python benchmarks/pretrain_vs_upstream.py --ours_flags "--weight_decay 0.01 --adam_beta2 0.999 --warmup_steps 0"
    python benchmarks/pretrain_vs_upstream.py --ours_flags "--packing best_fit"
"""

import argparse
import ast
import json
import random
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from data_process.loading import iter_texts
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.export.upstream import import_upstream
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.intervals import interval, paired_gain

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT.parent / "shared" / "upstream-minimind"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="JSONL of {'text'} documents (default: docstrings of Python's own library)")
    parser.add_argument(
        "--upstream", type=Path, default=UPSTREAM, help="upstream MiniMind's files (default: %(default)s)"
    )
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=81, help="optimizer steps of each side")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=340, help="upstream's max_seq_len and the recipe's block_size")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="peak learning rate of both (upstream's)")
    parser.add_argument("--heldout_docs", type=int, default=200)
    parser.add_argument("--ours_flags", default="", help="extra recipes/pretrain.py flags, e.g. optimizer settings")
    parser.add_argument("--seed", type=int, default=0, help="which documents are held out and trained on")
    parser.add_argument("--work_dir", type=Path, help="keep both runs here (default: a temporary folder)")
    return parser.parse_args(argv)


def library_docstrings(min_chars: int = 300) -> list[str]:
    """Module, class and function docstrings of the Python standard library, read from source (nothing imported):
    real prose and code no one here wrote, of every length from a paragraph to a page."""
    texts = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node)
                if text and len(text) >= min_chars:
                    texts.add(text)
    return sorted(texts)


def split_documents(texts: list[str], args) -> tuple[list[str], list[str]]:
    """Held-out documents and exactly steps x batch training documents (upstream reads each once in its epoch)."""
    needed = args.heldout_docs + args.steps * args.batch_size
    if len(texts) < needed:
        raise SystemExit(f"error: {len(texts)} documents, {needed} needed (held out + steps x batch)")
    texts = list(texts)
    random.Random(args.seed).shuffle(texts)
    return texts[: args.heldout_docs], texts[args.heldout_docs : needed]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def timed(command: list[str], cwd: Path, log: Path) -> float:
    """Run a whole command (imports, data loading and training count), its output to `log`; its wall seconds."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(command[:2])} failed ({done.returncode}); its output is in {log}")
    return time.perf_counter() - start


def run_upstream(args, work: Path, train_file: Path) -> tuple[float, Path]:
    copy = work / "upstream"
    shutil.copytree(args.upstream, copy)
    command = [sys.executable, "train_pretrain.py", "--device", "cpu", "--dtype", "float32", "--epochs", "1"]
    command += ["--batch_size", str(args.batch_size), "--accumulation_steps", "1"]
    command += ["--learning_rate", str(args.learning_rate), "--max_seq_len", str(args.seq_len)]
    command += ["--hidden_size", str(args.hidden_size), "--num_hidden_layers", str(args.num_hidden_layers)]
    command += ["--data_path", str(train_file), "--save_dir", str(work / "upstream_out"), "--num_workers", "0"]
    command += ["--log_interval", "10", "--save_interval", str(10**9)]
    seconds = timed(command, copy / "trainer", work / "upstream.log")
    return seconds, work / "upstream_out" / f"pretrain_{args.hidden_size}.pth"


def run_ours(args, work: Path, train_file: Path, config: Path, tokenizer_dir: Path) -> float:
    command = [sys.executable, str(ROOT / "recipes" / "pretrain.py"), "--model_config", str(config)]
    command += ["--tokenizer_name_or_path", str(tokenizer_dir), "--dataset_name", str(train_file)]
    command += ["--block_size", str(args.seq_len), "--per_device_train_batch_size", str(args.batch_size)]
    command += ["--max_steps", str(args.steps), "--learning_rate", str(args.learning_rate), "--seed", str(args.seed)]
    command += ["--eval_split_size", "0", "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none"]
    command += ["--output_dir", str(work / "ours"), "--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    return timed(command + shlex.split(args.ours_flags), ROOT, work / "ours.log")


@torch.no_grad()
def document_losses(model, ids: list[list[int]], offset: int) -> list[float]:
    """Mean cross-entropy of each document over its tokens from `offset + 1` on (what both framings predict)."""
    model.eval()
    losses = []
    for row in ids:
        logits = model(torch.tensor([row])).logits[0, offset:-1].float()
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(row[offset + 1 :])).item())
    return losses


def framed(tokenizer, texts: list[str], seq_len: int, bos: bool) -> list[list[int]]:
    """Each held-out document as the side read it in training, cut to `seq_len`; the scored tokens are the same."""
    rows = []
    for text in texts:
        body = tokenizer(text, add_special_tokens=False).input_ids[: seq_len - 2] + [tokenizer.eos_token_id]
        rows.append(([tokenizer.bos_token_id] if bos else []) + body)
    return rows


def useful_tokens(tokenizer, texts: list[str], seq_len: int) -> int:
    """Non-pad tokens upstream trains on: bos + text + eos of each document, cut to `seq_len`."""
    lengths = tokenizer(texts, add_special_tokens=False).input_ids
    return sum(min(len(ids) + 2, seq_len) for ids in lengths)


def trained_tokens(output_dir: Path) -> int:
    """Non-pad tokens the recipe trained on, as its trainer counted them (best-fit rows are padded in the batch)."""
    return json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))["num_input_tokens_seen"]


def main(argv=None):
    args = parse_args(argv)
    if not (args.upstream / "trainer" / "train_pretrain.py").is_file():
        raise SystemExit(f"error: --upstream {args.upstream}: no trainer/train_pretrain.py there")
    texts = list(iter_texts([args.data])) if args.data else library_docstrings()
    heldout, train = split_documents(texts, args)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vs-upstream-"))
    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.jsonl"
    write_jsonl(train_file, train)
    tokenizer_dir = args.upstream / "model"
    tokenizer = load_tokenizer(tokenizer_dir)
    # Upstream's MiniMindConfig for this width and depth: its defaults are the project's minimind-64m preset.
    config = get_config("minimind-64m", hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
    config_file = work / "config.json"
    config.to_json_file(config_file)
    print(
        f"{len(texts)} documents: {len(train)} trained on, {len(heldout)} held out; {args.steps} steps of "
        f"{args.batch_size} x {args.seq_len} tokens; {work}",
        flush=True,
    )

    upstream_seconds, weights = run_upstream(args, work, train_file)
    print(f"upstream: {upstream_seconds:.1f} s", flush=True)
    ours_seconds = run_ours(args, work, train_file, config_file, tokenizer_dir)
    print(f"MiniMinds: {ours_seconds:.1f} s", flush=True)

    import_upstream(weights, work / "upstream_model", str(config_file), None)
    models = {
        "upstream": MiniMindForCausalLM.from_pretrained(work / "upstream_model", dtype=torch.float32),
        "MiniMinds": MiniMindForCausalLM.from_pretrained(work / "ours", dtype=torch.float32),
    }
    losses = {
        "upstream": document_losses(models["upstream"], framed(tokenizer, heldout, args.seq_len, bos=True), 1),
        "MiniMinds": document_losses(models["MiniMinds"], framed(tokenizer, heldout, args.seq_len, bos=False), 0),
    }
    useful = {
        "upstream": useful_tokens(tokenizer, train, args.seq_len),
        "MiniMinds": trained_tokens(work / "ours"),
    }
    seconds = {"upstream": upstream_seconds, "MiniMinds": ours_seconds}

    print(f"\n| side | wall s | useful tokens | useful tokens/s | held-out loss [95%] (n={len(heldout)} documents) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for side in ("upstream", "MiniMinds"):
        loss = interval(losses[side])
        print(
            f"| {side} | {seconds[side]:.1f} | {useful[side]} | {useful[side] / seconds[side]:.0f} | "
            f"{loss['value']:.4f} [{loss['ci_low']:.4f}, {loss['ci_high']:.4f}] |"
        )
    gain = paired_gain(losses["upstream"], losses["MiniMinds"])
    print(
        f"\nwall time MiniMinds / upstream: {ours_seconds / upstream_seconds:.2f}x; useful tokens/s "
        f"{useful['MiniMinds'] / ours_seconds / (useful['upstream'] / upstream_seconds):.2f}x"
    )
    print(
        f"held-out loss MiniMinds - upstream, per document: {gain['diff']:+.4f} "
        f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}] (negative: MiniMinds lower)"
    )


if __name__ == "__main__":
    main()
