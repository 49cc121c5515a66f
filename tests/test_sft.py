"""SFT recipe: loss masks token by token, packing that changes nothing but speed, learning on held-out questions, LoRA
and its merge, exact resume, the chat formats it reads, bad records, and the calculator tool.

Guards what upstream MiniMind users hit after SFT: endless replies because the saved generation config lacked the
end-of-turn eos (#555, #679, #410), and the loss masks a hand-written template gets wrong.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import assert_run_card
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from data_process.assistant_masks import masked_row
from data_process.chat import check_turn_order, load_chat_dataset, read_system_prompts, to_chat_row
from data_process.collators import PackedRowsCollator
from data_process.jsonl import read_jsonl
from data_process.tools import CALCULATOR_TOOL, CalculatorError, calculator, evaluate_expression
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.export.merge_lora import main as merge_lora_main
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.cli import RecipeParser
from recipes.training.packed_text import PretrainConfig, PretrainModelArguments, PretrainScriptArguments
from recipes.training.pretraining import pretrain
from recipes.training.sft import (
    SFTModelArguments,
    SFTRecipeConfig,
    SFTRecipeTrainer,
    SFTScriptArguments,
    mask_assistant_spans,
    sft,
)

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_TOKENIZER = REPO.parent / "shared" / "upstream-minimind-tokenizer"
SFT_RECIPE = REPO / "recipes" / "configs" / "sft_tiny.yaml"
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]


def make_parser():
    return RecipeParser((SFTScriptArguments, SFTRecipeConfig, SFTModelArguments))


def parse(model_dir, dataset, output_dir, *overrides):
    argv = [
        "--config",
        SFT_RECIPE,
        "--model_name_or_path",
        model_dir,
        "--dataset_name",
        dataset,
        "--output_dir",
        output_dir,
        *QUIET,
        *overrides,
    ]
    return make_parser().parse_args_and_config([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def random_base(tokenizer, tmp_path_factory):
    """A tiny random MiniMind saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("random-base")
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_base(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """minimind-tiny after 60 pretraining steps on the tiny corpus (~15 s): a model that already writes text."""
    folder = tmp_path_factory.mktemp("pretrained-base")
    argv = [
        "--config",
        REPO / "recipes" / "configs" / "pretrain_tiny.yaml",
        "--dataset_name",
        tiny_corpus["pretrain"],
        "--tokenizer_name_or_path",
        tiny_tokenizer_dir,
        "--output_dir",
        folder,
        "--max_steps",
        "60",
        "--eval_strategy",
        "no",
        "--eval_on_start",
        "false",
        "--save_strategy",
        "no",
        *QUIET,
    ]
    parser = RecipeParser((PretrainScriptArguments, PretrainConfig, PretrainModelArguments))
    pretrain(*parser.parse_args_and_config([str(arg) for arg in argv]))
    return folder


def tool_conversation(thinking):
    """Three assistant turns: an answer, a calculator call, and the final answer after the tool result."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 45"}}}
    final = {"role": "assistant", "content": "123 * 45 = 5535.\nAnswer: 5535"}
    if thinking:
        final["reasoning_content"] = "The tool says 5535."
    return {
        "conversations": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 3 plus 4?"},
            {"role": "assistant", "content": "3 + 4 = 7.\nAnswer: 7"},
            {"role": "user", "content": "Use the calculator to work out 123 * 45."},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "5535"},
            final,
        ],
        "tools": [CALCULATOR_TOOL],
    }


def sft_trainer(tokenizer, rows, tmp_path, **config):
    """SFTRecipeTrainer over `rows` with a tiny random model: datasets prepared the way the recipe prepares them."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer)))
    args = SFTRecipeConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, eval_strategy="no", eval_on_start=False, **config
    )
    return SFTRecipeTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


