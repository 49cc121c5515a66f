"""Reward-model recipe: it learns to rank held-out pairs, its scores do not depend on the padding side, and the saved
folder scores the same through `trust_remote_code` alone (how the PPO and GRPO stages will load it). Also the pair
layouts every preference stage reads, and their errors."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_run_card, stage_args
from transformers import AutoModelForSequenceClassification

from data_process.jsonl import read_jsonl
from data_process.synth.builders import REJECTED_KINDS
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.reward import make_parser
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint
from recipes.training.preference import canonical_pair
from recipes.training.reward import reward
from recipes.training.reward_model import score_conversations, score_ids

REPO = Path(__file__).resolve().parents[1]
STEPS = 30
# Measured: 30 steps of 16 pairs (4 epochs of the 120 tiny training pairs) from a random tiny model take the 40
# held-out pairs from 0.475 to 0.90 pairwise accuracy (deterministic on CPU). About a third of the rejected replies
# differ from the chosen one only in a wrong number, which a model this small can hardly check: 0.7 leaves room.
MIN_ACCURACY = 0.7


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def base_folder(tokenizer, tmp_path_factory):
    """A tiny random causal LM saved as a complete folder: ranking formats needs no pretraining."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_args(model, corpus, out, *overrides):
    held_out = ["--eval_dataset_name", Path(corpus["eval"]) / "dpo.jsonl"]
    return stage_args(make_parser(), "reward_tiny", model, corpus["dpo"], out, *held_out, *overrides)


@pytest.fixture(scope="module")
def trained(base_folder, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    result = reward(*recipe_args(base_folder, tiny_corpus, out, "--max_steps", STEPS, "--save_steps", STEPS))
    return result, out


def conversations(corpus, count=6):
    """Whole chosen and rejected conversations of held-out pairs, of different lengths."""
    pairs = list(read_jsonl(Path(corpus["eval"]) / "dpo.jsonl"))[:count]
    return [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]


def test_reward_model_ranks_held_out_pairs(trained):
    result, out = trained
    assert result["steps"] == STEPS and result["eval_pairs"] == 40
    assert (
        set(result["before"])
        == set(result["after"])
        == {"pairwise_accuracy", "mean_chosen_score", "mean_rejected_score", "per_kind", "per_kind_n", "items"}
    )
    # one value per held-out pair on both sides, so the gain is paired over the same 40 pairs
    assert result["gains"]["pairwise_accuracy"]["n"] == len(result["after"]["items"]["pairwise_accuracy"]) == 40
    assert result["gains"]["pairwise_accuracy"]["diff"] == pytest.approx(
        result["after"]["pairwise_accuracy"] - result["before"]["pairwise_accuracy"], abs=1e-3
    )
    after = result["after"]
    assert after["pairwise_accuracy"] >= MIN_ACCURACY > result["before"]["pairwise_accuracy"]
    # per kind of rejected reply, the 40 pairs split three ways and the shares average back to the whole
    assert set(after["per_kind"]) == set(REJECTED_KINDS) and sum(after["per_kind_n"].values()) == 40
    weighted = sum(after["per_kind"][k] * after["per_kind_n"][k] for k in REJECTED_KINDS) / 40
    assert weighted == pytest.approx(after["pairwise_accuracy"], abs=1e-3)
    assert after["mean_chosen_score"] > after["mean_rejected_score"]

    for name in ("eval_results.json", "all_results.json"):
        saved = json.loads((out / name).read_text())
        assert saved["eval_pairwise_accuracy"] == after["pairwise_accuracy"]
        assert saved["eval_mean_chosen_score"] == after["mean_chosen_score"]
    assert [r["step"] for r in read_metrics(out / METRICS_FILE) if "loss" in r][-1] == STEPS
    assert is_complete_checkpoint(out / f"checkpoint-{STEPS}")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MiniMindForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("MiniMindForSequenceClassification")
    assert config["pad_token_id"] == 0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0
    assert (out / "tokenizer.json").exists() and (out / "modeling_minimind.py").exists()


def test_scores_do_not_depend_on_padding_side(trained, tiny_corpus):
    _, out = trained
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = load_tokenizer(out)
    sequences = [
        tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
        for c in conversations(tiny_corpus)
    ]
    assert len({len(s) for s in sequences}) > 3
    right = score_ids(model, sequences, tokenizer.pad_token_id, padding_side="right")
    left = score_ids(model, sequences, tokenizer.pad_token_id, padding_side="left")
    alone = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=1)
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(right, alone, rtol=1e-4, atol=1e-4)
    assert score_conversations(model, tokenizer, conversations(tiny_corpus)) == pytest.approx(right.tolist(), abs=1e-4)


