"""The calculator as a tool a policy calls while it answers, and the held-out numbers of tool use.

`calculator` is the function TRL's GRPOTrainer is given (`tools=[calculator]`): TRL renders its name, type hints
and docstring into the prompt, parses `<tool_call>` blocks out of each reply with the tokenizer's response template
(`modeling_miniminds.tokenizer.RESPONSE_TEMPLATE`), runs the call, appends a tool message and lets the policy go on.
It wraps `data_process.tools.calculator`, the safe evaluator the SFT data was made with, and answers a bad expression
with an error message instead of raising, so the policy reads what went wrong.

`tool_loop_transcripts` runs the same loop greedily at evaluation time: generate, parse the tool calls, run them,
append the tool messages, generate again, at most `max_iterations` times. `tool_metrics` scores the transcripts:
`tool_call_rate`, the share of replies that call the calculator, and `tool_accuracy`, the share whose final answer
is right.
"""

import torch

from data_process.rewards import answers_match, extract_answer
from data_process.tools import CalculatorError
from data_process.tools import calculator as evaluate


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


@torch.no_grad()
def _greedy_ids(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int):
    """(prompt ids, generated ids up to and including the end-of-turn token) per prompt, greedy, left-padded."""
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    results = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            width = batch["input_ids"].shape[1]
            for mask, prompt, row in zip(batch["attention_mask"], batch["input_ids"], output[:, width:].tolist()):
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                results.append((prompt[mask.bool()].tolist(), row))
    finally:
        tokenizer.padding_side = padding_side
    return results


def tool_loop_transcripts(
    model,
    tokenizer,
    conversations: list[list[dict]],
    tools: dict | None = None,
    max_new_tokens: int = 64,
    max_iterations: int = 2,
    batch_size: int = 32,
) -> list[list[dict]]:
    """The messages each conversation gains when the model answers greedily with `tools` at hand: assistant turns,
    each tool call followed by its tool message, at most `max_iterations` rounds of calls. The last message is
    always the model's (calls in it past the limit are not run). `max_new_tokens` bounds each assistant turn."""
    from trl.chat_template_utils import parse_response

    tools = TOOLS if tools is None else tools
    schemas = list(tools.values())
    was_training = model.training
    model.eval()
    transcripts = [[] for _ in conversations]
    active = list(range(len(conversations)))
    try:
        for iteration in range(max_iterations + 1):
            prompts = [
                tokenizer.apply_chat_template(
                    conversations[i] + transcripts[i], tools=schemas, tokenize=False, add_generation_prompt=True
                )
                for i in active
            ]
            generated = _greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size)
            still_calling = []
            for i, (prefix, ids) in zip(active, generated):
                message = parse_response(tokenizer, ids, prefix=prefix, tools=schemas)
                transcripts[i].append(message)
                if message.get("tool_calls") and iteration < max_iterations:
                    transcripts[i] += [run_tool_call(call, tools) for call in message["tool_calls"]]
                    still_calling.append(i)
            active = still_calling
            if not active:
                break
    finally:
        model.train(was_training)
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
        "tool_samples": [{"answer": a, "transcript": t} for t, a in list(zip(transcripts, answers))[:num_samples]],
    }


def heldout_tool_metrics(
    model, tokenizer, records: list[dict], max_new_tokens: int = 64, max_iterations: int = 2, num_samples: int = 3
) -> dict:
    """Tool-use numbers on held-out `rl` records (e.g. eval/rl_tools.jsonl), answered with the calculator."""
    from recipes.training.rl import as_messages

    conversations = [as_messages(r["prompt"]) for r in records]
    transcripts = tool_loop_transcripts(model, tokenizer, conversations, TOOLS, max_new_tokens, max_iterations)
    return tool_metrics(transcripts, [r["answer"] for r in records], num_samples)
