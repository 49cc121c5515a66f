"""An OpenAI-compatible server for a saved model, with a web chat page at `/` (pip install -e ".[serve]").

    python -m modeling_miniminds.serving.serve runs/sft --host 127.0.0.1 --port 8998
    python -m modeling_miniminds.serving.serve runs/sft --api_key "$KEY" --max_batch_size 16 --compile

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="unused")
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "hi"}], stream=True)

`transformers serve` cannot load a custom architecture, so MiniMinds serves itself: Starlette routes and streams
(its StreamingResponse cancels the body when the client disconnects) and uvicorn speaks HTTP. Requests are checked
by hand so that every error is OpenAI's `{"error": {message, type, param, code}}` with a 4xx status. One worker
thread owns the model: it takes up to `--max_batch_size` queued requests, decodes them as one batch with
`generation.Generator`, and streams each its own text; requests that arrive meanwhile wait for the next batch, and a
request whose client went away is dropped from its batch at the next token. Thinking and tool calls come back as
`reasoning_content` and `tool_calls` (parsed by `chat.ReplyStream`). Extensions to the OpenAI request: `top_k`,
`repetition_penalty`, and `chat_template_kwargs` with `enable_thinking` (as in vLLM).
"""

import argparse
import asyncio
import contextlib
import copy
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from .chat import ReplyStream, add_model_args, parse_reply
from ..inference import FINISH_CANCELLED, Delta, SamplingParams

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_STRINGS = 4


class RequestError(Exception):
    """A request the server refuses: HTTP status and the OpenAI error fields."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def response(self) -> JSONResponse:
        body = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


@dataclass
class Limits:
    max_prompt_tokens: int
    max_tokens: int = 2048
    default_max_tokens: int = 512
    max_body_bytes: int = 1 << 20
    max_queue: int = 256


@dataclass
class Job:
    """One request between the event loop and the worker: deltas flow back through `deltas`."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item):
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)


class BatchWorker:
    """The only thread that touches the model: decodes queued jobs in batches of up to `max_batch_size`."""

    def __init__(self, generator, max_batch_size: int = 8):
        self.generator, self.max_batch_size = generator, max_batch_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stats = {"batches": 0, "largest_batch": 0, "cancelled": 0, "running": 0}
        self.thread = threading.Thread(target=self.run, name="miniminds-decoder", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job):
        self.jobs.put(job)

    def next_batch(self) -> list[Job] | None:
        """Block for one job, then take whatever else is already queued (None when told to stop)."""
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch_size:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def run(self):
        while (batch := self.next_batch()) is not None:
            for job in batch:
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    job.put(Delta(0, "", FINISH_CANCELLED))
            batch = [job for job in batch if not job.cancelled.is_set()]
            if batch:
                self.decode(batch)

    def decode(self, batch: list[Job]):
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        self.stats["running"] = len(batch)
        try:
            stream = self.generator.stream(
                [job.prompt_ids for job in batch],
                [job.params for job in batch],
                cancelled=lambda i: batch[i].cancelled.is_set(),
            )
            for deltas in stream:
                for delta in deltas:
                    if delta.finish_reason == FINISH_CANCELLED:
                        self.stats["cancelled"] += 1
                    batch[delta.index].put(delta)
        except Exception as err:  # the batch fails, the server does not: each request gets the error
            for job in batch:
                job.put(err)
        finally:
            self.stats["running"] = 0


def _type_error(param: str, expected: str, value) -> RequestError:
    return RequestError(f"{param} must be {expected}, got {json.dumps(value)[:80]}", param, "invalid_type")


def _number(body: dict, name: str, low: float, high: float, integer: bool = False, default=None):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _type_error(name, "an integer" if integer else "a number", value)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}", name, "invalid_value")
    return value


def _text(content, param: str) -> str:
    """Message content: a string, or a list of text parts (images and audio are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(
                    f"{param}[{i}] must be a text part {{'type': 'text', 'text': ...}}", f"{param}[{i}]", "invalid_type"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _type_error(param, "a string or a list of text parts", content)


def _names_a_function(entry) -> bool:
    """A tool or tool call: `{"function": {"name": str, ...}, ...}`."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("function"), dict)
        and isinstance(entry["function"].get("name"), str)
    )


def check_messages(messages) -> list[dict]:
    """The messages as the chat template reads them, or a RequestError naming the first bad field."""
    if not isinstance(messages, list):
        raise _type_error("messages", "a list", messages)
    if not messages:
        raise RequestError("messages must hold at least one message", "messages", "invalid_value")
    checked = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(param, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"{param}.role must be one of {list(ROLES)}, got {role!r}", f"{param}.role", "invalid_value"
            )
        tool_calls = message.get("tool_calls") if role == "assistant" else None
        content = message.get("content")
        if content is None and tool_calls:
            content = ""
        entry = {"role": role, "content": _text(content, f"{param}.content")}
        if tool_calls is not None:
            if not isinstance(tool_calls, list) or not all(map(_names_a_function, tool_calls)):
                raise _type_error(f"{param}.tool_calls", "a list of {'function': {'name', 'arguments'}}", tool_calls)
            entry["tool_calls"] = tool_calls
        checked.append(entry)
    return checked


