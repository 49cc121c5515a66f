"""The held-out probes stages run before and after training (see `lifecycle.Probe`), built on `evaluation`'s and
`scoring`'s scores: completions of held-out statements, greedy chat replies to held-out questions, and the loss on
each held-out document."""

import functools

from recipes.training.evaluation import chat_accuracy, completion_accuracy, eval_mode
from recipes.training.intervals import ITEMS
from recipes.training.lifecycle import Probe
from recipes.training.scoring import document_losses
from recipes.training.tool_use import heldout_tool_metrics

# The chat numbers a stage reports, beside the per-family accuracy and a few sample replies.
CHAT_METRICS = ("accuracy", "task_accuracy", "eot_rate", "per_family", "per_family_n", "samples", ITEMS)


def chat_metrics(model, tokenizer, records: list[dict], max_new_tokens: int) -> dict:
    """Exact-answer accuracy, task accuracy and end-of-turn rate of greedy replies (`evaluation.chat_accuracy`)."""
    scores = chat_accuracy(model, tokenizer, records, max_new_tokens=max_new_tokens)
    return {key: scores[key] for key in CHAT_METRICS}


def chat_probe(tokenizer, records: list[dict], max_new_tokens: int) -> list[Probe]:
    """The chat probe on `records` (held-out `rl` questions), none when there are no records."""
    if not records:
        return []
    measure = functools.partial(chat_metrics, tokenizer=tokenizer, records=records, max_new_tokens=max_new_tokens)
    return [Probe("chat", measure)]


def tool_probe(tokenizer, records: list[dict], max_new_tokens: int) -> Probe:
    """Held-out calculator questions answered through the tool loop, and without the tool
    (`tool_use.heldout_tool_metrics`)."""
    measure = functools.partial(
        heldout_tool_metrics, tokenizer=tokenizer, records=records, max_new_tokens=max_new_tokens
    )
    return Probe("tools", measure)


def completion_metrics(model, tokenizer, records: list[dict]) -> dict:
    scores = completion_accuracy(model, tokenizer, records)
    return {
        "completion_accuracy": scores["accuracy"],
        "completion_per_family": scores["per_family"],
        "completion_samples": scores["samples"],
        ITEMS: {"completion_accuracy": scores[ITEMS]["accuracy"]},
    }


def completion_probe(tokenizer, records: list[dict]) -> Probe:
    """Held-out statements completed greedily (`evaluation.completion_accuracy`): what the demo asks pretraining."""
    return Probe("completion", functools.partial(completion_metrics, tokenizer=tokenizer, records=records))


def document_loss_metrics(model, tokenizer, documents: list[str], max_length: int) -> dict:
    with eval_mode(model):
        losses = document_losses(model, tokenizer, documents, max_length, batch_size=32)
    return {"document_loss": round(sum(losses) / len(losses), 4), ITEMS: {"document_loss": losses}}


def document_loss_probe(tokenizer, documents: list[str], max_length: int) -> Probe:
    """Held-out text scored document by document (`scoring.document_losses`, in windows of `max_length`, the
    training block size): the loss with a per-document interval, so two models compare with a paired one."""
    measure = functools.partial(document_loss_metrics, tokenizer=tokenizer, documents=documents, max_length=max_length)
    return Probe("document_loss", measure)