RELOAD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_miniminds"] = None  # any import of MiniMinds fails: the folder must carry its code
    import torch
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast
    model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in json.loads(open(sys.argv[2]).read())]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        scores = model(**batch).logits[:, 0]
    print(json.dumps({"class": type(model).__module__, "scores": scores.tolist()}))
    """
)


def test_remote_code_reload_scores_the_same(trained, tiny_corpus, tmp_path):
    """The PPO/GRPO side loads only the folder: its own modeling code, tokenizer and config, left-padded batches."""
    _, out = trained
    chats = conversations(tiny_corpus)
    (tmp_path / "chats.json").write_text(json.dumps(chats, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(out), str(tmp_path / "chats.json")],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert reloaded["class"].startswith("transformers_modules.")
    local = AutoModelForSequenceClassification.from_pretrained(out).eval()
    expected = score_conversations(local, load_tokenizer(out), chats)
    assert reloaded["scores"] == pytest.approx(expected, abs=1e-4)

    # The folder's card (issue 17: TRL's draft loaded no model) scores its example conversation as PPO would.
    card = assert_run_card(out, "reward")
    quick_start = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    example = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]
    assert repr(example).replace("'", '"') in quick_start
    done = subprocess.run(
        [sys.executable, "-c", quick_start],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    score = float(done.stdout.strip().splitlines()[-1])
    assert score == pytest.approx(score_conversations(local, load_tokenizer(out), [example])[0], abs=1e-4)


SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 plus 3?"}
GOOD = {"role": "assistant", "content": "2 plus 3 equals 5.\nAnswer: 5"}
BAD = {"role": "assistant", "content": "Answer: 6"}


@pytest.mark.parametrize(
    "record",
    [
        {"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},  # project dpo / upstream MiniMind
        {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]},  # explicit messages
        {"prompt": USER["content"], "chosen": GOOD["content"], "rejected": BAD["content"]},  # plain text
    ],
    ids=["implicit", "explicit", "text"],
)
def test_every_pair_layout_reads_as_prompt_and_replies(record):
    pair = canonical_pair(record)
    assert pair["chosen"] == [GOOD] and pair["rejected"] == [BAD]
    assert pair["prompt"][-1] == USER
    assert "rejected_kind" not in pair
    assert canonical_pair({**record, "rejected_kind": "wrong_answer"})["rejected_kind"] == "wrong_answer"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"chosen": [USER, GOOD]}, "field 'rejected': missing (keys: chosen)"),
        (
            {"chosen": [USER, GOOD], "rejected": [USER, {**GOOD, "content": GOOD["content"] + "  "}]},
            "chosen and rejected are identical",
        ),
        ({"chosen": [USER, GOOD], "rejected": [USER]}, "field 'rejected': last message must be from the assistant"),
        ({"chosen": [USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "share no prompt"),
        (
            {"chosen": [USER, GOOD, USER, GOOD], "rejected": [USER, GOOD, {**USER, "content": "Hi"}, BAD]},
            "field 'chosen[2]': the sides differ at a 'user' message",
        ),
        (
            {"prompt": [USER], "chosen": [GOOD], "rejected": [{"role": "assistant", "content": " "}]},
            "field 'rejected[0].content': empty text",
        ),
    ],
    ids=["missing-side", "identical", "no-reply", "no-shared-prompt", "differ-before-reply", "empty-reply"],
)
def test_bad_pairs_name_the_field(record, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        canonical_pair(record)


def test_identical_pair_fails_through_the_cli_at_its_line(tmp_path, tiny_tokenizer_dir):
    data = tmp_path / "pairs.jsonl"
    good = {"chosen": [USER, GOOD], "rejected": [USER, BAD]}
    data.write_text(f"{json.dumps(good)}\n{json.dumps({'chosen': [USER, GOOD], 'rejected': [USER, GOOD]})}\n")
    command = [
        sys.executable,
        str(REPO / "recipes" / "reward.py"),
        "--model_name_or_path",
        str(tiny_tokenizer_dir),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1] == f"error: {data}:2: chosen and rejected are identical: the pair prefers nothing"