def check_tools(body: dict) -> list[dict] | None:
    tools = body.get("tools")
    if tools is None or body.get("tool_choice") == "none":
        return None
    if not isinstance(tools, list) or not all(
        _names_a_function(t) and t.get("type", "function") == "function" for t in tools
    ):
        raise _type_error("tools", "a list of {'type': 'function', 'function': {'name', ...}}", tools)
    return [tool["function"] for tool in tools] or None


def check_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _type_error("stop", "a string or a list of strings", stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop", "invalid_value")
    return stops


def check_template_kwargs(body: dict) -> dict:
    """Only `enable_thinking`: other names would reach `apply_chat_template` itself (tokenize, return_tensors...)."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _type_error("chat_template_kwargs", "an object", kwargs)
    if set(kwargs) - {"enable_thinking"}:
        raise RequestError(
            f"chat_template_kwargs takes only enable_thinking, got {sorted(kwargs)}",
            "chat_template_kwargs",
            "invalid_value",
        )
    if "enable_thinking" in kwargs and not isinstance(kwargs["enable_thinking"], bool):
        raise _type_error("chat_template_kwargs.enable_thinking", "a boolean", kwargs["enable_thinking"])
    return kwargs


class ChatServer:
    """Request checking, prompt rendering and OpenAI response shapes around a BatchWorker."""

    def __init__(self, generator, model_name: str, limits: Limits, api_key: str | None = None, max_batch_size: int = 8):
        self.model_name, self.limits, self.api_key = model_name, limits, api_key
        # The event loop renders prompts with its own tokenizer, so it never shares one with the decoding thread.
        self.tokenizer = copy.deepcopy(generator.tokenizer)
        self.max_length = generator.max_length
        self.worker = BatchWorker(generator, max_batch_size)
        self.created = int(time.time())

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        handlers = {HTTPException: self.http_error, Exception: self.internal_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """The decoding thread runs while the app does."""
        self.worker.start()
        yield
        self.worker.stop()

    async def http_error(self, request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return RequestError(message, None, code, exc.status_code).response()

    async def internal_error(self, request, exc: Exception):
        return RequestError(f"internal error: {type(exc).__name__}", None, None, 500, "server_error").response()

    async def page(self, request: Request):
        return HTMLResponse(resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8"))

    async def models(self, request: Request):
        if error := self.check_auth(request):
            return error.response()
        model = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "miniminds"}
        return JSONResponse({"object": "list", "data": [model]})

    def check_auth(self, request: Request) -> RequestError | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return RequestError(
                "missing or wrong API key (send 'Authorization: Bearer <key>')", None, "invalid_api_key", 401
            )
        return None

    async def read_json(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestError(
                f"request body of {declared} bytes exceeds the limit of {self.limits.max_body_bytes}",
                None,
                "body_too_large",
                413,
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limits.max_body_bytes:
                raise RequestError(
                    f"request body exceeds the limit of {self.limits.max_body_bytes} bytes", None, "body_too_large", 413
                )
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise RequestError(f"the body is not valid JSON: {err}", None, "invalid_json") from err
        if not isinstance(data, dict):
            raise _type_error("body", "a JSON object", data)
        return data

    def build_job(self, body: dict) -> tuple[Job, dict]:
        """The job for a checked request, and the response options (stream, include_usage)."""
        model = body.get("model")
        if not isinstance(model, str):
            raise _type_error("model", "a string", model)
        if model != self.model_name:
            raise RequestError(
                f"model {model!r} is not served here; this server has {self.model_name!r}",
                "model",
                "model_not_found",
                404,
            )
        messages = check_messages(body.get("messages"))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _type_error("stream", "a boolean", stream)
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise _type_error("stream_options", "an object", stream_options)
        if _number(body, "n", 1, 1 << 31, integer=True, default=1) != 1:
            raise RequestError("n must be 1 (one choice per request)", "n", "invalid_value")
        max_tokens_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _number(body, max_tokens_name, 1, self.limits.max_tokens, integer=True)
        params = dict(
            temperature=_number(body, "temperature", 0, 2, default=1.0),
            top_p=_number(body, "top_p", 0, 1, default=1.0),
            top_k=_number(body, "top_k", 0, 1 << 31, integer=True, default=0),
            repetition_penalty=_number(body, "repetition_penalty", 0.01, 100, default=1.0),
            seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True),
            stop=check_stop(body),
        )
        if params["top_p"] == 0:
            raise RequestError("top_p must be greater than 0", "top_p", "invalid_value")
        prompt_ids = self.render(messages, check_tools(body), check_template_kwargs(body))
        room = (self.max_length or 1 << 62) - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise RequestError(
                f"{len(prompt_ids)} prompt tokens + {max_tokens_name} {max_tokens} exceed the context "
                f"of {self.max_length} tokens",
                max_tokens_name,
                "context_length_exceeded",
            )
        params["max_new_tokens"] = max_tokens or min(self.limits.default_max_tokens, room)
        if self.worker.jobs.qsize() >= self.limits.max_queue:
            raise RequestError("too many queued requests, retry later", None, "server_busy", 429, "rate_limit_error")
        job = Job(prompt_ids, SamplingParams(**params), asyncio.get_running_loop())
        return job, {"stream": stream, "include_usage": bool(stream_options.get("include_usage"))}

    def render(self, messages, tools, template_kwargs) -> list[int]:
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False, **template_kwargs
            )
        except Exception as err:  # a template that rejects this conversation (e.g. no user turn)
            raise RequestError(f"the chat template cannot render these messages: {err}", "messages") from err
        limit = min(self.limits.max_prompt_tokens, (self.max_length or 1 << 62) - 1)
        if len(ids) > limit:
            raise RequestError(
                f"the prompt has {len(ids)} tokens, more than the limit of {limit}",
                "messages",
                "context_length_exceeded",
            )
        return ids

    async def chat_completions(self, request: Request):
        try:
            if error := self.check_auth(request):
                raise error
            job, options = self.build_job(await self.read_json(request))
        except RequestError as err:
            return err.response()
        self.worker.submit(job)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if options["stream"]:
            chunks = self.stream_chunks(job, completion_id, created, options["include_usage"])
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await self.complete(request, job, completion_id, created)

    async def deltas(self, job: Job):
        """The job's deltas until its last; cancels the job if the consumer stops early (client gone)."""
        try:
            while True:
                item = await job.deltas.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()

    async def complete(self, request: Request, job: Job, completion_id: str, created: int):
        watcher = asyncio.create_task(self.cancel_on_disconnect(request, job))
        text, finish, tokens = [], None, 0
        try:
            async for delta in self.deltas(job):
                text.append(delta.text)
                finish, tokens = delta.finish_reason, delta.completion_tokens
        except Exception as err:
            return RequestError(f"generation failed: {err}", None, None, 500, "server_error").response()
        finally:
            watcher.cancel()
        reply = parse_reply("".join(text))
        message = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
        if reply.reasoning_content is not None:
            message["reasoning_content"] = reply.reasoning_content
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        finish_reason = self.finish_reason(finish, reply.tool_calls)
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        head = {"id": completion_id, "object": "chat.completion", "created": created, "model": self.model_name}
        return JSONResponse({**head, "choices": [choice], "usage": self.usage(job, tokens)})

    @staticmethod
    async def cancel_on_disconnect(request: Request, job: Job):
        """Frees the job's slot when a non-streaming client goes away (streams are cancelled by Starlette)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled.set()

    async def stream_chunks(self, job: Job, completion_id: str, created: int, include_usage: bool):
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return f"data: {json.dumps({**head, 'choices': [choice], **extra}, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        parser, calls, finish, tokens = ReplyStream(), [], None, 0
        try:
            async for delta in self.deltas(job):
                finish, tokens = delta.finish_reason, delta.completion_tokens
                events = parser.feed(delta.text) + (parser.finish() if finish else [])
                for kind, value in events:
                    if kind == "tool_call":
                        yield chunk({"tool_calls": [{"index": len(calls), **value}]})
                        calls.append(value)
                    else:
                        yield chunk({"reasoning_content" if kind == "reasoning" else "content": value})
        except Exception as err:
            error = {"message": f"generation failed: {err}", "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        else:
            yield chunk({}, self.finish_reason(finish, calls))
            if include_usage:
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': self.usage(job, tokens)})}\n\n"
        yield "data: [DONE]\n\n"

    @staticmethod
    def finish_reason(finish: str | None, tool_calls) -> str:
        return "tool_calls" if tool_calls and finish == "stop" else (finish or "stop")

    @staticmethod
    def usage(job: Job, completion_tokens: int) -> dict:
        prompt = len(job.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="saved model folder (MiniMinds or a Qwen3 export) with its tokenizer")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--model_name", default=None, help="the `model` clients send (default: the folder name)")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' (default: no key)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max_batch_size", type=int, default=8, help="requests decoded together (default: 8)")
    limits.add_argument("--max_prompt_tokens", type=int, default=None, help="default: the model's context - 1")
    limits.add_argument("--max_tokens", type=int, default=2048, help="largest max_tokens accepted (default: 2048)")
    limits.add_argument("--default_max_tokens", type=int, default=512, help="when a request sets none (default: 512)")
    limits.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body limit (default: 1 MiB)")
    limits.add_argument("--max_queue", type=int, default=256, help="queued requests before 429 (default: 256)")
    add_model_args(parser)
    return parser.parse_args(argv)


def build_server(generator, args) -> ChatServer:
    max_length = generator.max_length or 1 << 31
    limits = Limits(
        max_prompt_tokens=args.max_prompt_tokens or max_length - 1,
        max_tokens=args.max_tokens,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
    )
    name = args.model_name or Path(args.model_dir).resolve().name
    return ChatServer(generator, name, limits, args.api_key, args.max_batch_size)


def main(argv=None) -> int:
    import uvicorn

    from .chat import build_generator

    args = parse_args(argv)
    try:
        server = build_server(build_generator(args), args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"serving {server.model_name!r} on http://{args.host}:{args.port} (web chat at /)", flush=True)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
