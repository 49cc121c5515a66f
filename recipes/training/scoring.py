"""Log-likelihood scoring of a causal LM: bits per UTF-8 byte of held-out text, and multiple choice.

Which tokens count, the same as lm-evaluation-harness's HF backend (`loglikelihood_rolling`, `multiple_choice`) for
tokenizers that add no special tokens when encoding (MiniMinds', Qwen's, GPT-2's):

- Text: a document is encoded without special tokens and scored from its first token, which is predicted from a
  prefix token (the tokenizer's BOS, else its EOS); no end-of-text token is scored. Bits per byte = total NLL in nats
  / ln 2 / total UTF-8 bytes of the documents, so models with different tokenizers compare.
- A document longer than the window (`max_length` tokens): the first window scores its first `max_length` tokens,
  each later one the next `stride` tokens, seeing the `max_length` tokens before the last of them. `stride =
  max_length` gives lm-eval's disjoint windows exactly; a smaller stride gives every token at least `max_length -
  stride` tokens of context, for `max_length / stride` times the compute.
- Multiple choice: the context (few-shot examples, then the question) is followed by `" " + choice`; the choice's
  tokens are those of encode(context + continuation) past the length of encode(context), and a context too long for
  the window loses its start. `acc` picks the choice with the highest log-likelihood, `acc_norm` the highest per
  character of the choice and `acc_bytes` per UTF-8 byte, as lm-eval names them.
- Document loss: the tokens pretraining predicts, so it means what the trainer's eval loss means: a document is
  encoded without special tokens and followed by eos as `data_process.pack` does, and every token after its first
  is scored (the first is where packed training restarts the positions and predicts nothing), in windows of the
  training block size.
"""

import math
from collections import defaultdict

import torch
from tqdm import tqdm

from data_process.mc import LETTERS, Question

LN2 = math.log(2)
MC_STYLES = ("cloze", "letters")
MC_METRICS = ("acc", "acc_norm", "acc_bytes")
DEFAULT_MAX_LENGTH = 2048  # lm-eval's, for a config that names no context length


def prefix_token_id(tokenizer) -> int:
    """The token a document's first token is predicted from: BOS, else EOS (lm-eval's rule)."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither a bos nor an eos token to predict a document's first token from")
    return token_id


def context_length(model, max_length: int | None = None) -> int:
    """`max_length` if given, else the model's context length from its config."""
    if max_length is not None:
        return max_length
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(model.config, name, None):
            return getattr(model.config, name)
    return DEFAULT_MAX_LENGTH


def rolling_requests(tokens: list[int], prefix_id: int, max_length: int, stride: int) -> list[tuple[list[int], int]]:
    """Windows that score each token of a document exactly once, in order: (sequence, number of its last tokens
    scored). A sequence holds at most `max_length` model inputs plus the last target."""
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    sequence = [prefix_id, *tokens]
    requests, scored = [], 0
    while scored < len(tokens):
        end = min(scored + (max_length if scored == 0 else stride), len(tokens))
        start = max(0, end - max_length)  # sequence[start : end + 1] predicts tokens[scored:end]
        requests.append((sequence[start : end + 1], end - scored))
        scored = end
    return requests


@torch.no_grad()
def score_requests(
    model, requests: list[tuple[list[int], int]], batch_size: int = 8, desc: str = "scoring"
) -> list[float]:
    """Log-probability in nats of the scored tokens of each request. Batches run longest first and are padded on the
    right: in a causal model no real position sees the padding, so no attention mask is needed (nor passed, as in
    lm-eval)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    results = [0.0] * len(requests)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit=" batches", leave=False):
        indices = order[start : start + batch_size]
        inputs = torch.zeros(len(indices), len(requests[indices[0]][0]) - 1, dtype=torch.long)
        for row, index in enumerate(indices):
            sequence = requests[index][0]
            inputs[row, : len(sequence) - 1] = torch.tensor(sequence[:-1])
        logits = model(input_ids=inputs.to(model.device), use_cache=False).logits
        for row, index in enumerate(indices):
            sequence, count = requests[index]
            end = len(sequence) - 1
            targets = torch.tensor(sequence[len(sequence) - count :], device=logits.device)
            logprobs = logits[row, end - count : end].float().log_softmax(-1)
            results[index] = logprobs.gather(-1, targets[:, None]).sum().item()
    return results


def text_metrics(
    model, tokenizer, documents: list[str], max_length: int, stride: int | None = None, batch_size: int = 8
) -> dict:
    """Bits per byte, token perplexity and the counts behind them over a list of documents."""
    stride = stride or max_length
    prefix_id = prefix_token_id(tokenizer)
    encoded = tokenizer(documents, add_special_tokens=False).input_ids if documents else []
    requests = [request for tokens in encoded for request in rolling_requests(tokens, prefix_id, max_length, stride)]
    nll = -sum(score_requests(model, requests, batch_size, desc="bits per byte"))
    num_tokens = sum(map(len, encoded))
    num_bytes = sum(len(text.encode("utf-8")) for text in documents)
    if not num_bytes:
        raise ValueError("no text to score")
    return {
        "bits_per_byte": nll / LN2 / num_bytes,
        "perplexity": math.exp(nll / num_tokens),
        "nll_nats": nll,
        "tokens": num_tokens,
        "bytes": num_bytes,
        "documents": len(documents),
        "windows": len(requests),
        "max_length": max_length,
        "stride": stride,
    }


def document_losses(model, tokenizer, documents: list[str], max_length: int, batch_size: int = 8) -> list[float]:
    """Mean cross-entropy in nats per scored token of each document: values a paired interval can compare between
    two models document by document. Weighted by their tokens they average to the packed eval loss (which differs
    only where a block's end cuts a document)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("a document loss needs an eos token: packed training appends it to every document")
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(documents, add_special_tokens=False).input_ids]
    if not encoded or any(len(ids) < 2 for ids in encoded):
        raise ValueError("no document, or an empty one: nothing to predict")
    windows = [rolling_requests(ids[1:], ids[0], max_length, max_length) for ids in encoded]
    logprobs = iter(score_requests(model, [w for doc in windows for w in doc], batch_size, desc="document loss"))
    return [-sum(next(logprobs) for _ in doc) / (len(ids) - 1) for ids, doc in zip(encoded, windows)]


