"""The OpenAI-compatible server, driven by the official `openai` client and by raw HTTP on 127.0.0.1: response and
SSE chunk shapes, usage, stop/seed/max tokens, tools and thinking parsed into `tool_calls` and `reasoning_content`,
20 concurrent requests batched, a client that hangs up mid-stream freeing its slot, an API key, and every malformed
request answered with an OpenAI error and a 4xx status, after which the server keeps serving.

Servers run in this process (uvicorn in a thread, a free port) so tests can read the worker's counters; a scripted
generator stands in for the model where the reply must be known (a tiny random model only writes gibberish)."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import TIMEOUT, ScriptedGenerator, raw_request, running_server, wait_until

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.inference import Generator, load_for_decoding
from modeling_miniminds.tokenizer import load_tokenizer

openai = pytest.importorskip("openai", reason="the server tests use the official client: pip install openai")
pytest.importorskip("uvicorn", reason="the server needs its extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[serve]'")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def client_for(served, api_key="unused"):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_generation.one_thread
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_folder(tokenizer, tmp_path_factory):
    """A saved tiny random MiniMind."""
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    model, folder_tokenizer = load_for_decoding(tiny_folder)
    with running_server(Generator(model, folder_tokenizer)) as served:
        yield served


@pytest.fixture(scope="module")
def scripted(tokenizer):
    with running_server(ScriptedGenerator(tokenizer)) as served:
        yield served


def chat(client, **kwargs):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], **kwargs)


def test_models_lists_the_served_model(tiny):
    assert [m.id for m in client_for(tiny).models.list().data] == ["tiny"]


def test_completion_has_openai_shape_and_exact_usage(tiny, tokenizer):
    response = chat(client_for(tiny), max_tokens=3, temperature=0)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)[
        "input_ids"
    ]
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion" and response.model == "tiny"
    choice = response.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert (choice.finish_reason, response.usage.completion_tokens) == ("length", 3)


def test_max_completion_tokens_limits_the_reply(tiny):
    response = chat(client_for(tiny), max_completion_tokens=2, temperature=0)
    assert (response.choices[0].finish_reason, response.usage.completion_tokens) == ("length", 2)


def test_stream_chunks_carry_ids_and_end_with_done(tiny):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, text = raw_request(tiny, "POST", "/v1/chat/completions", json.dumps(body))
    assert status == 200
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" and c["created"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_a_drafting_server_replies_like_the_plain_one(tiny, tiny_folder):
    """Speculative decoding (here the served model drafts for itself) changes no reply, streamed or whole."""
    model, folder_tokenizer = load_for_decoding(tiny_folder)
    drafting = Generator(model, folder_tokenizer, draft_model=model, draft_tokens=3)
    with running_server(drafting) as served:
        for options in ({"max_tokens": 20, "temperature": 0}, {"max_tokens": 20, "seed": 3}):
            expected = chat(client_for(tiny), **options).choices[0].message.content
            assert chat(client_for(served), **options).choices[0].message.content == expected
            streamed = [
                c.choices[0].delta.content or "" for c in chat(client_for(served), stream=True, **options) if c.choices
            ]
            assert "".join(streamed).strip() == expected
    assert drafting.accepted > 0


def test_stream_text_equals_the_non_streamed_reply(tiny):
    client = client_for(tiny)
    whole = chat(client, max_tokens=6, seed=3).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in chat(client, max_tokens=6, seed=3, stream=True) if c.choices]
    assert whole and "".join(pieces).strip() == whole  # the whole reply is stripped of surrounding whitespace


def test_stop_strings_and_seed_reach_the_sampler(tiny):
    client = client_for(tiny)
    sampled = [chat(client, max_tokens=8, seed=11).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1] != chat(client, max_tokens=8, seed=12).choices[0].message.content
    full = sampled[0]
    stop = full[4:6]
    assert stop.strip(), f"the sampled reply {full!r} has no usable middle"
    cut = chat(client, max_tokens=8, seed=11, stop=[stop]).choices[0]
    assert (cut.message.content, cut.finish_reason) == (full[: full.index(stop)].strip(), "stop")


def test_tools_reach_the_template_and_tool_calls_and_thinking_come_back(scripted):
    client = client_for(scripted)
    response = chat(client, tools=[WEATHER_TOOL])
    prompt = scripted.server.tokenizer.decode(scripted.server.worker.generator.prompts[-1])
    assert "# Tools" in prompt and '"name": "get_weather"' in prompt
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert choice.message.model_extra["reasoning_content"] == "The user wants weather."
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


def test_text_parts_are_joined_and_unknown_openai_fields_ignored(scripted):
    parts = [{"type": "text", "text": "sunny "}, {"type": "text", "text": "Paris?"}]
    response = client_for(scripted).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": parts}], frequency_penalty=0.5, user="someone"
    )
    assert response.choices[0].finish_reason == "tool_calls"
    assert "<|im_start|>user\nsunny Paris?<|im_end|>" in scripted.server.tokenizer.decode(
        scripted.server.worker.generator.prompts[-1]
    )


def test_streamed_tool_calls_and_thinking(scripted):
    chunks = list(chat(client_for(scripted), tools=[WEATHER_TOOL], stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "The user wants weather."
    assert "".join(d.content or "" for d in deltas).strip() == "Checking."
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert [(c.index, c.function.name) for c in calls] == [(0, "get_weather")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_twenty_concurrent_requests_all_answered_in_batches(tiny):
    client = client_for(tiny)

    def ask(i):
        if i % 2:
            return chat(client, max_tokens=4, temperature=0).usage.completion_tokens
        return sum(
            1
            for c in chat(client, max_tokens=4, temperature=0, stream=True)
            if c.choices and c.choices[0].finish_reason
        )

    batches_before = tiny.server.worker.stats["batches"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(ask, range(20), timeout=TIMEOUT * 2))
    assert all(r >= 1 for r in results)
    assert tiny.server.worker.stats["largest_batch"] > 1
    assert tiny.server.worker.stats["batches"] - batches_before < 20


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "waiting-for-json"])
def test_client_that_hangs_up_frees_its_slot(tiny, monkeypatch, stream):
    worker = tiny.server.worker
    monkeypatch.setattr(worker.generator, "stop_ids", set())  # the reply cannot end by itself before 1500 tokens
    cancelled = worker.stats["cancelled"]
    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500, "stream": stream}
    )
    with socket.create_connection(("127.0.0.1", tiny.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        received = b""
        while stream and received.count(b"data: ") < 3:
            received += sock.recv(4096)
        wait_until(lambda: worker.stats["running"], "the request never started decoding")
    wait_until(
        lambda: worker.stats["cancelled"] > cancelled and not worker.stats["running"],
        "the abandoned request kept decoding",
    )
    assert chat(client_for(tiny), max_tokens=2).usage.completion_tokens >= 1


BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "tiny", "messages": [', 400, None, "invalid_json"),
    ("body not an object", b"[1, 2]", 400, "body", "invalid_type"),
    ("unknown model", {"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ("model not a string", {"model": 3}, 400, "model", "invalid_type"),
    ("empty messages", {"messages": []}, 400, "messages", "invalid_value"),
    ("messages not a list", {"messages": "hello"}, 400, "messages", "invalid_type"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "invalid_type"),
    (
        "image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages[0].content",
        "invalid_type",
    ),
    ("top_p zero", {"top_p": 0}, 400, "top_p", "invalid_value"),
    ("temperature a string", {"temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("temperature too high", {"temperature": 9}, 400, "temperature", "invalid_value"),
    ("max_tokens a string", {"max_tokens": "10"}, 400, "max_tokens", "invalid_type"),
    ("max_tokens over the limit", {"max_tokens": 100000}, 400, "max_tokens", "invalid_value"),
    ("stream not a boolean", {"stream": "yes"}, 400, "stream", "invalid_type"),
    ("too many stop strings", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ("seed a float", {"seed": 1.5}, 400, "seed", "invalid_type"),
    ("n above 1", {"n": 2}, 400, "n", "invalid_value"),
    ("tools not a list", {"tools": {"name": "x"}}, 400, "tools", "invalid_type"),
    ("template argument", {"chat_template_kwargs": {"tokenize": False}}, 400, "chat_template_kwargs", "invalid_value"),
    (
        "thinking not a boolean",
        {"chat_template_kwargs": {"enable_thinking": "no"}},
        400,
        "chat_template_kwargs.enable_thinking",
        "invalid_type",
    ),
    ("nested too deep", b"[" * 30_000 + b"]" * 30_000, 400, None, "invalid_json"),
    (
        "over-long prompt",
        {"messages": [{"role": "user", "content": "word " * 1000}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    ("body too large", {"messages": [{"role": "user", "content": "x" * 70_000}]}, 413, None, "body_too_large"),
]


@pytest.mark.parametrize("case, body, status, param, code", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_openai_error_and_4xx(tiny, case, body, status, param, code):
    if isinstance(body, dict):
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **body}).encode()
    got_status, error = raw_request(tiny, "POST", "/v1/chat/completions", body)
    assert got_status == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["message"]
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)


def test_unknown_route_and_wrong_method_are_json_errors_and_serving_goes_on(tiny):
    status, error = raw_request(tiny, "GET", "/v1/nothing")
    assert status == 404 and error["error"]["code"] == "not_found"
    status, error = raw_request(tiny, "GET", "/v1/chat/completions")
    assert status == 405 and error["error"]["code"] == "method_not_allowed"
    assert chat(client_for(tiny), max_tokens=1).usage.completion_tokens == 1


def test_api_key_is_required_when_set(tokenizer):
    with running_server(ScriptedGenerator(tokenizer), api_key="sesame") as served:
        with pytest.raises(openai.AuthenticationError):
            client_for(served, api_key="wrong").models.list()
        status, error = raw_request(served, "POST", "/v1/chat/completions", b"{}")
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        assert chat(client_for(served, api_key="sesame")).choices[0].finish_reason == "tool_calls"
        assert raw_request(served, "GET", "/")[0] == 200  # the page asks for the key itself


def test_missing_model_folder_is_one_line_error(tmp_path, capsys):
    from modeling_miniminds.serving.serve import main as serve_main  # after the importorskip of the serve extra

    assert serve_main([str(tmp_path / "no-such-model")]) == 1
    assert capsys.readouterr().err == f"error: model {tmp_path / 'no-such-model'}: no such file or folder\n"