@pytest.mark.parametrize("thinking", [False, True], ids=["plain", "thinking"])
def test_labels_are_ignored_exactly_outside_assistant_turns(thinking, tokenizer, tmp_path):
    row = to_chat_row(tool_conversation(thinking))
    trainer = sft_trainer(tokenizer, [row], tmp_path, packing=False, max_length=None)
    prepared = trainer.train_dataset[0]
    expected = masked_row(row, tokenizer)  # ChatML spans in the rendered text, not the template's markers
    input_ids, inside = expected["input_ids"], expected["assistant_masks"]

    assert prepared["input_ids"] == input_ids
    trained = [label != -100 for label in prepared["labels"]]
    for position, (token, want, got) in enumerate(zip(input_ids, inside, trained)):
        assert bool(want) == got, f"token {position} {tokenizer.decode([token])!r}: assistant={want}, trained={got}"
    trained_text = tokenizer.decode([t for t, keep in zip(input_ids, trained) if keep])
    assert trained_text.count("<|im_end|>") == 3 and "<tool_call>" in trained_text
    assert "5535\n</tool_response>" not in trained_text and "calculator" not in trained_text.split("<tool_call>")[0]
    assert ("<think>\nThe tool says 5535.\n</think>" in trained_text) == thinking


def test_chatml_spans_mark_the_tokens_the_generation_markers_mark(tokenizer, tiny_corpus):
    """The masks SFT builds for templates without {% generation %} markers (upstream MiniMind's) equal the markers'
    own masks on the project's template, over every conversation of the tiny corpus and the tool chats."""
    rows = [to_chat_row(record) for record in read_jsonl(tiny_corpus["sft"])]
    rows += [to_chat_row(tool_conversation(thinking)) for thinking in (False, True)]
    for row in rows:
        tools = json.loads(row["tools"]) if row["tools"] else None
        marked = tokenizer.apply_chat_template(
            row["messages"], tools=tools, return_dict=True, return_assistant_tokens_mask=True
        )
        spans = masked_row(row, tokenizer)
        assert spans["input_ids"] == marked["input_ids"]
        assert spans["assistant_masks"] == marked["assistant_masks"], row["messages"][-1]["content"]


@pytest.mark.skipif(not UPSTREAM_TOKENIZER.is_dir(), reason="upstream MiniMind tokenizer folder (../shared) absent")
def test_sft_trains_assistant_turns_with_upstream_minimind_tokenizer_as_it_is(tiny_corpus, tmp_path):
    """Upstream's chat template has no generation markers and TRL cannot patch it: SFT still trains, on exactly
    the assistant turns (upstream's template renders a think block in each) and nothing else."""
    upstream = AutoTokenizer.from_pretrained(UPSTREAM_TOKENIZER)
    args = SFTRecipeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, packing=False, max_length=None)
    (rows,) = mask_assistant_spans([Dataset.from_list([to_chat_row(tool_conversation(False))])], upstream, args)
    assert not args.assistant_only_loss  # the rows carry their masks; TRL's own marking is off
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(upstream)))
    args.eval_strategy, args.eval_on_start = "no", False
    prepared = SFTRecipeTrainer(model=model, args=args, train_dataset=rows, processing_class=upstream).train_dataset
    trained = upstream.decode([t for t, label in zip(prepared[0]["input_ids"], prepared[0]["labels"]) if label != -100])
    assert trained == (
        "<think>\n\n</think>\n\n3 + 4 = 7.\nAnswer: 7<|im_end|>"
        '<think>\n\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 45"}}\n</tool_call><|im_end|>'
        "<think>\n\n</think>\n\n123 * 45 = 5535.\nAnswer: 5535<|im_end|>"
    )

    base = tmp_path / "upstream-base"
    torch.manual_seed(0)
    model.save_pretrained(base)
    upstream.save_pretrained(base)
    result = sft(
        *parse(
            base,
            tiny_corpus["sft"],
            tmp_path / "sft",
            "--max_steps",
            "8",
            "--eval_dataset_name",
            tiny_corpus["eval"] / "sft.jsonl",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
        )
    )
    assert result["after"]["eval_loss"] < result["before"]["eval_loss"]
    assert AutoTokenizer.from_pretrained(tmp_path / "sft").chat_template == upstream.chat_template


