"""make_pairs: preference pairs sampled from an SFT model are valid dpo records whose rejected answers are checkably
wrong, every dropped record is counted by reason, and the same seed writes the same file."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from data_process.jsonl import read_jsonl
from data_process.make_pairs import answer_line, choose_pair, load_model, main, make_pairs
from data_process.records import validate_dpo
from data_process.rewards import accuracy_reward, extract_answer
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.args import SFTStageConfig
from recipes.training.models import save_final_model
from recipes.training.preference import canonical_pair
from recipes.training.trainer import SFTStageTrainer

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]
ZH_PROMPT = [{"role": "user", "content": "2 加 3 等于多少？"}]


@pytest.fixture(scope="module")
def sft_folder(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """A tiny MiniMind trained 20 steps to reply with an answer line and end its turn: it learns the format, not the
    answers, so its samples finish in time and are mostly wrong, which is what make_pairs needs to keep pairs."""
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer)))
    rows = [
        {"messages": r["prompt"] + [{"role": "assistant", "content": answer_line(r["prompt"], r["answer"])}]}
        for r in read_jsonl(tiny_corpus["rl"])
    ]
    out = tmp_path_factory.mktemp("sft")
    args = SFTStageConfig(
        output_dir=str(out),
        max_steps=20,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        max_length=128,
        assistant_only_loss=True,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = SFTStageTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    save_final_model(trainer, tokenizer)
    return out


def test_pairs_are_dpo_records_with_checkably_wrong_rejected_answers(sft_folder, tiny_corpus, tmp_path):
    inputs = [Path(tiny_corpus["eval"]) / "rl.jsonl", Path(tiny_corpus["eval"]) / "sft.jsonl"]
    output = tmp_path / "pairs.jsonl"
    command = [
        sys.executable,
        "-m",
        "data_process.make_pairs",
        "--model",
        str(sft_folder),
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        "--num_samples",
        "3",
        "--max_new_tokens",
        "24",
        "--seed",
        "0",
    ]
    done = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = done.stdout.strip().splitlines()[-1]
    kept = int(re.match(rf"wrote (\d+) pairs to {re.escape(str(output))}; dropped ", summary).group(1))
    dropped = {reason: int(n) for n, reason in re.findall(r"(\d+) (\w+) \(", summary)}
    assert kept + sum(dropped.values()) == 80  # 40 held-out rl records + 40 held-out sft records
    pairs = list(read_jsonl(output))
    assert len(pairs) == kept >= 20
    for pair in pairs:
        validate_dpo(pair)
        split = canonical_pair(pair)  # the form the reward and DPO stages read: a shared prompt, two replies
        answer = extract_answer(split["chosen"][0]["content"])
        assert accuracy_reward(completions=[split["chosen"][0]["content"]], answer=[answer]) == [1.0]
        assert accuracy_reward(completions=[split["rejected"][0]["content"]], answer=[answer]) == [0.0]


def test_same_seed_writes_the_same_pairs(sft_folder, tiny_corpus, tmp_path):
    model, tokenizer = load_model(str(sft_folder))
    sample = tmp_path / "rl.jsonl"
    sample.write_text("".join(Path(tiny_corpus["rl"]).read_text(encoding="utf-8").splitlines(True)[:8]))
    runs = [
        make_pairs(model, tokenizer, [sample], tmp_path / f"{n}.jsonl", num_samples=2, max_new_tokens=16, seed=3)
        for n in range(2)
    ]
    assert runs[0] == runs[1] and sum(runs[0].values()) == 8
    assert (tmp_path / "0.jsonl").read_bytes() == (tmp_path / "1.jsonl").read_bytes()


@pytest.mark.parametrize(
    "reply, answer, samples, chosen, rejected, reason",
    [
        (
            None,
            "5",
            [("Answer: 7", True), ("2 plus 3 is 5.\nAnswer: 5", True)],
            "2 plus 3 is 5.\nAnswer: 5",
            "Answer: 7",
            None,
        ),
        (None, "5", [("Answer: 7", True)], "Answer: 5", "Answer: 7", None),
        ("It is 5.\nAnswer: 5", "5", [("Answer: 6", True)], "It is 5.\nAnswer: 5", "Answer: 6", None),
        (None, "5", [("Answer: 5", True), ("5", True)], None, None, "all_correct"),
        (None, "5", [("Answer: 7 and then", False), ("Answer: 5", True)], None, None, "only_unfinished"),
        ("Hello!", None, [("Answer: 7", True)], None, None, "no_answer"),
    ],
    ids=["rl-sampled-chosen", "rl-answer-line", "sft-reference", "all-correct", "unfinished", "no-answer"],
)
def test_each_record_is_kept_or_dropped_with_its_reason(reply, answer, samples, chosen, rejected, reason):
    record, why = choose_pair(PROMPT, reply, answer, samples)
    assert why == reason
    if reason is None:
        assert record["chosen"] == PROMPT + [{"role": "assistant", "content": chosen}]
        assert record["rejected"] == PROMPT + [{"role": "assistant", "content": rejected}]
    assert answer_line(ZH_PROMPT, "5") == "答案：5"


def test_bad_line_names_file_and_line_or_is_set_aside(sft_folder, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps({"prompt": PROMPT, "answer": "5"}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    argv = [
        "--model",
        str(sft_folder),
        "--input",
        str(data),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--num_samples",
        "2",
        "--max_new_tokens",
        "8",
    ]
    assert main(argv) == 1
    expected = "expected an sft record (messages or conversations) or an rl record (prompt, answer); keys: text"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {data}:2: {expected}"
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written

    assert main([*argv, "--skip_bad"]) == 0
    assert "rejected 1 bad line -> " in capsys.readouterr().out
    assert [r["line"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")] == [2]
