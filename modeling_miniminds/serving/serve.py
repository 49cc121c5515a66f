"""An OpenAI-compatible server for a saved model, with a web chat page at `/` (pip install -e ".[serve]").

    python -m modeling_miniminds.serving.serve runs/sft --host 127.0.0.1 --port 8998
    python -m modeling_miniminds.serving.serve runs/sft --api_key "$KEY" --max_batch_size 16 --compile

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="unused")
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "hi"}], stream=True)

`transformers serve` cannot load a custom architecture, so MiniMinds serves itself: FastAPI routes, pydantic checks
the request (`schemas`), FastAPI's `EventSourceResponse` streams (it stops the body when the client disconnects)
and uvicorn speaks HTTP. Every refusal is OpenAI's `{"error": {message, type, param, code}}` with a 4xx status. One
worker thread owns the model (`worker.BatchWorker`). Thinking and tool calls come back as `reasoning_content` and
`tool_calls` (parsed by `tokenizer.replies`). Extensions to the OpenAI request: `top_k`, `repetition_penalty`, and
`chat_template_kwargs` with `enable_thinking` (as in vLLM).
"""

import asyncio
import contextlib
import copy
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException

from ..cli import FlagParser, command_main
from ..inference import SamplingParams
from ..tokenizer.replies import ReplyStream, parse_reply
from .options import add_model_args, build_generator
from .schemas import ChatRequest, RequestError, parse_request
from .worker import BatchWorker, Job


@dataclass
class Limits:
    max_prompt_tokens: int
    max_tokens: int = 2048
    default_max_tokens: int = 512
    max_body_bytes: int = 1 << 20
    max_queue: int = 256


def sse(data) -> bytes:
    """One server-sent event; OpenAI clients read `data: <json>` events and a final `data: [DONE]`."""
    return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))