def test_padded_padding_free_and_packed_rows_give_the_same_loss(tokenizer, tiny_corpus, tmp_path):
    """The same conversations padded per batch, flattened into one row (TRL's padding-free), and packed into rows
    (the recipe's default on sdpa): the same tokens are trained, so the mean loss is the same."""
    rows = [to_chat_row(record) for record in list(read_jsonl(tiny_corpus["sft"]))[:8]]
    trainer = sft_trainer(tokenizer, rows, tmp_path, packing=False, max_length=None)
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    packed = pack_dataset(
        Dataset.from_list(examples).select_columns(["input_ids", "labels"]), 1024, "bfd"
    )  # the longest chat, a calculator one with its tool list, is over 512
    batches = {
        "padded": trainer.data_collator(examples),
        "padding-free": DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)(examples),
        "packed rows": PackedRowsCollator(tokenizer.pad_token_id)(list(packed)),
    }
    assert batches["packed rows"]["input_ids"].shape[0] < len(rows) and "attention_mask" not in batches["packed rows"]
    model = trainer.model.eval()
    with torch.no_grad():
        losses = {name: model(**batch, use_cache=False).loss for name, batch in batches.items()}
    torch.testing.assert_close(losses["padding-free"], losses["padded"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["packed rows"], losses["padded"], rtol=1e-5, atol=1e-5)
    counted = {name: int((batch["labels"] != -100).sum()) for name, batch in batches.items()}
    assert len(set(counted.values())) == 1, counted


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_cpu_model_loss_equals_trl_fused_head_loss_gradients_and_metrics(packing, tokenizer, tiny_corpus, tmp_path):
    """On CPU the trainer takes the model's own cross-entropy instead of TRL's chunked log-prob head (faster there):
    the same loss, gradients and logged token accuracy, entropy and tokens seen."""
    rows = [to_chat_row(record) for record in list(read_jsonl(tiny_corpus["sft"]))[:8]]
    trainer = sft_trainer(tokenizer, rows, tmp_path, packing=packing, max_length=1024)
    assert trainer.model_loss
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    results = {}
    for model_loss in (True, False):
        trainer.model_loss, trainer._total_train_tokens = model_loss, 0
        trainer._metrics["train"].clear()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model.train(), dict(batch), num_items_in_batch=None)
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
        results[model_loss] = (loss.detach(), grads, metrics)
    (loss, grads, metrics), (trl_loss, trl_grads, trl_metrics) = results[True], results[False]
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    for grad, trl_grad in zip(grads, trl_grads):
        torch.testing.assert_close(grad, trl_grad, rtol=1e-4, atol=1e-6)
    assert metrics.keys() == trl_metrics.keys() == {"entropy", "mean_token_accuracy", "num_tokens"}
    for name, value in metrics.items():
        assert value == pytest.approx(trl_metrics[name], rel=1e-4), name


