"""Tokenizer: exact round trips, fixed special ids, the chat template and its assistant mask, the recipe's CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data_process.jsonl import read_jsonl
from data_process.loading import iter_texts
from data_process.records import DataError
from data_process.text import compression_stats
from modeling_miniminds.tokenizer import (
    CHAT_TEMPLATE,
    EOS,
    OLLAMA_TEMPLATE,
    TAG_TOKENS,
    load_tokenizer,
    parse_reply,
    train_tokenizer,
)

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


CALCULATOR_CHAT = {
    "messages": [
        {"role": "user", "content": "What is 12 * 34?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "calculator", "arguments": {"expression": "12 * 34"}}}],
        },
        {"role": "tool", "content": "408"},
        {"role": "assistant", "content": "Answer: 408"},
    ],
    "tools": [{"type": "function", "function": {"name": "calculator", "description": "Evaluate an expression."}}],
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_render_chats_reads_a_chat_as_its_template_layout(tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", [CALCULATOR_CHAT, {"text": "Plain text stays as it is."}])
    words, layout = list(iter_texts([data])), list(iter_texts([data], render_chats=True))
    assert words[0] == "What is 12 * 34?\n408\nAnswer: 408" and words[1] == layout[1] == "Plain text stays as it is."
    assert '"name": "calculator", "description": "Evaluate an expression."' in layout[0]
    assert '{"name": "calculator", "arguments": {"expression": "12 * 34"}}' in layout[0]
    assert "\nuser\nWhat is 12 * 34?\n" in layout[0] and "\nassistant\nAnswer: 408\n" in layout[0]
    assert not any(token in layout[0] for token in ["<|im_start|>", "<|im_end|>", *TAG_TOKENS])


def test_render_chats_names_the_line_of_a_chat_out_of_order(tmp_path):
    reversed_turns = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}]}
    data = write_jsonl(tmp_path / "chats.jsonl", [CALCULATOR_CHAT, reversed_turns])
    with pytest.raises(DataError, match=r"chats\.jsonl:2: field 'messages\[0\]\.role': 'assistant' cannot come first"):
        list(iter_texts([data], render_chats=True))


def test_a_tokenizer_that_learns_the_chat_layout_spends_fewer_tokens_on_a_tool_chat(tiny_corpus, tmp_path):
    """The demo's calculator prompt took 458 tokens from a tokenizer trained on the messages' words, 220 from one
    trained on the chats' layout; the pretraining text costs about the same under both."""
    files = [tiny_corpus["pretrain"], tiny_corpus["sft"]]
    words = train_tokenizer(iter_texts(files), tmp_path / "words", vocab_size=1024)
    layout = train_tokenizer(iter_texts(files, render_chats=True), tmp_path / "layout", vocab_size=1024)
    chat = next(r for r in read_jsonl(tiny_corpus["sft"]) if r.get("tools"))
    lengths = [len(t.apply_chat_template(chat["messages"], tools=chat["tools"])["input_ids"]) for t in (words, layout)]
    assert lengths[1] < 0.6 * lengths[0], lengths
    held_out = list(iter_texts([Path(tiny_corpus["eval"]) / "pretrain.jsonl"]))
    costs = [sum(len(t(text)["input_ids"]) for text in held_out) for t in (words, layout)]
    assert costs[1] < 1.05 * costs[0], costs


def test_compression_is_better_than_bytes(tokenizer, tiny_corpus):
    stats = compression_stats(tokenizer, ["3 加 5 等于 8。猫有 4 条腿。", "The capital of France is Paris."])
    assert stats["zh"]["bytes_per_token"] > 1.5 and stats["en"]["bytes_per_token"] > 1.5


def test_every_digit_is_its_own_token_and_text_round_trips(tokenizer):
    """Qwen2's split: the corpus repeats numbers like 12 and 2024 often enough for BPE to merge them, and it must not,
    so that arithmetic is learnt digit by digit."""
    text = "The day after May 31, 2024 is June 1, 2024. 37 + 45 = 82。12 乘以 12 等于 144。"
    pieces = [tokenizer.decode([token_id]) for token_id in tokenizer(text)["input_ids"]]
    numbers = [piece for piece in pieces if re.search("[0-9]", piece)]
    assert len(numbers) == sum(c.isdigit() for c in text) and all(re.fullmatch("[0-9]", p) for p in numbers), numbers
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


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


# -- one chat format: the Jinja template, the Ollama template and the reply parsers agree --------------------------

GO_ACTION = re.compile(r"\{\{(-)?\s*(.*?)\s*(-)?\}\}", re.DOTALL)
GO_TOKEN = re.compile(r'"[^"]*"|\S+')


