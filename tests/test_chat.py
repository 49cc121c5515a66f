"""Terminal chat and reply parsing: thinking and tool calls split the same way streamed or whole, the chat keeps and
resets its history, and `python -m modeling_miniminds.serving.chat` answers one prompt or a piped conversation, on a
remote-code MiniMinds folder and on its Qwen3 export."""

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.export.convert import main as convert_main
from modeling_miniminds.inference import Delta, Generator, SamplingParams, chat_prompt_ids, load_for_decoding
from modeling_miniminds.serving.chat import Chat, parse_args
from modeling_miniminds.serving.chat import main as chat_main
from modeling_miniminds.tokenizer import ReplyStream, load_tokenizer, parse_reply

GREEDY = SamplingParams(max_new_tokens=8, temperature=0)
TOOL_JSON = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_generation.one_thread
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tiny_tokenizer_dir, tmp_path_factory):
    """A saved tiny MiniMind with the project tokenizer, and its Qwen3 export."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(root / "mm")
    tokenizer.save_pretrained(root / "mm")
    assert convert_main(["to-qwen3", str(root / "mm"), str(root / "qwen3")]) == 0
    return SimpleNamespace(minimind=root / "mm", qwen3=root / "qwen3")


@pytest.mark.parametrize(
    "text, content, reasoning, calls",
    [
        ("<think>\nadd them\n</think>\n\nThe answer is 5.", "The answer is 5.", "add them", []),
        ("<think>\ncut off mid-thought", "", "cut off mid-thought", []),
        (f"Let me check.\n<tool_call>\n{TOOL_JSON}\n</tool_call>", "Let me check.", None, ["get_weather"]),
        (
            f"<tool_call>\n{TOOL_JSON}\n</tool_call>\n<tool_call>\n{TOOL_JSON}\n</tool_call>",
            "",
            None,
            ["get_weather", "get_weather"],
        ),
        ("a <tool_call>\nnot json\n</tool_call> b", "a <tool_call>\nnot json\n</tool_call> b", None, []),
        ("no tags <thin", "no tags <thin", None, []),
    ],
)
def test_reply_parts_are_the_same_streamed_character_by_character_or_whole(text, content, reasoning, calls):
    reply = parse_reply(text)
    assert (reply.content, reply.reasoning_content) == (content, reasoning)
    assert [c["function"]["name"] for c in reply.tool_calls] == calls
    for call in reply.tool_calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    stream, events = ReplyStream(), []
    for character in text:
        events += stream.feed(character)
    events += stream.finish()
    streamed_content = "".join(v for k, v in events if k == "content").strip()
    assert streamed_content == content
    assert "".join(v for k, v in events if k == "reasoning") == (reasoning or "")
    assert [v["function"]["name"] for k, v in events if k == "tool_call"] == calls


def test_chat_keeps_history_renders_system_and_thinking_and_resets(folders):
    model, tokenizer = load_for_decoding(folders.minimind)
    out = io.StringIO()
    chat = Chat(Generator(model, tokenizer), GREEDY, system="Be brief.", out=out)
    first = chat.reply("hello")
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first.content}]
    prompt = tokenizer.decode(chat.prompt_ids())
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")  # no think block: SFT's chats render without one
    chat.reset()
    assert chat.history == [] and out.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("flags", "thinking", "prompt_end"),
    [
        ([], None, "<|im_start|>assistant\n"),
        (["--thinking"], True, "<|im_start|>assistant\n"),
        (["--no_thinking"], False, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ],
)
def test_thinking_flags_reach_the_template(folders, flags, thinking, prompt_end):
    """Without a flag nothing is passed, so the prompt is the one the held-out probes (and SFT) render."""
    args = parse_args([str(folders.minimind), *flags])
    assert args.thinking is thinking
    model, tokenizer = load_for_decoding(folders.minimind)
    generator = Generator(model, tokenizer)
    chat = Chat(generator, GREEDY, thinking=args.thinking)
    chat.history = [{"role": "user", "content": "hello"}]
    assert tokenizer.decode(chat.prompt_ids()).endswith(prompt_end)
    if thinking is None:
        assert chat.prompt_ids() == chat_prompt_ids(tokenizer, [chat.history])[0]


class ThinkingGenerator:
    """Streams a reply that thinks first, split where a tokenizer might split it."""

    max_length = 100

    def chat_prompt(self, messages, **template_kwargs):
        return [1, 2]

    def stream(self, prompts, params):
        for piece in ["<think>\n", "add", " them\n</", "think>\n\n", "It is", " 5."]:
            yield [Delta(0, piece)]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "out, shown", [(io.StringIO(), "add them\nIt is 5.\n"), (Terminal(), "\033[2madd them\033[0m\nIt is 5.\n")]
)
def test_thinking_is_shown_apart_and_kept_out_of_the_history(out, shown):
    chat = Chat(ThinkingGenerator(), GREEDY, thinking=True, out=out)
    chat.reply("2+3?")
    assert out.getvalue() == shown
    assert chat.history[-1] == {"role": "assistant", "content": "It is 5."}


def test_chat_drops_the_oldest_turns_when_the_context_is_full(folders):
    model, tokenizer = load_for_decoding(folders.minimind)
    generator = Generator(model, tokenizer)
    chat = Chat(generator, GREEDY, out=io.StringIO())
    chat.history = [{"role": "user", "content": "old " * 30}, {"role": "assistant", "content": "reply " * 30}]
    chat.history.append({"role": "user", "content": "new question"})
    last_turn = generator.chat_prompt(chat.history[-1:], enable_thinking=False)
    generator.max_length = len(last_turn) + GREEDY.max_new_tokens
    assert len(chat.prompt_ids()) + GREEDY.max_new_tokens <= generator.max_length
    assert chat.history == [{"role": "user", "content": "new question"}]


def test_qwen3_export_chats_like_the_minimind_folder(folders):
    """Same weights, same template: the greedy reply must not depend on which architecture serves it."""
    replies = []
    for folder in (folders.minimind, folders.qwen3):
        model, tokenizer = load_for_decoding(folder)
        replies.append(Chat(Generator(model, tokenizer), GREEDY, out=io.StringIO()).reply("hello"))
    assert type(load_for_decoding(folders.qwen3)[0]).__name__ == "Qwen3ForCausalLM"
    assert replies[0] == replies[1]


def run_chat(args, stdin=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "modeling_miniminds.serving.chat", *map(str, args), "--max_new_tokens", "6"]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_single_prompt_mode_answers_and_exits(folders):
    result = run_chat([folders.minimind, "--prompt", "hello", "--trust_remote_code", "--temperature", "0"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n") and "you>" not in result.stdout


def test_interactive_mode_reads_turns_until_exit(folders):
    result = run_chat([folders.qwen3, "--system", "Be brief.", "--seed", "0"], stdin="hello\n/reset\nhi again\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 2
    assert "(history cleared)" in result.stdout
    assert result.stdout.count("you> ") == 4  # hello, /reset, hi again, /exit


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    assert chat_main([str(tmp_path / "no-such-model"), "--prompt", "hi"]) == 1
    assert capsys.readouterr().err == f"error: model {tmp_path / 'no-such-model'}: no such file or folder\n"


@pytest.mark.parametrize("drafting", [["--prompt_lookup", "5"], ["--draft_model", "qwen3", "--draft_tokens", "3"]])
def test_speculative_flags_keep_the_greedy_reply(folders, capsys, drafting):
    """The draft model is the Qwen3 export of the same weights."""
    args = [str(folders.minimind), "--prompt", "hello hello hello", "--temperature", "0", "--max_new_tokens", "24"]
    assert chat_main(args) == 0
    plain = capsys.readouterr().out
    assert chat_main([*args, *(str(folders.qwen3) if a == "qwen3" else a for a in drafting)]) == 0
    assert capsys.readouterr().out == plain


def test_prompt_lookup_with_compile_is_one_line_error(folders, capsys):
    assert chat_main([str(folders.minimind), "--prompt", "hi", "--compile", "--prompt_lookup", "4"]) == 1
    err = capsys.readouterr().err  # after the weights' loading bar
    assert err.endswith("\n") and err.splitlines()[-1].startswith("error: speculative decoding")
    assert "Traceback" not in err


def test_missing_draft_model_is_one_line_error(folders, tmp_path, capsys):
    assert chat_main([str(folders.minimind), "--prompt", "hi", "--draft_model", str(tmp_path / "nothing")]) == 1
    message = f"error: --draft_model {tmp_path / 'nothing'}: no such file or folder"
    assert capsys.readouterr().err.splitlines()[-1] == message
