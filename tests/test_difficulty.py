"""Prompts of middling difficulty: pass rates come from sampled replies scored against each prompt's answer, only
prompts answered sometimes right and sometimes wrong are kept, and GRPO and PPO train on those and say so."""

import json
from pathlib import Path

import pytest
import torch
from helpers import stage_args
from transformers import AutoModelForCausalLM

from data_process.jsonl import read_jsonl
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training import difficulty, grpo, ppo
from recipes.training.difficulty import middling, middling_prompts, pass_rates, prompts_to_train

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = {"always": "What is 2 + 2?", "never": "What is 3 + 3?", "sometimes": "What is 4 + 4?"}


def record(question: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": question}], "answer": answer}


class Scripted:
    """The policy's `generate`, scripted per question: "always" gets the right answer, "never" a wrong one, and
    "sometimes" alternates between the two from one sampled reply to the next."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def reply(self, prompt: str) -> str:
        if QUESTIONS["always"] in prompt:
            return "Answer: 4"
        if QUESTIONS["sometimes"] in prompt:
            self.calls += 1
            return "Answer: 8" if self.calls % 2 else "Answer: 9"
        return "Answer: 7"

    def __call__(self, input_ids, attention_mask, **kwargs):
        assert kwargs["do_sample"], "difficulty is scored on sampled replies, as training samples them"
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.reply(self.tokenizer.decode(ids[mask.bool()])) + self.tokenizer.eos_token
            rows.append(torch.tensor(self.tokenizer(text, add_special_tokens=False).input_ids))
        width = max(len(r) for r in rows)
        padded = [torch.cat([r, r.new_full((width - len(r),), self.tokenizer.pad_token_id)]) for r in rows]
        return torch.cat([input_ids, torch.stack(padded)], dim=1)


@pytest.fixture
def scripted_model(quick_sft_folder):
    tokenizer = load_tokenizer(quick_sft_folder)
    model = AutoModelForCausalLM.from_pretrained(quick_sft_folder)
    model.generate = Scripted(tokenizer)
    return model, tokenizer


RECORDS = [
    record(QUESTIONS["always"], "4"),
    record(QUESTIONS["never"], "6"),
    record(QUESTIONS["sometimes"], "8"),
]


def test_middling_splits_pass_rates():
    split = middling([0.0, 0.25, 1.0, 0.5, 0.0], samples=4)
    assert split.kept == [1, 3]
    assert split.summary() == {"samples": 4, "scored": 5, "all_right": 1, "all_wrong": 2, "kept": 2}


def test_pass_rates_score_sampled_replies_against_each_answer(scripted_model):
    model, tokenizer = scripted_model
    assert pass_rates(model, tokenizer, RECORDS, samples=4, max_new_tokens=8) == [1.0, 0.0, 0.5]
    kept = middling_prompts(model, tokenizer, RECORDS, samples=4, max_new_tokens=8)
    assert kept.kept == [2] and (kept.all_right, kept.all_wrong) == (1, 1)


def test_prompts_to_train_keeps_everything_without_the_filter_and_scores_only_the_limit(scripted_model):
    model, tokenizer = scripted_model
    assert prompts_to_train(model, tokenizer, RECORDS, 0, None, 8) == ([0, 1, 2], None)
    with pytest.raises(ValueError, match="no prompt of middling difficulty among 2"):
        prompts_to_train(model, tokenizer, RECORDS, 2, 2, 8)
    kept, summary = prompts_to_train(model, tokenizer, RECORDS, 2, 3, 8)
    assert kept == [2] and summary["scored"] == 3


def test_a_prompt_without_an_answer_is_named(scripted_model):
    model, tokenizer = scripted_model
    with pytest.raises(ValueError, match="prompt 2: scoring difficulty needs an `answer`"):
        pass_rates(model, tokenizer, [RECORDS[0], {"prompt": RECORDS[1]["prompt"]}], samples=2, max_new_tokens=8)


def every_third_prompt_is_middling(monkeypatch, samples: int) -> None:
    """The tiny test model answers nothing right, so the scores of its sampled replies are scripted: of every three
    prompts, one is answered right every time, one never and one every other time. Sampling, the split and the
    trainer's prompts stay real."""

    def scored(completions, answer, **kwargs):
        assert len(completions) == len(answer) and len(answer) % samples == 0
        kinds = [(index // samples % 3, index % samples) for index in range(len(answer))]
        return [float(kind == 0 or (kind == 2 and sample % 2 == 0)) for kind, sample in kinds]

    monkeypatch.setattr(difficulty, "accuracy_reward", scored)


def one_step_args(stage, quick_sft_folder, tiny_corpus, out, *flags):
    """One training step of `stage` from its tiny recipe on the tiny corpus's prompts, four held-out questions."""
    recipe = f"{stage.__name__.rsplit('.', 1)[-1]}_tiny"
    steps = ["--max_steps", 1, "--chat_eval_samples", 4]
    return stage_args(stage.make_parser(), recipe, quick_sft_folder, tiny_corpus["rl"], out, *steps, *flags)


def test_grpo_trains_on_the_middling_prompts_and_reports_the_split(
    quick_sft_folder, tiny_corpus, tmp_path, monkeypatch
):
    every_third_prompt_is_middling(monkeypatch, samples=4)
    flags = ("--difficulty_samples", "4", "--difficulty_prompts", "30")
    result = grpo.grpo(*one_step_args(grpo, quick_sft_folder, tiny_corpus, tmp_path, *flags))
    assert result["difficulty"] == {"samples": 4, "scored": 30, "all_right": 10, "all_wrong": 10, "kept": 10}
    assert result["train_prompts"] == 10
    assert json.loads((tmp_path / "all_results.json").read_text())["train_runtime"] > 0


def test_ppo_trains_on_the_middling_prompts_and_reports_the_split(quick_sft_folder, tiny_corpus, tmp_path, monkeypatch):
    every_third_prompt_is_middling(monkeypatch, samples=2)
    result = ppo.ppo(*one_step_args(ppo, quick_sft_folder, tiny_corpus, tmp_path, "--difficulty_samples", "2"))
    scored = result["difficulty"]["scored"]
    assert 0 < scored <= len(list(read_jsonl(tiny_corpus["rl"])))  # the prompts that fit --max_prompt_length
    assert result["prompts"] == result["difficulty"]["kept"] == len(range(2, scored, 3))