def go_parse(template: str) -> list:
    """The subset of Go's text/template that OLLAMA_TEMPLATE uses, as a tree: text, {{ expr }}, {{ $x := expr }},
    if / else if / else / end, range [$i, $x :=] expr / end; `{{-` and `-}}` trim the whitespace beside them."""
    parts, position = [], 0
    for match in GO_ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip()
        if parts and parts[-1][0] == "trim_next":
            parts.pop()
            text = text.lstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2)))
        if match.group(3):
            parts.append(("trim_next", None))
        position = match.end()
    text = template[position:]
    parts.append(("text", text.lstrip() if parts and parts[-1][0] == "trim_next" else text))
    parts = [part for part in parts if part[0] != "trim_next"]

    def block(items):
        nodes = []
        while items:
            kind, value = items.pop(0)
            if kind == "text":
                nodes.append(("text", value))
            elif value == "end" or value == "else" or value.startswith("else if "):
                items.insert(0, (kind, value))
                return nodes
            elif value.startswith("if "):
                branches, otherwise = [(value[3:], block(items))], []
                while (closing := items.pop(0)[1]) != "end":
                    if closing == "else":
                        otherwise = block(items)
                    else:
                        branches.append((closing[8:], block(items)))
                nodes.append(("if", branches, otherwise))
            elif value.startswith("range "):
                names, _, expression = value[6:].rpartition(":=")
                names = [name.strip() for name in names.split(",") if name.strip()]
                nodes.append(("range", names, expression.strip(), block(items)))
                assert items.pop(0)[1] == "end"
            elif ":=" in value:
                name, expression = value.split(":=")
                nodes.append(("assign", name.strip(), expression.strip()))
            else:
                nodes.append(("print", value))
        return nodes

    return block(parts)


def go_render(template: str, data: dict) -> str:
    """Render with Ollama's data: field lookups on dicts, Go truthiness, and the functions eq, ne, or, json.
    Go's `json` writes no spaces after separators, Python's `tojson` does: both are printed as `tojson` prints
    them, so the comparison checks the layout around the JSON."""

    def operand(token, dot, scope):
        if token.startswith('"'):
            return token[1:-1]
        root, *fields = token.split(".")
        value = dot if root == "" else data if root == "$" else scope[root]
        for name in filter(None, fields):
            value = value[name]
        return value

    functions = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "or": lambda *values: next((v for v in values if v), values[-1]),
        "json": lambda value: json.dumps(value, ensure_ascii=False),
    }

    def evaluate(expression, dot, scope):
        name, *arguments = GO_TOKEN.findall(expression)
        if name in functions:
            return functions[name](*(operand(a, dot, scope) for a in arguments))
        return operand(name, dot, scope)

    def run(nodes, dot, scope, out):
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "print":
                out.append(str(evaluate(node[1], dot, scope)))
            elif node[0] == "assign":
                scope[node[1]] = evaluate(node[2], dot, scope)
            elif node[0] == "if":
                taken = next((body for condition, body in node[1] if evaluate(condition, dot, scope)), node[2])
                run(taken, dot, scope, out)
            else:
                _, names, expression, body = node
                for index, item in enumerate(evaluate(expression, dot, scope) or []):
                    inner = dict(scope)
                    if len(names) == 2:
                        inner[names[0]], inner[names[1]] = index, item
                    run(body, item, inner, out)

    out = []
    run(go_parse(template), data, {}, out)
    return "".join(out)


def ollama_data(messages: list[dict], tools: list[dict] | None) -> dict:
    """What Ollama hands its template for a chat request: the first system message as .System, every message
    with Go's field names, the tools as sent."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    return {
        "System": system,
        "Tools": tools or [],
        "Messages": [
            {
                "Role": m["role"],
                "Content": m.get("content") or "",
                "Thinking": m.get("reasoning_content") or "",
                "ToolCalls": [
                    {"Function": {"Name": c["function"]["name"], "Arguments": c["function"]["arguments"]}}
                    for c in m.get("tool_calls") or []
                ],
            }
            for m in messages
        ],
    }


ADD_TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "description": "Weather in a city"}}
CALL_ADD = {"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 5}}}
CALL_WEATHER = {"type": "function", "function": {"name": "weather", "arguments": {"city": "巴黎"}}}
CONVERSATIONS = {
    "one user turn": ([{"role": "user", "content": "hi"}], None),
    "system and turns": (CHAT, None),
    "tools, calls, tool turns, thinking": (
        [
            {"role": "system", "content": "你是助手。"},
            {"role": "user", "content": "3+5? And the weather?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL_ADD, CALL_WEATHER]},
            {"role": "tool", "content": "8"},
            {"role": "tool", "content": "rain"},
            {"role": "assistant", "content": "Let me look again.", "tool_calls": [CALL_WEATHER, CALL_ADD]},
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "8"},
            {"role": "assistant", "content": "答案：8, sunny", "reasoning_content": "工具返回 8"},
            {"role": "user", "content": "thanks"},
        ],
        [ADD_TOOL, WEATHER_TOOL],
    ),
    "tools without a system prompt": (
        [{"role": "user", "content": "3+5?"}, {"role": "assistant", "content": "8", "reasoning_content": "3+5"}],
        [ADD_TOOL],
    ),
}


@pytest.mark.parametrize("messages, tools", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_ollama_template_renders_what_the_chat_template_renders(tokenizer, messages, tools):
    jinja = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert go_render(OLLAMA_TEMPLATE, ollama_data(messages, tools)) == jinja


@pytest.mark.parametrize("messages, tools", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_every_rendered_reply_parses_back_the_same_by_both_parsers(tokenizer, messages, tools):
    """The response template (read by TRL's tool loop) and `parse_reply` (training, chat, server) read each
    assistant turn the chat template writes back into the message it came from."""
    loaded = load_tokenizer(tokenizer.name_or_path)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = loaded.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        whole = loaded.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False)
        generated = whole[len(prefix) :].removesuffix("\n")
        expected = {"content": "", **message}
        assert {"content": "", **loaded.parse_response(generated, prefix=prefix)} == expected
        reply = parse_reply(generated.removesuffix(EOS)).message()
        assert [call.pop("id").startswith("call_") for call in reply.get("tool_calls", [])] == [True] * len(
            message.get("tool_calls", [])
        )
        assert reply == message