def test_sft_raises_heldout_accuracy_and_end_of_turn_rate(pretrained_base, tiny_corpus, tokenizer, tmp_path):
    """Five epochs over the tiny corpus (~45 s). Measured (1 and 2 CPU threads alike, seed 42): held-out loss
    4.27 -> 1.65, accuracy 0.0 -> 0.1 and task_accuracy 0.0 -> 0.04 (the 40 questions of eval/rl.jsonl),
    end-of-turn rate 0.35 -> 0.95. The thresholds leave room for other CPUs' numerics."""
    out = tmp_path / "sft"
    result = sft(
        *parse(
            pretrained_base,
            tiny_corpus["sft"],
            out,
            "--num_train_epochs",
            "5",
            "--learning_rate",
            "3e-3",
            "--eval_dataset_name",
            tiny_corpus["eval"] / "sft.jsonl",
            "--chat_eval_dataset",
            tiny_corpus["eval"] / "rl.jsonl",
            "--chat_eval_max_new_tokens",
            "64",
            "--eval_strategy",
            "epoch",
            "--save_strategy",
            "no",
        )
    )
    before, after = result["before"], result["after"]
    assert set(before) == set(after)
    assert {
        "eval_loss",
        "perplexity",
        "accuracy",
        "task_accuracy",
        "eot_rate",
        "per_family",
        "per_family_n",
        "samples",
        "items",
    } == set(after)
    assert sum(after["per_family_n"].values()) == len(after["items"]["accuracy"])
    assert set(result["gains"]) == {"accuracy", "task_accuracy", "eot_rate"}
    assert result["gains"]["eot_rate"]["ci_low"] > 0  # every question's reply now ends its turn, few did before
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    assert after["accuracy"] > before["accuracy"] or after["task_accuracy"] > before["task_accuracy"]
    assert after["eot_rate"] >= max(0.7, before["eot_rate"] + 0.3)
    assert f"- eval_task_accuracy: {after['task_accuracy']:.4g}" in assert_run_card(out, "sft")  # held-out numbers
    assert result["train_loss"] < before["eval_loss"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert (result["steps"], result["tokens"]) == (state["global_step"], state["num_input_tokens_seen"]) != (0, 0)
    evals = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    assert (before["eval_loss"], after["eval_loss"]) == (evals[0], evals[-1])  # the start and final evaluations

    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(after["eval_loss"])
    for key in ("accuracy", "task_accuracy", "eot_rate"):
        assert metrics[f"eval_{key}"] == after[key]
    assert json.loads((out / "all_results.json").read_text())["eval_eot_rate"] == after["eot_rate"]

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(out).eos_token_id == im_end == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    probes = list(read_jsonl(tiny_corpus["eval"] / "rl.jsonl"))[:8]
    ended = 0
    for probe in probes:  # generation stops at <|im_end|> with no eos_token_id given: the saved config has it
        ids = tokenizer.apply_chat_template(
            probe["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        new = model.generate(ids, max_new_tokens=64, do_sample=False)[0, ids.shape[1] :].tolist()
        if im_end in new:
            assert new.index(im_end) == len(new) - 1, "generation went on past <|im_end|>"
            ended += 1
    assert ended >= len(probes) // 2  # 5 of 8 end their turn within 64 tokens


class KeepModel(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_lora_trains_only_adapters_and_the_merged_folder_reloads(random_base, tiny_corpus, tokenizer, tmp_path):
    out = tmp_path / "lora"
    kept = KeepModel()
    sft(
        *parse(
            random_base,
            tiny_corpus["sft"],
            out,
            "--use_peft",
            "true",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--merge_on_save",
            "true",
            "--max_steps",
            "4",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
        ),
        callbacks=[kept],
    )
    base_weights = load_file(random_base / "model.safetensors")
    trained = {name: p for name, p in kept.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    assert any(p.abs().sum() > 0 for name, p in trained.items() if "lora_B" in name)  # B starts at zero
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in trained if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    for name, param in kept.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            saved = base_weights[key if key in base_weights else "model.embed_tokens.weight"]  # lm_head is tied
            assert torch.equal(param.detach(), saved), name

    ids = tokenizer("3 + 4 = 7. The capital of", return_tensors="pt").input_ids
    base_and_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_base), out / "adapter")
    with torch.no_grad():
        expected = base_and_adapter.eval()(ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent("""
        import sys
        sys.modules["modeling_miniminds"] = None
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
    """)
    command = [sys.executable, "-c", script, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "l.pt")]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "l.pt"), expected, rtol=1e-5, atol=1e-5)

    assert f"from `{random_base}`" in assert_run_card(out, "sft")  # the merged folder's card, not the adapter's
    assert merge_lora_main([str(out / "adapter"), str(tmp_path / "merged")]) == 0  # the CLI gives the same weights
    for name, tensor in load_file(tmp_path / "merged" / "model.safetensors").items():
        torch.testing.assert_close(tensor, load_file(out / "model.safetensors")[name])


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def train_losses(output_dir):
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_interrupted_then_resumed_sft_matches_uninterrupted(random_base, tiny_corpus, tmp_path):
    args = (
        "--max_steps",
        "6",
        "--save_steps",
        "3",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
    )
    sft(*parse(random_base, tiny_corpus["sft"], tmp_path / "full", *args))
    interrupted = tmp_path / "interrupted"
    sft(*parse(random_base, tiny_corpus["sft"], interrupted, *args), callbacks=[StopAfter(3)])
    assert sorted(train_losses(interrupted)) == [1, 2, 3]
    sft(*parse(random_base, tiny_corpus["sft"], interrupted, *args, "--resume_from_checkpoint", "auto"))

    full, resumed = train_losses(tmp_path / "full"), train_losses(interrupted)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7), f"step {step}"
    full_weights = load_file(tmp_path / "full" / "model.safetensors")
    for name, tensor in load_file(interrupted / "model.safetensors").items():
        torch.testing.assert_close(tensor, full_weights[name], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in read_metrics(interrupted / METRICS_FILE) if "loss" in r] == list(range(1, 7))


