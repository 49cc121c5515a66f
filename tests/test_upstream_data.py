"""Upstream MiniMind's published data files, as they are, through every recipe's reader, and every chat stage on
them with upstream's own tokenizer (its template has no {% generation %} markers).

The files are written here in upstream's layouts from the tiny built-in corpus: pretraining `{"text"}`; SFT
`{"conversations"}` with the tool list as JSON text in the system turn, `tool_calls` as JSON text and
`reasoning_content`; `dpo.jsonl` `{"chosen", "rejected"}`; `rlaif.jsonl`, chats whose last assistant turn is a
placeholder for the reply to generate.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import stage_args
from transformers import AutoTokenizer

from data_process.chat import load_chat_dataset, to_chat_row
from data_process.jsonl import read_jsonl, write_jsonl
from data_process.loading import load_text_dataset
from data_process.records import DataError
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training import dpo, grpo, ppo, reward, sft
from recipes.training.preference import read_pairs
from recipes.training.rl import read_rl_records

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_TOKENIZER = REPO.parent / "shared" / "upstream-minimind-tokenizer"


def turns_of(record):
    return record.get("messages") or record["conversations"]


def upstream_sft(record):
    """A project chat in upstream's SFT layout: tools as JSON text in the system turn, tool calls as JSON text."""
    turns = [dict(turn) for turn in turns_of(record)]
    for turn in turns:
        if turn.get("tool_calls"):
            turn["tool_calls"] = json.dumps(turn["tool_calls"], ensure_ascii=False)
    if record.get("tools"):
        if turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": ""})
        turns[0]["tools"] = json.dumps(record["tools"], ensure_ascii=False)
    return {"conversations": turns}


@pytest.fixture(scope="module")
def upstream_data(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("upstream-data")
    sft_records = list(read_jsonl(tiny_corpus["sft"]))
    thinking = {
        "conversations": [
            {"role": "user", "content": "7 加 5 等于多少？"},
            {"role": "assistant", "content": "答案：12", "reasoning_content": "7 + 5 = 12。"},
        ]
    }
    rl = list(read_jsonl(tiny_corpus["rl"]))
    rlaif = [
        {"conversations": [*r["prompt"], {"role": "assistant", "content": "无" if i % 2 else ""}]}
        for i, r in enumerate(rl)
    ]
    write_jsonl(folder / "pretrain_t2t_mini.jsonl", read_jsonl(tiny_corpus["pretrain"]))
    write_jsonl(folder / "sft_t2t_mini.jsonl", [upstream_sft(r) for r in sft_records] + [thinking])
    write_jsonl(folder / "dpo.jsonl", read_jsonl(tiny_corpus["dpo"]))
    write_jsonl(folder / "rlaif.jsonl", rlaif)
    return {"folder": folder, "sft": sft_records, "thinking": thinking, "rl": rl}


def test_upstream_layouts_read_as_the_project_formats(upstream_data, tiny_corpus):
    folder = upstream_data["folder"]
    assert len(load_text_dataset(folder / "pretrain_t2t_mini.jsonl")) == len(list(read_jsonl(tiny_corpus["pretrain"])))

    rows, rejected = load_chat_dataset(folder / "sft_t2t_mini.jsonl", write_rejected=False)
    expected = [to_chat_row(r) for r in upstream_data["sft"]]
    assert rejected == 0 and rows.to_list()[:-1] == expected
    assert any(row["tools"] for row in expected) and any(m["tool_calls"] for r in expected for m in r["messages"])
    assert rows[-1]["messages"][-1]["reasoning_content"] == "7 + 5 = 12。"

    assert len(read_pairs(str(folder / "dpo.jsonl"))) == len(list(read_jsonl(tiny_corpus["dpo"])))

    prompts = read_rl_records(folder / "rlaif.jsonl")
    assert [p["prompt"] for p in prompts] == [r["prompt"] for r in upstream_data["rl"]]
    assert all(set(p) == {"prompt"} for p in prompts)  # no answer: scored by a reward model or answer-free rewards


def test_an_rl_record_in_no_known_layout_fails_at_its_line(tmp_path):
    path = tmp_path / "unknown.jsonl"
    good = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    write_jsonl(path, [good, {"turns": [], "answer": "1"}])
    with pytest.raises(DataError, match=r"unknown.jsonl:2: field 'prompt': missing \(keys: turns, answer\); expected"):
        read_rl_records(path)
    write_jsonl(path, [good, {"conversations": [{"role": "assistant", "content": "无"}]}])
    with pytest.raises(DataError, match=r"unknown.jsonl:2: field 'prompt': expected .* non-empty list"):
        read_rl_records(path)


@pytest.mark.skipif(not UPSTREAM_TOKENIZER.is_dir(), reason="upstream MiniMind tokenizer folder (../shared) absent")
def test_replies_in_upstream_template_parse_back_for_the_tool_loop():
    """TRL's tool loop reads calls out of replies through the tokenizer's response template: upstream's template
    writes replies as the project's does, so loading it attaches the same one."""
    tokenizer = load_tokenizer(UPSTREAM_TOKENIZER)
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}
    reply = {
        "role": "assistant",
        "content": "Let me work it out.",
        "reasoning_content": "A product.",
        "tool_calls": [call],
    }
    question = [{"role": "user", "content": "6 * 7?"}]
    prompt = tokenizer.apply_chat_template(question, tokenize=False)
    rendered = tokenizer.apply_chat_template([*question, reply], tokenize=False)[len(prompt) :]
    assert tokenizer.parse_response(rendered.rstrip("\n"), prefix="") == reply
    generated = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert tokenizer.parse_response("Answer: 42<|im_end|>", prefix=generated) == {
        "role": "assistant",
        "content": "Answer: 42",
    }