def question_prompt(question: Question, style: str = "cloze") -> str:
    """The question as the model reads it: cloze scores the choice texts, letters lists them and scores A-D."""
    if style == "letters":
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices))
        return f"{question.question}{options}\nAnswer:"
    return f"{question.question}\nAnswer:"


def choice_texts(question: Question, style: str = "cloze") -> list[str]:
    return list(LETTERS[: len(question.choices)]) if style == "letters" else list(question.choices)


def fewshot_examples(questions: list[Question], dev: list[Question], num_fewshot: int) -> dict[str, list[Question]]:
    """The first `num_fewshot` dev questions of each subject asked (the C-Eval and MMLU convention)."""
    by_subject = defaultdict(list)
    for question in dev:
        by_subject[question.subject].append(question)
    shots = {}
    for subject in sorted({q.subject for q in questions}):
        if len(by_subject[subject]) < num_fewshot:
            raise ValueError(
                f"--num_fewshot {num_fewshot}: subject '{subject}' has {len(by_subject[subject])} dev questions "
                "in --mc_dev_files"
            )
        shots[subject] = by_subject[subject][:num_fewshot]
    return shots


def fewshot_context(question: Question, shots: list[Question], style: str = "cloze") -> str:
    """Each example with its answer, a blank line after each, then the question (lm-eval's default delimiters)."""
    examples = "".join(f"{question_prompt(s, style)} {choice_texts(s, style)[s.answer]}\n\n" for s in shots)
    return examples + question_prompt(question, style)


def choice_request(tokenizer, context: str, continuation: str, max_length: int) -> tuple[list[int], int]:
    """(sequence, number of continuation tokens): trailing spaces of the context move to the continuation so a
    word keeps its leading space, as lm-eval does."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    context_ids = tokenizer(stripped, add_special_tokens=False).input_ids
    whole_ids = tokenizer(stripped + continuation, add_special_tokens=False).input_ids
    continuation_ids = whole_ids[len(context_ids) :]
    return (context_ids + continuation_ids)[-(max_length + 1) :], len(continuation_ids)


def _argmax(values) -> int:
    """Index of the first largest value (np.argmax's tie rule)."""
    return max(range(len(values)), key=values.__getitem__)


def _accuracies(hits: dict[str, list[bool]]) -> dict:
    return {name: sum(values) / len(values) for name, values in hits.items()}


def multiple_choice_metrics(
    model,
    tokenizer,
    questions: list[Question],
    dev: list[Question] = (),
    num_fewshot: int = 0,
    style: str = "cloze",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 8,
) -> dict:
    """Accuracy overall (every question weighs the same) and per subject, raw and length-normalised, with the
    chance line (the mean of 1 / number of choices)."""
    if style not in MC_STYLES:
        raise ValueError(f"mc_style: expected one of {', '.join(MC_STYLES)}, got {style!r}")
    if style == "letters" and max(len(q.choices) for q in questions) > len(LETTERS):
        raise ValueError(f"mc_style letters: a question has more than {len(LETTERS)} choices; use cloze")
    shots = fewshot_examples(questions, list(dev), num_fewshot)
    requests = []
    for question in questions:
        context = fewshot_context(question, shots[question.subject], style)
        texts = choice_texts(question, style)
        requests += [choice_request(tokenizer, context, " " + text, max_length) for text in texts]
    logprobs = iter(score_requests(model, requests, batch_size, desc="multiple choice"))
    overall, per_subject = defaultdict(list), defaultdict(lambda: defaultdict(list))
    for question in questions:
        texts = choice_texts(question, style)
        scores = [next(logprobs) for _ in texts]
        picks = {
            "acc": _argmax(scores),
            "acc_norm": _argmax([s / len(t) for s, t in zip(scores, texts)]),
            "acc_bytes": _argmax([s / len(t.encode("utf-8")) for s, t in zip(scores, texts)]),
        }
        for name, pick in picks.items():
            overall[name].append(pick == question.answer)
            per_subject[question.subject][name].append(pick == question.answer)
    return {
        **_accuracies(overall),
        "chance": sum(1 / len(q.choices) for q in questions) / len(questions),
        "questions": len(questions),
        "num_fewshot": num_fewshot,
        "style": style,
        "subjects": {
            subject: {**_accuracies(hits), "questions": len(hits["acc"])}
            for subject, hits in sorted(per_subject.items())
        },
    }
