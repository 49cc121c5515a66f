"""The calculator as a tool a policy calls while it answers, and the held-out numbers of tool use.

`calculator` is the function TRL's GRPOTrainer is given (`tools=[calculator]`): TRL renders its name, type hints
and docstring into the prompt, parses `<tool_call>` blocks out of each reply with the tokenizer's response template
(`modeling_miniminds.tokenizer.RESPONSE_TEMPLATE`), runs the call, appends a tool message and lets the policy go on.
It wraps `data_process.tools.calculator`, the safe evaluator the SFT data was made with, and answers a bad expression
with an error message instead of raising, so the policy reads what went wrong.

`tool_loop_transcripts` runs the same loop greedily at evaluation time: generate, parse the tool calls (the project's
`parse_reply`, as chat and the server do), run them,
append the tool messages, generate again, at most `max_iterations` times. `tool_metrics` scores the transcripts:
`tool_call_rate`, the share of replies that call the calculator, and `tool_accuracy`, the share whose final answer
is right; `heldout_tool_metrics` adds `no_tool_accuracy`, the same questions answered without the tool.
"""

from data_process.rewards import answers_match, extract_answer
from data_process.tools import CalculatorError
from data_process.tools import calculator as evaluate
from modeling_miniminds.inference import chat_prompt_ids, generate_completions
from modeling_miniminds.tokenizer import parse_reply
from recipes.training.evaluation import eval_mode
from recipes.training.intervals import ITEMS


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses; returns the result.

    Args:
        expression: The expression, e.g. 123 * (45 - 6).
    """
    try:
        return evaluate(expression)
    except CalculatorError as err:
        return f"error: {err}"


TOOLS = {"calculator": calculator}


def run_tool_call(call: dict, tools: dict) -> dict:
    """The tool message answering one parsed call; an unknown tool or bad arguments get an error message."""
    function = call.get("function") or {}
    name, arguments = function.get("name", "unknown"), function.get("arguments")
    if name not in tools:
        content = f"error: unknown tool {name!r}; available: {', '.join(tools)}"
    elif not isinstance(arguments, dict):
        content = f"error: arguments must be a JSON object, got {arguments!r}"
    else:
        try:
            content = str(tools[name](**arguments))
        except TypeError as err:
            content = f"error: {err}"
    return {"role": "tool", "name": name, "content": content}


def tool_loop_transcripts(
    model,
    tokenizer,
    conversations: list[list[dict]],
    tools: dict | list[dict] | None = None,
    max_new_tokens: int = 64,
    max_iterations: int = 2,
    batch_size: int = 32,
) -> list[list[dict]]:
    """The messages each conversation gains when the model answers greedily with `tools` at hand (one name ->
    function dict for all, or one per conversation: agent records each offer their own): assistant turns, each tool
    call followed by its tool message, at most `max_iterations` rounds of calls. The last message is always the
    model's (calls in it past the limit are not run). `max_new_tokens` bounds each assistant turn."""
    tools = TOOLS if tools is None else tools
    toolsets = tools if isinstance(tools, list) else [tools] * len(conversations)
    transcripts = [[] for _ in conversations]
    active = list(range(len(conversations)))
    with eval_mode(model):
        for iteration in range(max_iterations + 1):
            prompts = [
                chat_prompt_ids(
                    tokenizer, [conversations[i] + transcripts[i]], tools=list(toolsets[i].values()) or None
                )[0]
                for i in active
            ]
            replies = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
            still_calling = []
            for i, reply in zip(active, replies):
                message = parse_reply(reply.text).message()
                transcripts[i].append(message)
                if message.get("tool_calls") and iteration < max_iterations:
                    transcripts[i] += [run_tool_call(call, toolsets[i]) for call in message["tool_calls"]]
                    still_calling.append(i)
            active = still_calling
            if not active:
                break
    return transcripts


def calls_tool(transcript: list[dict], name: str = "calculator") -> bool:
    return any(
        call.get("function", {}).get("name") == name
        for message in transcript
        for call in message.get("tool_calls") or []
    )


def final_reply(transcript: list[dict]) -> str:
    """The text of the last assistant message, which states the answer."""
    replies = [m.get("content") or "" for m in transcript if m.get("role", "assistant") == "assistant"]
    return replies[-1] if replies else ""


def without_call_ids(transcript: list[dict]) -> list[dict]:
    """The transcript with its tool calls' random ids left out, so a rerun's report reads the same."""
    return [
        {**m, "tool_calls": [{k: v for k, v in c.items() if k != "id"} for c in m["tool_calls"]]}
        if m.get("tool_calls")
        else m
        for m in transcript
    ]


def tool_metrics(transcripts: list[list[dict]], answers: list[str], num_samples: int = 3) -> dict:
    """`tool_call_rate` (share of replies that call the calculator), `tool_accuracy` (share whose final answer
    equals `answer`), `tool_calls` (calls per reply) and a few transcripts for a report."""
    if not transcripts or len(transcripts) != len(answers):
        raise ValueError(f"tool_metrics needs one answer per transcript, got {len(transcripts)} and {len(answers)}")
    called = [calls_tool(t) for t in transcripts]
    right = [answers_match(extract_answer(final_reply(t)), a) for t, a in zip(transcripts, answers)]
    calls = [len(m.get("tool_calls") or []) for t in transcripts for m in t]
    return {
        "tool_call_rate": round(sum(called) / len(called), 4),
        "tool_accuracy": round(sum(right) / len(right), 4),
        "tool_calls": round(sum(calls) / len(transcripts), 4),
        "tool_samples": [
            {"answer": a, "transcript": without_call_ids(t)} for t, a in list(zip(transcripts, answers))[:num_samples]
        ],
        ITEMS: {"tool_call_rate": [int(c) for c in called], "tool_accuracy": [int(r) for r in right]},
    }


def heldout_tool_metrics(
    model, tokenizer, records: list[dict], max_new_tokens: int = 64, max_iterations: int = 2, num_samples: int = 3
) -> dict:
    """Tool-use numbers on held-out `rl` records (e.g. eval/rl_tools.jsonl), answered with the calculator, and
    `no_tool_accuracy`: the same questions answered greedily with no tool offered, what the tool is measured
    against."""
    from recipes.training.rl import as_messages

    conversations = [as_messages(r["prompt"]) for r in records]
    answers = [r["answer"] for r in records]
    transcripts = tool_loop_transcripts(model, tokenizer, conversations, TOOLS, max_new_tokens, max_iterations)
    # The same loop with no tool offered and no round of calls: one greedy reply, scored as tool_accuracy is.
    unaided = tool_metrics(tool_loop_transcripts(model, tokenizer, conversations, {}, max_new_tokens, 0), answers)
    metrics = tool_metrics(transcripts, answers, num_samples)
    metrics[ITEMS]["no_tool_accuracy"] = unaided[ITEMS]["tool_accuracy"]
    return metrics | {"no_tool_accuracy": unaided["tool_accuracy"]}
