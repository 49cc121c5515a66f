"""The OpenAI chat-completion request as pydantic models, and the OpenAI error a refused request gets.

Validation is strict (no "10" for 10, no 1.5 for an integer) and every pydantic error becomes OpenAI's
`{"error": {message, type, param, code}}` with status 400: `param` is the field's path (`messages[0].role`) and
`code` says whether the value had the wrong type (`invalid_type`), was out of range (`invalid_value`) or the body was
not JSON (`invalid_json`). Fields OpenAI defines that this server does not use are accepted and ignored.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from starlette.responses import JSONResponse

MAX_STOP_STRINGS = 4
TYPE_ERRORS = {"model_type", "model_attributes_type", "int_from_float", "is_instance_of"}


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


def _join_text_parts(content):
    """Message content as one string: a list of text parts is joined (images and audio are refused)."""
    if not isinstance(content, list):
        return content
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise PydanticCustomError(
                "invalid_type", "part {i} must be a text part {{'type': 'text', 'text': ...}}", {"i": i}
            )
    return "".join(part["text"] for part in content)


def _as_list(value):
    return [value] if isinstance(value, str) else value


class Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class Function(Strict):
    model_config = ConfigDict(strict=True, extra="allow")

    name: str


class ToolCall(Strict):
    model_config = ConfigDict(strict=True, extra="allow")

    function: Function


class Tool(Strict):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["function"] = "function"
    function: Function


class Message(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str | None, BeforeValidator(_join_text_parts)] = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def needs_content(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError("invalid_type", "content must be a string or a list of text parts")
        return self

    def for_template(self) -> dict:
        """The message as the chat template reads it."""
        entry = {"role": self.role, "content": self.content or ""}
        if self.role == "assistant" and self.tool_calls is not None:
            entry["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return entry


class StreamOptions(Strict):
    include_usage: bool = False


class TemplateKwargs(Strict):
    """Only `enable_thinking` (as in vLLM): other names would reach `apply_chat_template` itself (tokenize...)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    enable_thinking: bool | None = None


class ChatRequest(Strict):
    """The fields of `POST /v1/chat/completions` this server reads; `top_k` and `repetition_penalty` are extensions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 63) - 1)
    stop: Annotated[list[str], BeforeValidator(_as_list), Field(max_length=MAX_STOP_STRINGS)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None
    chat_template_kwargs: TemplateKwargs | None = None

    def template_tools(self) -> list[dict] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.function.model_dump() for tool in self.tools]

    def template_kwargs(self) -> dict:
        return (self.chat_template_kwargs or TemplateKwargs()).model_dump(exclude_none=True)


def _param(loc: tuple) -> str | None:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or None


def request_error(err: ValidationError) -> RequestError:
    """The OpenAI error for the first problem pydantic found."""
    error = err.errors()[0]
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        return RequestError(f"the body is not valid JSON: {error['msg']}", None, "invalid_json")
    message = error["msg"]
    if kind == "extra_forbidden":
        loc, message = loc[:-1], f"{message}: {loc[-1]!r}"
    param = _param(loc) or "body"
    wrong_type = kind == "invalid_type" or kind.endswith("_type") or kind in TYPE_ERRORS
    return RequestError(f"{param}: {message}", param, "invalid_type" if wrong_type else "invalid_value")


def parse_request(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as err:
        raise request_error(err) from err