def stage(module, model, dataset, output_dir, *flags):
    """Run one stage in-process on `dataset` from `model`, from its tiny recipe, as its script does."""
    name = module.__name__.rsplit(".", 1)[1]
    return getattr(module, name)(*stage_args(module.make_parser(), f"{name}_tiny", model, dataset, output_dir, *flags))


@pytest.mark.skipif(not UPSTREAM_TOKENIZER.is_dir(), reason="upstream MiniMind tokenizer folder (../shared) absent")
def test_every_chat_stage_trains_on_upstream_files_with_upstream_tokenizer(upstream_data, tmp_path):
    """SFT, reward model, DPO, GRPO and PPO each take upstream's file for the stage and upstream's tokenizer as they
    are, for a few steps: nothing to convert, nothing to patch."""
    folder = upstream_data["folder"]
    tokenizer = AutoTokenizer.from_pretrained(UPSTREAM_TOKENIZER)
    base = tmp_path / "base"
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    steps = ["--max_steps", 2, "--save_strategy", "no", "--eval_strategy", "no"]
    chats, pairs, prompts = (folder / name for name in ("sft_t2t_mini.jsonl", "dpo.jsonl", "rlaif.jsonl"))
    started = tmp_path / "sft"
    rl_flags = ["--reward_model_name_or_path", tmp_path / "reward", "--max_steps", 1, "--save_strategy", "no"]

    trained = stage(sft, base, chats, started, "--max_length", 256, *steps)
    scorer = stage(reward, started, pairs, tmp_path / "reward", *steps)
    preferred = stage(dpo, started, pairs, tmp_path / "dpo", *steps)
    grouped = stage(grpo, started, prompts, tmp_path / "grpo", *rl_flags, "--reward_funcs", "format")
    optimised = stage(ppo, started, prompts, tmp_path / "ppo", *rl_flags, "--reward_funcs", "none")

    assert [r["steps"] for r in (trained, scorer, preferred, grouped)] == [2, 2, 2, 1]
    assert optimised["prompts"] == len(upstream_data["rl"]) and optimised["steps"] == 1
    for name in ("sft", "reward", "dpo", "grpo", "ppo"):
        saved = AutoTokenizer.from_pretrained(tmp_path / name)
        assert saved.chat_template == tokenizer.chat_template, name
