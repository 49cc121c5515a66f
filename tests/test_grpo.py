"""GRPO recipe on an SFT folder: the held-out reward rises while the KL to the reference stays small, failing reward
functions are reported by name without ending the run, a reward model drives a run, the calculator goes through
TRL's tool loop and the evaluation's, resume continues, and the CLI answers mistakes with one `error:` line."""

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import ScriptedPolicy, assert_run_card, stage_args
from matplotlib.image import imread
from transformers import AutoModelForCausalLM
from transformers.utils import get_json_schema

from data_process.jsonl import read_jsonl
from data_process.rewards import REWARD_FUNCTIONS
from data_process.tools import CALCULATOR_TOOL
from modeling_miniminds.tokenizer import RESPONSE_TEMPLATE, load_tokenizer
from recipes.grpo import main, make_parser
from recipes.training.args import RewardStageConfig
from recipes.training.callbacks import METRICS_FILE, PLOT_FILE, read_metrics, reward_curves
from recipes.training.checkpoints import is_complete_checkpoint
from recipes.training.grpo import grpo
from recipes.training.lifecycle import BEFORE_FILE
from recipes.training.models import save_final_model
from recipes.training.reward_model import load_reward_model
from recipes.training.rl import RLModelArguments
from recipes.training.tool_use import calculator, run_tool_call, tool_loop_transcripts, tool_metrics
from recipes.training.trainer import RewardStageTrainer

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
KL_LIMIT = 0.5
CALL = '<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{}"}}}}\n</tool_call><|im_end|>'
EXPRESSION = re.compile(r"\(?\d[\d +\-*/()]*\d\)?")


@pytest.fixture(scope="module")
def sft_folder(format_sft_folder):
    return format_sft_folder


def recipe_args(model, dataset, out, *overrides):
    return stage_args(make_parser(), "grpo_tiny", model, dataset, out, *overrides)


def logged(out, key):
    return [r[key] for r in read_metrics(Path(out) / METRICS_FILE) if r.get(key) is not None]


def up_proj(folder):
    return AutoModelForCausalLM.from_pretrained(folder).model.layers[0].mlp.up_proj.weight


@pytest.fixture(scope="module")
def trained(sft_folder, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    flags = [
        "--reward_funcs",
        "format",
        "--learning_rate",
        5e-4,
        "--max_steps",
        STEPS,
        "--save_steps",
        STEPS,
        "--chat_eval_dataset",
        Path(tiny_corpus["eval"]) / "rl.jsonl",
    ]
    return grpo(*recipe_args(sft_folder, tiny_corpus["rl"], out, *flags)), out


def test_grpo_raises_held_out_reward_while_kl_stays_small(trained, sft_folder):
    """SFT -> GRPO on saved folders, format reward, 40 steps of 4 prompts x 4 replies, lr 5e-4, beta 0.04: from the
    80-step SFT model, 0.025 -> 0.5 at KL 0.22 (from the 60-step one 0 -> 0, from the 100-step one 0.45 -> 0.5). The
    tiny model wins the format reward with one `Answer:` line; its task accuracy stays 0."""
    result, out = trained
    before, after = result["before"], result["after"]
    assert {"reward", "reward/format", "accuracy", "task_accuracy", "eot_rate", "reply_tokens"} <= set(before)
    assert after["reward"] > before["reward"] + 0.1
    # reply length is watched on the same questions: one token count per reply, each within the reply budget
    lengths = after["items"]["reply_tokens"]
    assert len(lengths) == len(after["items"]["reward"]) == result["gains"]["reply_tokens"]["n"]
    assert 0 < max(lengths) <= 48 and after["reply_tokens"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-3)
    assert_run_card(out, "grpo")
    assert 0 < after["kl"] < KL_LIMIT and result["kl_max"] < KL_LIMIT
    assert result["steps"] == STEPS and result["tokens"] > 0 and result["tokens_per_second"] > 0
    assert result["reward_failures"] == {"format": 0} and result["output_dir"] == str(out)

    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_reward"] == after["reward"] and saved["eval_kl"] == after["kl"]
    assert json.loads((out / BEFORE_FILE).read_text())["reward"] == before["reward"]
    assert logged(out, "kl") and logged(out, "rewards/format/mean")
    # the plot adds the training reward (summed and per source) and the KL below loss and learning rate
    curves = reward_curves(read_metrics(out / METRICS_FILE))
    assert list(curves) == ["reward", "format"] and len(curves["reward"]) == STEPS // 5
    assert curves["format"] == curves["reward"]  # one source of weight 1: the sum is that source
    assert imread(out / PLOT_FILE).shape[0] == 800
    assert is_complete_checkpoint(out / f"checkpoint-{STEPS}")
    assert not torch.equal(up_proj(out), up_proj(sft_folder))
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and json.loads((out / "config.json").read_text())["auto_map"]


def test_resume_continues_from_the_checkpoint(trained, sft_folder, tiny_corpus, tmp_path):
    """A run resumed with `auto` starts at the checkpoint's step (its logging interval, 5, comes with the trainer
    state) and reports the starting model's `before`."""
    result, out = trained
    shutil.copytree(out / f"checkpoint-{STEPS}", tmp_path / f"checkpoint-{STEPS}")
    shutil.copy(out / BEFORE_FILE, tmp_path / BEFORE_FILE)
    flags = [
        "--reward_funcs",
        "format",
        "--max_steps",
        STEPS + 5,
        "--save_steps",
        100,
        "--chat_eval_dataset",
        Path(tiny_corpus["eval"]) / "rl.jsonl",
        "--resume_from_checkpoint",
        "auto",
    ]
    resumed = grpo(*recipe_args(sft_folder, tiny_corpus["rl"], tmp_path, *flags))
    assert resumed["steps"] == STEPS + 5
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE) if "loss" in r] == [STEPS + 5]
    assert resumed["before"]["reward"] == result["before"]["reward"]