GOOD = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_RECORDS = {
    "no assistant turn": ({"conversations": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    "role order": (
        {
            "conversations": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        "field 'conversations[1].role': 'user' cannot follow 'user'",
    ),
    "tool call not JSON": (
        {
            "conversations": [
                {"role": "user", "content": "1+1?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "calculator", "arguments": "{expression: 1+1}"}}
                    ],
                },
                {"role": "tool", "content": "2"},
                {"role": "assistant", "content": "2"},
            ]
        },
        "field 'conversations[1].tool_calls[0].function.arguments': not valid JSON",
    ),
}


def write_records(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_is_one_error_line_naming_file_line_and_field(case, random_base, tmp_path, capsys):
    """Through the recipe's command line (in process; the script itself is run once in the next test)."""
    from recipes.sft import main

    record, message = BAD_RECORDS[case]
    data = write_records(tmp_path / "data.jsonl", [GOOD, GOOD, record])
    with pytest.raises(SystemExit) as exit_info:
        main(*parse(random_base, data, tmp_path / "run"))
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]] and "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith(f"error: {data}:3: ") and message in lines[-1]


def test_script_reports_a_bad_record_and_skip_bad_sets_them_aside(random_base, tmp_path):
    records = [GOOD, BAD_RECORDS["role order"][0], GOOD, BAD_RECORDS["tool call not JSON"][0], GOOD]
    data = write_records(tmp_path / "data.jsonl", records)
    command = [
        sys.executable,
        str(REPO / "recipes" / "sft.py"),
        "--config",
        str(SFT_RECIPE),
        "--model_name_or_path",
        str(random_base),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(tmp_path / "run"),
        *QUIET,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {data}:2: field 'conversations[1].role'")

    out = tmp_path / "skipping"
    result = sft(*parse(random_base, data, out, "--skip_bad", "true", "--max_steps", "1", "--eval_strategy", "no"))
    assert result["rejected"] == {"train": 2, "eval": 0} and result["steps"] == 1
    rejected = list(read_jsonl(out / "train.rejected.jsonl"))
    assert [(r["file"], r["line"]) for r in rejected] == [(str(data), 2), (str(data), 4)]
    assert "cannot follow 'user'" in rejected[0]["reason"] and "not valid JSON" in rejected[1]["reason"]
    assert json.loads(rejected[0]["raw"]) == records[1]


def test_corpus_chats_render_the_same_under_messages_and_conversations(tiny_corpus):
    """Issue 17: the corpus moved its chats from `conversations` to `messages` (what TRL reads); every training row
    (follow-ups, thinking, calculator calls and their tools) must stay what it was, so the demo's numbers do not move."""
    records = list(read_jsonl(tiny_corpus["sft"], validate="sft"))
    assert all("messages" in record and "conversations" not in record for record in records)
    kinds = {"reasoning_content", "tool_calls"}
    assert kinds <= {key for record in records for message in record["messages"] for key in message}
    for record in records:
        renamed = {("conversations" if key == "messages" else key): value for key, value in record.items()}
        assert to_chat_row(renamed) == to_chat_row(record)


def test_every_chat_format_converts_to_the_same_conversation(tmp_path):
    """Project format, ShareGPT, Alpaca, OpenAI messages and upstream MiniMind's JSON-text tools and tool calls."""
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    sources = [
        {"conversations": plain},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"instruction": "Hi", "input": "", "output": "Hello"},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello"},
            ]
        },
    ]
    for source in sources:
        turns = [(m["role"], m["content"]) for m in to_chat_row(source)["messages"]]
        assert turns == [("user", "Hi"), ("assistant", "Hello")]
    call = {"name": "calculator", "arguments": {"expression": "2 * 3"}}
    call_text = '{"expression": "2 * 3"}'
    upstream = {
        "conversations": [
            {"role": "system", "content": "Use tools.", "tools": json.dumps([CALCULATOR_TOOL])},
            {"role": "user", "content": "2 * 3?"},
            {"role": "assistant", "content": "", "tool_calls": json.dumps([call])},
            {"role": "tool", "content": "6"},
            {"role": "assistant", "content": "<think>\nThe tool said 6.\n</think>\n6"},
        ]
    }
    openai = {
        "tools": [CALCULATOR_TOOL],
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "2 * 3?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": call_text}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "6"},
            {"role": "assistant", "content": "6", "reasoning_content": "The tool said 6."},
        ],
    }
    assert to_chat_row(upstream) == to_chat_row(openai)
    row = to_chat_row(openai)
    assert json.loads(row["tools"]) == [CALCULATOR_TOOL]
    assert row["messages"][2]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": call_text}
    assert row["messages"][4]["reasoning_content"] == "The tool said 6." and row["messages"][4]["content"] == "6"

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_records(folder / "a.jsonl", sources[:2])
    write_records(folder / "b.jsonl", [upstream, openai])
    for name in (folder, str(folder / "*.jsonl")):
        dataset, rejected = load_chat_dataset(name)
        assert len(dataset) == 4 and rejected == 0 and set(dataset.column_names) == {"messages", "tools"}


