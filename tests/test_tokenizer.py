"""Tokenizer: exact round trips, fixed special ids, the chat template and its assistant mask, the recipe's CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data_process.loading import iter_texts
from data_process.text import compression_stats
from modeling_miniminds.tokenizer import CHAT_TEMPLATE, TAG_TOKENS, load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO.parent / "shared" / "upstream-minimind-tokenizer"


def run_recipe(*argv):
    return subprocess.run(
        [sys.executable, "recipes/tokenizer.py", *map(str, argv)], cwd=REPO, capture_output=True, text=True
    )


ROUND_TRIP = [
    "小型语言模型从零开始训练，先训练分词器。",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧 and a flag 🇨🇳",
    'def f(x):\n\treturn {"a": x ** 2}  # comment\n',
    "  leading and trailing spaces  \n\n\r\n\t mixed\u3000全角空格 ",
    "<think>\n推理过程\n</think>\n\n答案：8",
    "rare bytes: \x00\x01 ½ ∑ ℃ ﬁ",
]

CHAT = [
    {"role": "system", "content": "你是助手。"},
    {"role": "user", "content": "3 加 5 等于多少？"},
    {"role": "assistant", "content": "3 加 5 等于 8。\n答案：8"},
    {"role": "user", "content": "And 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4.\nAnswer: 4"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_special_token_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.convert_tokens_to_ids(TAG_TOKENS) == [3, 4, 5, 6, 7, 8]
    assert 256 + 9 < len(tokenizer) <= 512


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_tags_are_single_tokens_kept_on_decode(tokenizer):
    ids = tokenizer.encode("<think>x</think><tool_call>", add_special_tokens=False)
    assert ids[0] == 3 and ids[-2:] == [4, 5]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think><tool_call>"


def test_no_special_tokens_added_by_default(tokenizer):
    assert tokenizer.encode("hello") == tokenizer.encode("hello", add_special_tokens=False)


def test_chat_template_renders_chatml(tokenizer):
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert rendered == (
        "<|im_start|>system\n你是助手。<|im_end|>\n"
        "<|im_start|>user\n3 加 5 等于多少？<|im_end|>\n"
        "<|im_start|>assistant\n3 加 5 等于 8。\n答案：8<|im_end|>\n"
        "<|im_start|>user\nAnd 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 2 = 4.\nAnswer: 4<|im_end|>\n"
    )


def test_generation_prompt_and_thinking_switch(tokenizer):
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n3 加 5 等于多少？<|im_end|>\n<|im_start|>assistant\n")
    no_think = tokenizer.apply_chat_template(
        CHAT[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think == prompt + "<think>\n\n</think>\n\n"


def test_assistant_mask_covers_exactly_assistant_content_and_end_of_turn(tokenizer):
    """Guards TRL assistant_only_loss: every assistant token (and its <|im_end|>) is trained, nothing else."""
    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    assert not current, "the mask must end before the trailing newline"
    expected = [m["content"] + "<|im_end|>" for m in CHAT if m["role"] == "assistant"]
    assert [tokenizer.decode(span) for span in spans] == expected
    assert sum(mask) == sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in expected)


def test_tool_calls_reasoning_and_tool_role_render(tokenizer):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "3+5?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 3}}}]},
        {"role": "tool", "content": "8"},
        {"role": "assistant", "content": "答案：8", "reasoning_content": "工具返回 8"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert rendered.startswith("<|im_start|>system\n# Tools")
    assert '"name": "add"' in rendered
    call = '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call><|im_end|>'
    assert call in rendered
    assert "<|im_start|>tool\n<tool_response>\n8\n</tool_response><|im_end|>\n" in rendered
    assert rendered.endswith("<|im_start|>assistant\n<think>\n工具返回 8\n</think>\n\n答案：8<|im_end|>\n")


def test_cli_trains_saves_and_reports_compression(tiny_corpus, tmp_path):
    done = run_recipe("--dataset_name", tiny_corpus["pretrain"], "--output_dir", tmp_path, "--vocab_size", "400")
    assert done.returncode == 0, done.stderr
    assert "compression on" in done.stdout and "zh" in done.stdout and "en" in done.stdout
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) <= 400 and reloaded.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("content", ["", "\n\n", "  \n"])
def test_cli_refuses_a_corpus_without_text(tmp_path, content):
    """An empty file used to give a bytes-only tokenizer and exit 0."""
    empty = tmp_path / "empty.txt"
    empty.write_text(content, encoding="utf-8")
    done = run_recipe("--dataset_name", empty, "--output_dir", tmp_path / "tok")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no text to train the tokenizer on: the input holds no non-empty document"
    )
    assert not (tmp_path / "tok").exists()


def test_cli_names_a_missing_input(tmp_path):
    done = run_recipe("--dataset_name", tmp_path / "nope.jsonl", "--output_dir", tmp_path / "tok")
    assert done.returncode == 1 and done.stderr.strip() == f"error: input not found: {tmp_path / 'nope.jsonl'}"


def test_compression_is_better_than_bytes(tokenizer, tiny_corpus):
    stats = compression_stats(tokenizer, ["3 加 5 等于 8。猫有 4 条腿。", "The capital of France is Paris."])
    assert stats["zh"]["bytes_per_token"] > 1.5 and stats["en"]["bytes_per_token"] > 1.5


def test_vocab_size_below_reserved_tokens_is_rejected(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be larger than 265"):
        train_tokenizer(iter_texts(tiny_corpus["pretrain"]), tmp_path, vocab_size=200)


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="upstream MiniMind tokenizer folder (../shared) not present")
def test_upstream_minimind_tokenizer_loads_unchanged():
    tokenizer = load_tokenizer(UPSTREAM)
    assert len(tokenizer) == 6400
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.chat_template.startswith("{%- if tools %}")
    for text in ROUND_TRIP[:4]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    rendered = tokenizer.apply_chat_template(CHAT[:3], tokenize=False)
    assert rendered.startswith("<|im_start|>system\n你是助手。<|im_end|>\n<|im_start|>user\n")