def test_failing_reward_functions_are_reported_by_name_and_the_run_completes(
    sft_folder, tiny_corpus, tmp_path, monkeypatch, caplog
):
    def broken(completions, **kwargs):
        raise RuntimeError("no scorer")

    def half_none(completions, **kwargs):
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    monkeypatch.setitem(REWARD_FUNCTIONS, "broken", broken)
    monkeypatch.setitem(REWARD_FUNCTIONS, "half_none", half_none)
    flags = ["--reward_funcs", "format", "broken", "half_none", "--max_steps", 2, "--logging_steps", 1]
    with caplog.at_level(logging.WARNING):
        result = grpo(*recipe_args(sft_folder, tiny_corpus["rl"], tmp_path, *flags))
    assert result["steps"] == 2
    assert "reward function 'broken' raised RuntimeError: no scorer" in caplog.text
    assert "reward function 'half_none' gave no score for" in caplog.text
    assert result["reward_failures"]["broken"] == 2 * 16 and 0 < result["reward_failures"]["half_none"] < 2 * 16
    assert result["reward_failures"]["format"] == 0
    assert logged(tmp_path, "rewards/broken/failures") == [16, 16]


@pytest.fixture(scope="module")
def reward_model_folder(sft_folder, tiny_corpus, tmp_path_factory):
    """A reward model trained 10 steps on the tiny preference pairs, saved with its tokenizer."""
    tokenizer = load_tokenizer(sft_folder)
    pairs = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in read_jsonl(tiny_corpus["dpo"])]
    out = tmp_path_factory.mktemp("reward")
    args = RewardStageConfig(
        output_dir=str(out),
        max_steps=10,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_length=128,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    model = load_reward_model(RLModelArguments(model_name_or_path=str(sft_folder)), tokenizer)
    trainer = RewardStageTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer
    )
    trainer.train()
    save_final_model(trainer, tokenizer)
    return out


