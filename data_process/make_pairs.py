"""Preference pairs from SFT or RL data when none exist: sample the SFT model and keep its checkably wrong replies.

    python -m data_process.make_pairs --model runs/sft-tiny --input data/rl.jsonl --output data/pairs.jsonl \
        --num_samples 4 --temperature 1.0 --max_new_tokens 128 --seed 0

Every input record has a known answer: an `rl` record's `answer`, or the final answer (`答案：X` / `Answer: X`, as
data_process.rewards reads it) of an `sft` record's last assistant reply. The model answers each prompt
`--num_samples` times. A sample can be the rejected reply when its answer is wrong (accuracy 0 against the reference)
and it ended its turn within `--max_new_tokens`: a cut-off reply would teach length, not correctness. The chosen
reply is the `sft` record's own assistant turn; for an `rl` record a sampled correct reply when there is one, else
the answer line alone. Output is the project `dpo` format, written atomically; the counts of kept pairs and of each
reason a record was dropped are printed. The same seed, model and input give the same file.
"""

import logging
import re
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, set_seed

from data_process.records import turns_field, validate_dpo
from data_process.rejected import print_rejected
from data_process.rewards import accuracy_reward, extract_answer
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main
from modeling_miniminds.cli.paths import check_name_or_path, from_pretrained_or_explain
from modeling_miniminds.inference import chat_prompt_ids, generate_completions
from modeling_miniminds.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

ANSWER_PREFIX = {"zh": "答案：", "en": "Answer: "}
CJK = re.compile(r"[\u4e00-\u9fff]")
DROP_REASONS = {
    "all_correct": "every sample answered correctly: nothing to reject",
    "only_unfinished": "every wrong sample ran past --max_new_tokens",
    "no_answer": "the sft reply states no checkable answer",
}


def as_task(record: dict) -> tuple[list[dict], str | None, str | None]:
    """(prompt messages, reference reply or None, reference answer or None) of an `sft` or `rl` record."""
    field = turns_field(record)
    if field:
        turns = record[field]
        last = max(
            (i for i, m in enumerate(turns) if isinstance(m, dict) and m.get("role") == "assistant"), default=None
        )
        if last is None or last == 0:
            raise ValueError(f"field '{field}': needs a prompt and an assistant reply")
        reply = turns[last].get("content")
        if not isinstance(reply, str) or not reply.strip():
            raise ValueError(f"field '{field}[{last}].content': expected the reply text")
        return turns[:last], reply, extract_answer(reply)
    if "prompt" in record and "answer" in record:
        prompt = record["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(prompt, list) or not prompt or not isinstance(record["answer"], str):
            raise ValueError("fields 'prompt' and 'answer': expected messages (or text) and a string")
        return prompt, None, record["answer"]
    keys = ", ".join(record) or "none"
    raise ValueError(
        f"expected an sft record (messages or conversations) or an rl record (prompt, answer); keys: {keys}"
    )


def answer_line(prompt: list[dict], answer: str) -> str:
    """The bare reply `Answer: X`, or `答案：X` when the question is in Chinese."""
    lang = "zh" if CJK.search(prompt[-1].get("content") or "") else "en"
    return f"{ANSWER_PREFIX[lang]}{answer}"


def sample_replies(
    model, tokenizer, prompts: list[list[dict]], num_samples: int, temperature: float, top_p: float, max_new_tokens: int
) -> list[list[tuple[str, bool]]]:
    """`num_samples` sampled replies per chat prompt, each with whether it ended its turn (emitted eos) in time."""
    repeated = [ids for ids in chat_prompt_ids(tokenizer, prompts) for _ in range(num_samples)]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    replies = generate_completions(model, tokenizer, repeated, max_new_tokens, **sampling)
    rows = [(reply.text.strip(), reply.finish_reason == "stop") for reply in replies]
    return [rows[i : i + num_samples] for i in range(0, len(rows), num_samples)]


def choose_pair(prompt, reference_reply, answer, samples) -> tuple[dict | None, str | None]:
    """The dpo record for one prompt and its samples, or None and the reason it was dropped."""
    if answer is None:
        return None, "no_answer"
    correct = accuracy_reward(completions=[text for text, _ in samples], answer=[answer] * len(samples))
    wrong = [(text, ended) for (text, ended), score in zip(samples, correct) if score == 0]
    if not wrong:
        return None, "all_correct"
    finished = [text for text, ended in wrong if ended and text]
    if not finished:
        return None, "only_unfinished"
    sampled_right = [text for (text, ended), score in zip(samples, correct) if score == 1 and ended]
    chosen = reference_reply or (sampled_right[0] if sampled_right else answer_line(prompt, answer))
    record = {
        "chosen": prompt + [{"role": "assistant", "content": chosen}],
        "rejected": prompt + [{"role": "assistant", "content": finished[0]}],
    }
    validate_dpo(record)
    return record, None


def make_pairs(
    model,
    tokenizer,
    inputs,
    output,
    num_samples=4,
    temperature=1.0,
    top_p=1.0,
    max_new_tokens=128,
    batch_size=16,
    seed=0,
    skip_bad=False,
) -> Counter:
    """Write pairs for every usable record of `inputs` to `output`; return the counts (`kept`, drop reasons,
    `rejected` bad lines)."""
    set_seed(seed)
    counts = Counter()
    with JsonlTransform(inputs, output, skip_bad=skip_bad, desc="make_pairs") as job:
        pending = []
        for item in job.records():
            try:
                pending.append(as_task(item.record))
            except ValueError as err:
                job.reject(item, err)
            if len(pending) == batch_size:
                _write_batch(job, model, tokenizer, pending, counts, num_samples, temperature, top_p, max_new_tokens)
                pending = []
        if pending:
            _write_batch(job, model, tokenizer, pending, counts, num_samples, temperature, top_p, max_new_tokens)
    counts["rejected"] = job.rejected
    return counts


def _write_batch(job, model, tokenizer, tasks, counts, num_samples, temperature, top_p, max_new_tokens):
    prompts = [prompt for prompt, _, _ in tasks]
    samples = sample_replies(model, tokenizer, prompts, num_samples, temperature, top_p, max_new_tokens)
    for (prompt, reply, answer), replies in zip(tasks, samples):
        record, reason = choose_pair(prompt, reply, answer, replies)
        if record is None:
            counts[reason] += 1
        else:
            job.write(record)
            counts["kept"] += 1


def load_model(name: str):
    """The SFT model (on the GPU when there is one) and its tokenizer."""
    import modeling_miniminds  # noqa: F401  registers MiniMind with the Auto classes

    name = check_name_or_path(name, "model")
    model = from_pretrained_or_explain(AutoModelForCausalLM, name, "model")
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), load_tokenizer(name)


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__), formats=False)
    parser.add_argument("--model", required=True, help="SFT model folder (or Hub id) to sample rejected replies from")
    parser.add_argument("--num_samples", type=int, default=4, help="sampled replies per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="a sample longer than this is not used")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same pairs")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    for flag in ("num_samples", "max_new_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature: expected a value above 0 (sampling), got {args.temperature}")
    model, tokenizer = load_model(args.model)
    counts = make_pairs(
        model,
        tokenizer,
        args.input,
        args.output,
        args.num_samples,
        args.temperature,
        args.top_p,
        args.max_new_tokens,
        args.batch_size,
        args.seed,
        args.skip_bad,
    )
    dropped = ", ".join(f"{counts[reason]} {reason} ({why})" for reason, why in DROP_REASONS.items() if counts[reason])
    print(f"wrote {counts['kept']} pairs to {args.output}; dropped {dropped or 'none'}")
    print_rejected(counts["rejected"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