def test_system_prompts_are_added_at_the_given_rate_with_a_seed(tiny_corpus, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("You are A.\nYou are B.\n", encoding="utf-8")
    assert read_system_prompts([str(prompts_file)]) == ["You are A.", "You are B."]
    assert read_system_prompts(["Be brief."]) == ["Be brief."]

    def added(seed, ratio):
        dataset, _ = load_chat_dataset(
            tiny_corpus["sft"], system_prompts=["You are A.", "You are B."], system_prompt_ratio=ratio, seed=seed
        )
        firsts = [messages[0]["content"] for messages in dataset["messages"]]
        return [content if content in ("You are A.", "You are B.") else None for content in firsts]

    first, again, other = added(0, 0.5), added(0, 0.5), added(1, 0.5)
    without_system = sum(m[0]["role"] != "system" for m in load_chat_dataset(tiny_corpus["sft"])[0]["messages"])
    assert first == again and first != other
    assert 0.3 < sum(p is not None for p in first) / without_system < 0.7
    assert {p for p in first if p} == {"You are A.", "You are B."}
    assert added(0, 1.0).count(None) < added(0, 0.0).count(None) == len(first)


def test_turn_order_rules():
    def roles(*names, calls=()):
        return [{"role": r, "content": "x", "tool_calls": [{}] if i in calls else None} for i, r in enumerate(names)]

    check_turn_order(roles("system", "user", "assistant", "user", "assistant"))
    check_turn_order(roles("user", "assistant", "tool", "tool", "assistant", calls=(1,)))
    check_turn_order(roles("user", "assistant", calls=(1,)))  # a call that ends the sample (function-calling data)
    for names, calls, message in [
        (("user", "system", "assistant"), (), "a system message may only come first"),
        (("assistant",), (), "'assistant' cannot come first"),
        (("user", "assistant", "assistant"), (), "'assistant' cannot follow 'assistant'"),
        (("user", "tool", "assistant"), (), "a tool result must follow an assistant tool call"),
        (("user", "assistant", "user", "assistant"), (1,), "the tool call gets no tool result"),
        (("user", "assistant", "user"), (), "must end with an assistant turn"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_turn_order(roles(*names, calls=calls))


def test_template_renders_thinking_switch_and_tools(tokenizer):
    """The chat template: <think> from reasoning_content, enable_thinking=False opens the reply with an empty think
    block (as Qwen3 does), tools listed in the system turn, calls as <tool_call>{json}</tool_call>, results as
    their own turn."""
    row = to_chat_row(tool_conversation(thinking=True))
    text = tokenizer.apply_chat_template(row["messages"], tools=json.loads(row["tools"]), tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert json.dumps(CALCULATOR_TOOL, ensure_ascii=False) in text
    call = '{"name": "calculator", "arguments": {"expression": "123 * 45"}}'
    assert f"<|im_start|>assistant\n<tool_call>\n{call}\n</tool_call><|im_end|>" in text
    assert "<|im_start|>tool\n<tool_response>\n5535\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<think>\nThe tool says 5535.\n</think>\n\n123 * 45 = 5535.\nAnswer: 5535<|im_end|>\n")
    prompt = row["messages"][:2]
    on = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    off = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n") and off == on + "<think>\n\n</think>\n\n"


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "configs").glob("sft_*.yaml")), ids=lambda p: p.stem)
def test_recipe_files_parse(recipe, tmp_path):
    _, training_args, model_args = make_parser().parse_args_and_config(
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            "unused",
            "--dataset_name",
            "unused",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert training_args.assistant_only_loss and training_args.packing and training_args.max_length
    assert model_args.lora_target_modules == "all-linear"


@pytest.mark.parametrize(
    "expression, value",
    [
        ("123 * 45 - 67", 5468),
        ("(750 + 466) * 89", 108224),
        ("7 / 2", 3.5),
        ("-(2 + 3) ** 2", -25),
        ("17 // 5", 3),
        ("17 % 5", 2),
        ("2 ** -1", 0.5),
        ("1.5 * 4", 6.0),
    ],
)
def test_calculator_evaluates_arithmetic(expression, value):
    assert evaluate_expression(expression) == value


def test_calculator_writes_tool_results():
    assert [calculator(e) for e in ("123 * 45", "6 / 3", "1 / 3", "2 ** 0.5")] == [
        "5535",
        "2",
        "0.3333333333",
        "1.414213562",
    ]


@pytest.mark.parametrize(
    "expression, message",
    [
        ("x + 1", "names are not allowed"),
        ("__import__('os').system('true')", "function calls are not allowed"),
        ("(1).real", "attributes are not allowed"),
        ("[1][0]", "subscripts are not allowed"),
        ("{1: 2}", "Dict expressions are not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("2 ** 1000", "exponent 1000 exceeds 100"),
        ("99 ** 99", "result magnitude exceeds"),
        ("10 ** 20 * 10 ** 20", "result magnitude exceeds"),
        ("1 / 0", "division by zero"),
        ("1 +", "not an arithmetic expression"),
        ("1 + " * 60 + "1", "characters long, the limit is 200"),
        ("(" * 45 + "1" + ")" * 45 + "+1" * 52, "parts, the limit is 100"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression, message):
    with pytest.raises(CalculatorError, match=message):
        evaluate_expression(expression)