def test_reward_model_drives_a_lora_run(sft_folder, reward_model_folder, tiny_corpus, tmp_path):
    """The reward model alone (no reward functions) scores the replies, with LoRA on the policy: the saved folder is
    a complete model with the adapter merged."""
    flags = [
        "--reward_funcs",
        "none",
        "--reward_model_name_or_path",
        reward_model_folder,
        "--max_steps",
        2,
        "--logging_steps",
        1,
        "--use_peft",
        "true",
        "--lora_r",
        4,
        "--learning_rate",
        5e-4,
        "--chat_eval_dataset",
        Path(tiny_corpus["eval"]) / "rl.jsonl",
        "--chat_eval_samples",
        8,
    ]
    result = grpo(*recipe_args(sft_folder, tiny_corpus["rl"], tmp_path, *flags))
    assert result["steps"] == 2 and result["reward_failures"] == {"reward_model": 0}
    assert result["before"]["reward"] == result["before"]["reward/reward_model"] != 0
    assert len(logged(tmp_path, "rewards/reward_model/mean")) == 2
    assert not (tmp_path / "adapter_config.json").exists()
    assert not torch.equal(up_proj(tmp_path), up_proj(sft_folder))


def test_calculator_is_typed_and_never_raises():
    """TRL renders the tool from its signature and docstring: the same schema the SFT conversations were made with."""
    schema = get_json_schema(calculator)
    assert schema == CALCULATOR_TOOL  # the calculator chats offer the tool exactly as TRL renders it
    assert calculator("123 * 45") == "5535" and calculator("2 ** 0.5") == "1.414213562"
    assert calculator("__import__('os')").startswith("error: ") and calculator("1 / 0") == "error: division by zero"
    tools = {"calculator": calculator}
    assert run_tool_call({"function": {"name": "search", "arguments": {}}}, tools)["content"].startswith("error")
    assert run_tool_call({"function": {"name": "calculator", "arguments": {"x": 1}}}, tools)["content"].startswith(
        "error: "
    )


def test_response_template_parses_what_the_chat_template_renders(tiny_tokenizer_dir, tmp_path):
    """TRL's tool loop reads tool calls with `parse_response`; it knows only the templates of known models."""
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    assert tokenizer.response_template == RESPONSE_TEMPLATE
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 45"}}}
    user = [{"role": "user", "content": "What is 123 * 45?"}]
    for reply in (
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "assistant", "content": "Answer: 5535", "reasoning_content": "123 * 45 = 5535."},
    ):
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        text = tokenizer.apply_chat_template(user + [reply], tokenize=False)[len(prefix) :].rstrip("\n")
        assert {"content": "", **tokenizer.parse_response(text, prefix=prefix)} == reply
    config = json.loads((Path(tiny_tokenizer_dir) / "tokenizer_config.json").read_text())
    del config["response_template"]  # a folder saved before the template existed
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "old")
    (tmp_path / "old" / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path / "old").response_template == RESPONSE_TEMPLATE


def test_tool_metrics_on_hand_made_replies():
    arguments = {"expression": "123 * 45"}
    call = {"id": "call_5f80f5", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
    transcripts = [
        [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "5535"},
            {"role": "assistant", "content": "123 * 45 = 5535.\nAnswer: 5535"},
        ],  # called, right
        [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "5535"},
            {"role": "assistant", "content": "Answer: 5536"},
        ],  # called, wrong
        [{"role": "assistant", "content": "Answer: 5535"}],  # right by heart
        [{"role": "assistant", "content": "I do not know."}],
    ]
    metrics = tool_metrics(transcripts, ["5535"] * 4)
    assert metrics["tool_call_rate"] == 0.5 and metrics["tool_accuracy"] == 0.5 and metrics["tool_calls"] == 0.5
    # the report's samples leave out the calls' random ids, so a rerun's report reads the same
    sample_call = metrics["tool_samples"][0]["transcript"][0]["tool_calls"][0]
    assert sample_call == {k: v for k, v in call.items() if k != "id"} and "id" in transcripts[0][0]["tool_calls"][0]
    with pytest.raises(ValueError, match="one answer per transcript, got 4 and 3"):
        tool_metrics(transcripts, ["5535"] * 3)


def scripted_reply(prompt: str) -> str:
    """What a model trained on the calculator conversations says: a call for the question's expression, then, once
    the tool has answered, the answer line with the tool's result."""
    turn = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", turn)
    if results:
        return f"The calculator says {results[-1]}.\nAnswer: {results[-1]}<|im_end|>"
    return CALL.format(EXPRESSION.search(turn.split("<|im_end|>")[0]).group(0))


