"""Built-in corpus: deterministic, valid in every project format, held-out eval split, checkable RL answers."""

import json
import random

import pytest

from data_process.io import read_jsonl
from data_process.rewards import accuracy_reward, extract_answer, format_reward
from data_process.synth import build_corpus, main, sample_item


def user_questions(records, field):
    questions = set()
    for record in records:
        questions |= {m["content"] for m in record[field] if m["role"] == "user"}
    return questions


def test_every_file_is_valid_in_its_format(tiny_corpus):
    for kind in ("pretrain", "sft", "dpo", "rl"):
        assert len(list(read_jsonl(tiny_corpus[kind], validate=kind))) > 50
        assert len(list(read_jsonl(tiny_corpus["eval"] / f"{kind}.jsonl", validate=kind))) > 10


def test_same_seed_same_bytes_other_seed_differs(tiny_corpus, tmp_path):
    again = build_corpus(tmp_path / "again", size="tiny", seed=0)
    other = build_corpus(tmp_path / "other", size="tiny", seed=1)
    for kind in ("pretrain", "sft", "dpo", "rl"):
        assert again[kind].read_bytes() == tiny_corpus[kind].read_bytes()
        assert other[kind].read_bytes() != tiny_corpus[kind].read_bytes()


def test_corpus_is_bilingual_and_multi_turn(tiny_corpus):
    texts = [r["text"] for r in read_jsonl(tiny_corpus["pretrain"])]
    assert any("等于" in t for t in texts) and any("equals" in t for t in texts)
    conversations = [r["conversations"] for r in read_jsonl(tiny_corpus["sft"])]
    assert any(c[0]["role"] == "system" for c in conversations)
    assert any(sum(m["role"] == "assistant" for m in c) >= 2 for c in conversations)


def test_eval_questions_never_appear_in_training(tiny_corpus):
    train = user_questions(read_jsonl(tiny_corpus["sft"]), "conversations")
    train |= user_questions(read_jsonl(tiny_corpus["rl"]), "prompt")
    held_out = user_questions(read_jsonl(tiny_corpus["eval"] / "rl.jsonl"), "prompt")
    assert held_out and not held_out & train


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_item_answer_is_checked_by_the_shipped_rewards(lang):
    rng = random.Random(0)
    items = [sample_item(rng, lang, eval_split=i % 2 == 0) for i in range(400)]
    assert accuracy_reward(completions=[i.reply for i in items], answer=[i.answer for i in items]) == [1.0] * 400
    wrong = [i.reply.replace(i.answer, i.wrong) for i in items]
    assert accuracy_reward(completions=wrong, answer=[i.answer for i in items]) == [0.0] * 400
    assert format_reward(completions=[i.reply for i in items]) == [1.0] * 400


def test_dpo_rejected_is_wrong_or_badly_formatted(tiny_corpus):
    for record in read_jsonl(tiny_corpus["dpo"]):
        chosen, rejected = record["chosen"][-1]["content"], record["rejected"][-1]["content"]
        assert record["chosen"][:-1] == record["rejected"][:-1]
        assert format_reward(completions=[chosen]) == [1.0]
        assert format_reward(completions=[rejected]) == [0.0] or extract_answer(rejected) != extract_answer(chosen)


def test_rl_answers_are_non_empty_and_prompts_end_with_user(tiny_corpus):
    for record in read_jsonl(tiny_corpus["rl"], validate="rl"):
        assert record["answer"].strip() and record["prompt"][-1]["role"] == "user"


def test_cli_writes_manifest(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "tiny", "--seed", "3"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and manifest["records"]["sft"] == 300
    assert "eval:" in capsys.readouterr().out


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="size: expected one of tiny, small, medium, got 'huge'"):
        build_corpus(tmp_path, size="huge")