class ChatServer:
    """Routes, prompt rendering and OpenAI response shapes around a BatchWorker."""

    def __init__(self, generator, model_name: str, limits: Limits, api_key: str | None = None, max_batch_size: int = 8):
        self.model_name, self.limits, self.api_key = model_name, limits, api_key
        # The event loop renders prompts with its own tokenizer, so it never shares one with the decoding thread.
        self.tokenizer = copy.deepcopy(generator.tokenizer)
        self.max_length = generator.max_length
        self.worker = BatchWorker(generator, max_batch_size)
        self.created = int(time.time())

    def app(self) -> FastAPI:
        handlers = {HTTPException: self.http_error, Exception: self.internal_error}
        app = FastAPI(
            lifespan=self.lifespan, exception_handlers=handlers, openapi_url=None, docs_url=None, redoc_url=None
        )
        app.add_api_route("/", self.page, methods=["GET"], response_class=HTMLResponse)
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """The decoding thread runs while the app does."""
        self.worker.start()
        yield
        self.worker.stop()

    async def http_error(self, request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return RequestError(message, None, code, exc.status_code).response()

    async def internal_error(self, request: Request, exc: Exception):
        return RequestError(f"internal error: {type(exc).__name__}", None, None, 500, "server_error").response()

    async def page(self):
        return HTMLResponse(resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8"))

    async def models(self, request: Request):
        if error := self.check_auth(request):
            return error.response()
        model = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "miniminds"}
        return JSONResponse({"object": "list", "data": [model]})

    def check_auth(self, request: Request) -> RequestError | None:
        """The API key, compared in constant time so its bytes cannot be guessed one by one from response times."""
        sent = request.headers.get("authorization", "").encode()
        if self.api_key and not hmac.compare_digest(sent, f"Bearer {self.api_key}".encode()):
            return RequestError(
                "missing or wrong API key (send 'Authorization: Bearer <key>')", None, "invalid_api_key", 401
            )
        return None

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 once it passes the limit (whatever Content-Length claims)."""
        declared = request.headers.get("content-length")
        limit = self.limits.max_body_bytes
        too_large = f"request body exceeds the limit of {limit} bytes"
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(
                f"request body of {declared} bytes exceeds the limit of {limit}", None, "body_too_large", 413
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(too_large, None, "body_too_large", 413)
        return bytes(body)

    def build_job(self, request: ChatRequest) -> Job:
        """The job for a valid request: checks what depends on this server (model, limits, context, queue)."""
        if request.model != self.model_name:
            raise RequestError(
                f"model {request.model!r} is not served here; this server has {self.model_name!r}",
                "model",
                "model_not_found",
                404,
            )
        max_tokens_name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        max_tokens = getattr(request, max_tokens_name)
        if max_tokens is not None and max_tokens > self.limits.max_tokens:
            raise RequestError(
                f"{max_tokens_name} must be between 1 and {self.limits.max_tokens}, got {max_tokens}",
                max_tokens_name,
                "invalid_value",
            )
        messages = [message.for_template() for message in request.messages]
        prompt_ids = self.render(messages, request.template_tools(), request.template_kwargs())
        room = (self.max_length or 1 << 62) - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise RequestError(
                f"{len(prompt_ids)} prompt tokens + {max_tokens_name} {max_tokens} exceed the context "
                f"of {self.max_length} tokens",
                max_tokens_name,
                "context_length_exceeded",
            )
        if self.worker.jobs.qsize() >= self.limits.max_queue:
            raise RequestError("too many queued requests, retry later", None, "server_busy", 429, "rate_limit_error")
        params = SamplingParams(
            max_new_tokens=max_tokens or min(self.limits.default_max_tokens, room),
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            seed=request.seed,
            stop=request.stop or [],
        )
        return Job(prompt_ids, params, asyncio.get_running_loop())

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
            body = parse_request(await self.read_body(request))
            job = self.build_job(body)
        except RequestError as err:
            return err.response()
        self.worker.submit(job)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self.stream_events(job, completion_id, created, include_usage)
            return EventSourceResponse(events, headers={"Cache-Control": "no-cache"})
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
        """Frees the job's slot when a non-streaming client goes away (streams are cancelled by the response)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled.set()

    async def stream_events(self, job: Job, completion_id: str, created: int, include_usage: bool):
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

        def chunk(delta: dict, finish_reason=None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return sse({**head, "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""})
        parser, calls, finish, tokens = ReplyStream(), [], None, 0
        try:
            async for delta in self.deltas(job):
                finish, tokens = delta.finish_reason, delta.completion_tokens
                for kind, value in parser.feed(delta.text) + (parser.finish() if finish else []):
                    if kind == "tool_call":
                        yield chunk({"tool_calls": [{"index": len(calls), **value}]})
                        calls.append(value)
                    else:
                        yield chunk({"reasoning_content" if kind == "reasoning" else "content": value})
        except Exception as err:
            yield sse(
                {"error": {"message": f"generation failed: {err}", "type": "server_error", "param": None, "code": None}}
            )
        else:
            yield chunk({}, self.finish_reason(finish, calls))
            if include_usage:
                yield sse({**head, "choices": [], "usage": self.usage(job, tokens)})
        yield sse("[DONE]")

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
    parser = FlagParser(description=__doc__)
    parser.add_argument("model_dir", help="saved model folder (MiniMinds or a Qwen3 export) with its tokenizer")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8998, help="the port to listen on")
    parser.add_argument("--model_name", default=None, help="the `model` clients send; None: the folder name")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY'; None: no key")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max_batch_size", type=int, default=8, help="requests decoded together")
    limits.add_argument("--max_prompt_tokens", type=int, default=None, help="None: the model's context - 1")
    limits.add_argument("--max_tokens", type=int, default=2048, help="largest max_tokens accepted")
    limits.add_argument("--default_max_tokens", type=int, default=512, help="max_tokens when a request sets none")
    limits.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body limit in bytes")
    limits.add_argument("--max_queue", type=int, default=256, help="queued requests before 429")
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


@command_main
def main(argv=None) -> int:
    import uvicorn

    args = parse_args(argv)
    server = build_server(build_generator(args), args)
    print(f"serving {server.model_name!r} on http://{args.host}:{args.port} (web chat at /)", flush=True)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