def test_calculator_through_trl_tool_loop_and_the_evaluation(sft_folder, tiny_corpus, tmp_path):
    """Every rollout calls the calculator, TRL runs it and the policy answers from its result: the accuracy reward
    is 1 for each. The held-out tool loop scores the same way."""
    eval_tools = Path(tiny_corpus["eval"]) / "rl_tools.jsonl"
    flags = [
        "--use_tools",
        "true",
        "--reward_funcs",
        "accuracy",
        "format",
        "--tool_eval_dataset",
        eval_tools,
        "--tool_eval_samples",
        4,
        "--max_steps",
        2,
        "--logging_steps",
        1,
        "--max_completion_length",
        160,
    ]
    script_args, training_args, model_args = recipe_args(sft_folder, tiny_corpus["rl_tools"], tmp_path, *flags)
    callback = ScriptedPolicy(load_tokenizer(sft_folder), scripted_reply)  # a tiny model can't learn the tool prompt
    result = grpo(script_args, training_args, model_args, callbacks=[callback])
    assert logged(tmp_path, "tools/call_frequency") == [1.0, 1.0]
    assert logged(tmp_path, "tools/failure_frequency") == [0.0, 0.0]
    assert logged(tmp_path, "rewards/accuracy/mean") == [1.0, 1.0]
    for metrics in (result["before"], result["after"]):
        assert metrics["tool_call_rate"] == metrics["tool_accuracy"] == 1.0 and metrics["tool_calls"] == 1.0
        assert metrics["no_tool_accuracy"] == 0.0  # with no tool offered, the scripted call is never answered
    transcript = result["before"]["tool_samples"][0]["transcript"]
    assert [m["role"] for m in transcript] == ["assistant", "tool", "assistant"]
    assert transcript[1]["content"] == result["before"]["tool_samples"][0]["answer"]


def test_tool_loop_stops_after_max_iterations(sft_folder, tiny_corpus):
    """A model that keeps calling gets `max_iterations` rounds of tool messages, then its last call is not run."""
    tokenizer = load_tokenizer(sft_folder)
    model = AutoModelForCausalLM.from_pretrained(sft_folder)

    def always_call(input_ids, attention_mask, **kwargs):
        ids = torch.tensor(tokenizer(CALL.format("6 * 7"), add_special_tokens=False).input_ids)
        return torch.cat([input_ids, ids.expand(len(input_ids), -1)], dim=1)

    model.generate = always_call
    question = [{"role": "user", "content": "What is 6 * 7?"}]
    transcript = tool_loop_transcripts(model, tokenizer, [question], max_iterations=2)[0]
    assert [m["role"] for m in transcript] == ["assistant", "tool"] * 2 + ["assistant"]
    assert transcript[1] == {"role": "tool", "name": "calculator", "content": "42"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--los_type", "cispo"], "error: unknown flag --los_type; did you mean --loss_type?"),
        (["--loss_type", "ppo"], "error: --loss_type: expected one of grpo, dr_grpo, dapo"),
        (["--reward_funcs", "acuracy"], "error: --reward_funcs: unknown acuracy; expected from accuracy"),
        (["--num_generations", "1"], "error: GRPO requires at least 2 generations per prompt"),
        (["--difficulty_samples", "1"], "error: --difficulty_samples: expected 0 (off) or at least 2 replies"),
    ],
    ids=["flag", "loss", "reward", "group", "difficulty"],
)
def test_cli_reports_mistakes_in_one_error_line(argv, message, sft_folder, tiny_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "recipes/grpo.py",
            "--model_name_or_path",
            str(sft_folder),
            "--dataset_name",
            str(tiny_corpus["rl"]),
            "--output_dir",
            str(tmp_path),
            *argv,
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main(*make_parser().parse_args_and_config())
    assert exit_info.value.code in (1, 2)
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)


def test_cli_names_a_missing_dataset(sft_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "recipes/grpo.py",
            "--model_name_or_path",
            str(sft_folder),
            "--dataset_name",
            str(tmp_path / "missing.jsonl"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main(*make_parser().parse_args_and_config())
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "missing.jsonl" in err and "Traceback" not in err
