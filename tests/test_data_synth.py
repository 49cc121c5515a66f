"""Built-in corpus: deterministic, valid in every project format, an eval split and completion probes unseen in
training, checkable RL answers."""

import json
import random
import re
from collections import Counter

import pytest

from data_process.demo_tools import DEMO_TOOL_SCHEMAS
from data_process.jsonl import read_jsonl
from data_process.rewards import accuracy_reward, extract_answer, format_reward
from data_process.synth import (
    DEV_ROWS,
    HELDOUT_ROWS,
    PROBE_FAMILIES,
    SIZES,
    SPLITS,
    TABLES,
    build_corpus,
    sample_item,
    split_keys,
)
from data_process.synth.__main__ import main
from data_process.synth.builders import REJECTED_KINDS
from data_process.synth.tables import ANSWER_PREFIX, RL_SYSTEM
from data_process.tools import CALCULATOR_TOOL, calculator
from recipes.training.rl import read_rl_records

TRAINING_KINDS = ("pretrain", "sft", "dpo", "rl")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """The demo's corpus (size small, ~3 s): the split must hold at the size a model is trained on."""
    return build_corpus(tmp_path_factory.mktemp("small"), size="small", seed=0)


@pytest.fixture(scope="module")
def small_training_text(small_corpus):
    """The raw text of every training file, JSON escapes and all."""
    return "\n".join(small_corpus[kind].read_text(encoding="utf-8") for kind in TRAINING_KINDS)


def sentences(text):
    return [s for s in SENTENCE_END.split(text) if s.strip()]


def occurs_as_sentence(sentence, text):
    """Whether `sentence` stands in `text` other than as the tail of a longer number or word: a rejected DPO reply
    "14 minus 3 equals 1." holds "4 minus 3 equals 1." without stating it."""
    start = text.find(sentence)
    while start > 0 and text[start - 1].isalnum():
        start = text.find(sentence, start + 1)
    return start >= 0


def eval_sentences(eval_dir):
    """Every statement of the eval split: pretraining text (its questions are checked as questions: "Which number is
    larger?" ends one of them) and the first line of each chosen assistant reply, unless it is the answer line alone
    (a calculator reply: "Answer: 148" states no fact)."""
    found = [s for r in read_jsonl(eval_dir / "pretrain.jsonl") for s in sentences(r["text"]) if s[-1] not in "?？"]
    chats = [r["messages"] for r in read_jsonl(eval_dir / "sft.jsonl")]
    chats += [r["chosen"] for r in read_jsonl(eval_dir / "dpo.jsonl")]
    first_lines = [m["content"].split("\n")[0] for messages in chats for m in messages if m["role"] == "assistant"]
    answer_lines = tuple(ANSWER_PREFIX.values())
    return found + [s for line in first_lines if not line.startswith(answer_lines) for s in sentences(line)]


def user_questions(records, field):
    questions = set()
    for record in records:
        questions |= {m["content"] for m in record[field] if m["role"] == "user"}
    return questions


def test_every_file_is_valid_in_its_format(tiny_corpus):
    for kind in ("pretrain", "sft", "dpo", "rl"):
        assert len(list(read_jsonl(tiny_corpus[kind], validate=kind))) > 50
        assert len(list(read_jsonl(tiny_corpus["eval"] / f"{kind}.jsonl", validate=kind))) > 10


def test_same_seed_same_bytes_other_seed_differs(tiny_corpus, tmp_path):
    build_corpus(tmp_path / "again", size="tiny", seed=0)
    other = build_corpus(tmp_path / "other", size="tiny", seed=1)
    written = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.json*"))
    assert len(written) == 22  # 6 training files, 8 in eval/, 7 in dev/, manifest.json
    for name in written:
        assert (tmp_path / "again" / name).read_bytes() == (tiny_corpus["eval"].parent / name).read_bytes()
    for kind in (*TRAINING_KINDS, "completion"):
        assert other[kind].read_bytes() != tiny_corpus[kind].read_bytes()


def test_corpus_is_bilingual_and_multi_turn(tiny_corpus):
    texts = [r["text"] for r in read_jsonl(tiny_corpus["pretrain"])]
    assert any("等于" in t for t in texts) and any("equals" in t for t in texts)
    conversations = [r["messages"] for r in read_jsonl(tiny_corpus["sft"])]
    assert any(c[0]["role"] == "system" for c in conversations)
    assert any(sum(m["role"] == "assistant" for m in c) >= 2 for c in conversations)


def test_eval_and_dev_questions_never_appear_in_training_or_each_other(tiny_corpus):
    fields = {"sft": "messages", "dpo": "chosen", "rl": "prompt", "agent": "conversations"}
    train, held_out = set(), {"eval": set(), "dev": set()}
    for kind, field in fields.items():
        train |= user_questions(read_jsonl(tiny_corpus[kind]), field)
        for split, questions in held_out.items():
            questions |= user_questions(read_jsonl(tiny_corpus[split] / f"{kind}.jsonl"), field)
    assert held_out["eval"] and held_out["dev"]
    assert not held_out["eval"] & train and not held_out["dev"] & train
    assert not held_out["eval"] & held_out["dev"]
    pretraining = "\n".join(r["text"] for r in read_jsonl(tiny_corpus["pretrain"]))
    assert "? " in pretraining and "？" in pretraining  # statements led by their questions
    leaked = [q for q in held_out["eval"] | held_out["dev"] if occurs_as_sentence(q, pretraining)]
    assert not leaked, leaked[:3]


def test_no_eval_sentence_appears_in_any_training_file(small_corpus, small_training_text):
    """Regression: fact items were split by question wording only, so 1,762 of 2,223 eval pretraining sentences
    (size small) stood word for word in pretrain.jsonl."""
    sentences = [s for split in SPLITS[1:] for s in eval_sentences(small_corpus[split])]
    held_out = {json.dumps(s, ensure_ascii=False)[1:-1] for s in sentences}
    assert len(held_out) > 2000
    leaked = sorted(s for s in held_out if occurs_as_sentence(s, small_training_text))
    assert not leaked, f"{len(leaked)} eval sentences in training files, e.g. {leaked[:3]}"


def test_eval_keys_are_never_training_keys(small_corpus):
    """Keys name the checkable content (operands, date, unit, fact row), the same in both languages."""
    keys = split_keys("small", seed=0)
    assert keys["eval"] and keys["dev"] and not keys["eval"] & keys["train"]
    assert not keys["dev"] & (keys["train"] | keys["eval"])
    families = {key.split(":")[0] for key in keys["eval"]}
    assert families == {key.split(":")[0] for key in keys["train"]} - {"month_days"}
    assert families == {key.split(":")[0] for key in keys["dev"]}
    probe_keys = {p["key"] for p in read_jsonl(small_corpus["completion"])}
    assert probe_keys and not probe_keys & keys["train"]
    assert {p["key"] for p in read_jsonl(small_corpus["trained_facts"])} <= keys["train"]


def test_fact_rows_are_held_out_whole(small_corpus, small_training_text):
    """Some animals and countries exist only in eval: 10-20% of each table, never named in training text."""
    for family, rows in TABLES.items():
        assert 0.1 <= len(HELDOUT_ROWS[family]) / len(rows) <= 0.2
        assert DEV_ROWS[family] and not DEV_ROWS[family] & HELDOUT_ROWS[family]
    held_out = [
        row[1]
        for family in ("animal", "capital")
        for row in TABLES[family]
        if row[1] in HELDOUT_ROWS[family] | DEV_ROWS[family]
    ]
    assert not re.findall(rf"\b(?:{'|'.join(map(re.escape, held_out))})\b", small_training_text)
    held_text = "".join(small_corpus[split].joinpath("sft.jsonl").read_text(encoding="utf-8") for split in SPLITS[1:])
    assert all(name in held_text for name in held_out)


def test_completion_probes_score_a_whole_unseen_answer(small_corpus):
    """Regression: the demo scored a last word like " legs." whose number the prompt already gave."""
    probes = list(read_jsonl(small_corpus["completion"]))
    per_family = Counter(p["family"] for p in probes)
    assert set(per_family) == set(PROBE_FAMILIES) and min(per_family.values()) >= 40
    assert len(probes) == SIZES["small"]["eval"]
    assert Counter(p["lang"] for p in probes)["zh"] == len(probes) // 2
    for probe in probes:
        prompt, answer = probe["prompt"], probe["answer"]
        assert answer.strip() and prompt == prompt.strip()
        if probe["family"] == "compare":
            assert int(answer) == max(map(int, re.findall(r"\d+", prompt)))
        else:
            assert not re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", prompt), probe
    compares = [p for p in probes if p["family"] == "compare"]
    larger_first = sum(re.findall(r"\d+", p["prompt"])[0] == p["answer"] for p in compares)
    assert 0.3 < larger_first / len(compares) < 0.7


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_item_answer_is_checked_by_the_shipped_rewards(lang):
    rng = random.Random(0)
    items = [sample_item(rng, lang, SPLITS[i % 3]) for i in range(400)]
    assert accuracy_reward(completions=[i.reply for i in items], answer=[i.answer for i in items]) == [1.0] * 400
    wrong = [i.reply.replace(i.answer, i.wrong) for i in items]
    assert accuracy_reward(completions=wrong, answer=[i.answer for i in items]) == [0.0] * 400
    assert format_reward(completions=[i.reply for i in items]) == [1.0] * 400


def test_dpo_rejected_is_wrong_or_badly_formatted_as_its_kind_says(tiny_corpus):
    kinds = Counter()
    for record in read_jsonl(tiny_corpus["dpo"]):
        chosen, rejected = record["chosen"][-1]["content"], record["rejected"][-1]["content"]
        assert record["chosen"][:-1] == record["rejected"][:-1]
        assert format_reward(completions=[chosen]) == [1.0]
        kind = record["rejected_kind"]
        kinds[kind] += 1
        if kind == "wrong_answer":
            assert format_reward(completions=[rejected]) == [1.0] and extract_answer(rejected) != extract_answer(chosen)
        else:
            assert format_reward(completions=[rejected]) == [0.0]
            assert (record["chosen"][-2]["content"] in rejected) == (kind == "repetition")
    assert set(kinds) == set(REJECTED_KINDS)


def test_rl_answers_are_non_empty_and_prompts_end_with_user(tiny_corpus):
    for record in read_jsonl(tiny_corpus["rl"], validate="rl"):
        assert record["answer"].strip() and record["prompt"][-1]["role"] == "user"


def test_cli_writes_manifest(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "tiny", "--seed", "3"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and manifest["records"]["sft"] == 300
    assert "eval:" in capsys.readouterr().out


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="size: expected one of tiny, small, medium, got 'huge'"):
        build_corpus(tmp_path, size="huge")


def test_sft_has_follow_ups_thinking_and_calculator_conversations(small_corpus):
    """Every kind of SFT conversation the recipe trains on: follow-ups that need the previous answer, worked steps in
    `reasoning_content`, and calculator calls whose tool turn holds what data_process.tools computes."""
    conversations = [(r["messages"], r.get("tools")) for r in read_jsonl(small_corpus["sft"], validate="sft")]
    follow_ups = [c for c, _ in conversations if any(m["content"].startswith(("再", "And ", "Now take")) for m in c)]
    thinking = [c for c, _ in conversations if any(m.get("reasoning_content") for m in c)]
    tool_uses = [(c, tools) for c, tools in conversations if any(m.get("tool_calls") for m in c)]
    for share in (follow_ups, thinking, tool_uses):
        assert 0.07 < len(share) / len(conversations) < 0.13  # a tenth each
    for messages in thinking:
        reply = messages[-1]
        steps = [int(s) for s in re.findall(r"= (\d+)", reply["reasoning_content"])]
        assert len(steps) == 2 and extract_answer(reply["content"]) == str(steps[-1])
    for messages, tools in tool_uses:
        assert tools == [CALCULATOR_TOOL]
        call, result, final = messages[-3:]
        expression = call["tool_calls"][0]["function"]["arguments"]["expression"]
        assert call["content"] == "" and result == {"role": "tool", "content": calculator(expression)}
        assert extract_answer(final["content"]) == result["content"]


def test_the_rl_questions_system_prompt_is_one_the_sft_chats_teach(small_corpus):
    """RL and the held-out chat and calculator questions ask under RL_SYSTEM. On dev, an SFT model that never met it
    made a calculator call for 39 of 100 calculator questions asked under it, and for 200 of 200 under a system
    prompt it was trained with."""
    rl_prompts = {r["prompt"][0]["content"] for name in ("rl", "rl_tools") for r in read_jsonl(small_corpus[name])}
    assert rl_prompts == set(RL_SYSTEM.values())
    sft = [r for r in read_jsonl(small_corpus["sft"]) if r["messages"][0]["role"] == "system"]
    for kind, chats in (("all", sft), ("calculator", [r for r in sft if r.get("tools")])):
        taught = Counter(r["messages"][0]["content"] for r in chats)
        assert all(taught[prompt] > 0.05 * len(chats) for prompt in rl_prompts), (kind, taught)


def test_no_eval_reasoning_or_calculator_expression_appears_in_training(small_corpus, small_training_text):
    """The held-out split covers the new conversations too: no worked step and no calculator expression of
    eval/sft.jsonl stands in a training file."""
    steps, expressions = set(), set()
    for record in read_jsonl(small_corpus["eval"] / "sft.jsonl"):
        for message in record["messages"]:
            steps |= set(sentences(message.get("reasoning_content") or ""))
            for call in message.get("tool_calls") or []:
                expressions.add(json.dumps(call["function"]["arguments"], ensure_ascii=False))
    assert len(steps) > 40 and len(expressions) > 20
    held_out = {json.dumps(s, ensure_ascii=False)[1:-1] for s in steps}
    leaked = sorted(s for s in held_out if occurs_as_sentence(s, small_training_text))
    leaked += sorted(e for e in expressions if e in small_training_text)
    assert not leaked, f"{len(leaked)} eval steps or expressions in training files, e.g. {leaked[:3]}"


def test_rl_tools_questions_need_the_calculator_and_keep_their_held_out_expressions(small_corpus):
    """RL questions for the calculator: the answer is what data_process.tools computes, and no held-out expression
    stands in a training file (SFT calculator conversations or rl_tools.jsonl)."""
    expression = re.compile(r"\(?\d[\d +\-*/()]*\d\)?")
    split = {}
    for name, path in (("train", small_corpus["rl_tools"]), ("eval", small_corpus["eval_rl_tools"])):
        records = list(read_jsonl(path, validate="rl"))
        assert {r["family"] for r in records} == {"calc"} and all(r["tools"] == [CALCULATOR_TOOL] for r in records)
        found = [expression.search(r["prompt"][-1]["content"]).group(0) for r in records]
        assert all(calculator(e) == r["answer"] for e, r in zip(found, records))
        split[name] = set(found)
    training = small_corpus["sft"].read_text(encoding="utf-8") + small_corpus["rl_tools"].read_text(encoding="utf-8")
    assert len(split["eval"]) > 100 and not any(f'"{e}"' in training or f" {e}。" in training for e in split["eval"])
    assert not split["eval"] & split["train"]


AGENT_NEEDS = {
    "agent_weather": {"get_current_weather"},
    "agent_weather2": {"get_current_weather"},
    "agent_time": {"get_current_time"},
    "agent_unit": {"unit_converter"},
    "agent_exchange": {"get_exchange_rate", "calculate_math"},
    "agent_translate": {"translate_text"},
    "agent_math": {"calculate_math"},
}


def test_agent_records_declare_several_tools_and_keep_their_held_out_questions(small_corpus):
    """Agent records in upstream's layout read as GRPO prompts: each declares the demo tools its question needs and
    others besides, with `gt`; no held-out question or math expression stands in a training file."""
    questions = {}
    for split, path in (("train", small_corpus["agent"]), ("eval", small_corpus["eval_agent"])):
        records = read_rl_records(path)
        assert {r["family"] for r in records} == set(AGENT_NEEDS)
        for record in records:
            names = {schema["function"]["name"] for schema in record["tools"]}
            assert AGENT_NEEDS[record["family"]] < names <= set(DEMO_TOOL_SCHEMAS)
            assert record["gt"] and [m["role"] for m in record["prompt"]] == ["system", "user"]
        questions[split] = {r["prompt"][-1]["content"] for r in records}
    assert len(questions["eval"]) > 100 and not questions["eval"] & questions["train"]
    training = "\n".join(small_corpus[kind].read_text(encoding="utf-8") for kind in ("sft", "rl_tools", "agent"))
    expressions = [re.search(r"\(?\d[\d +\-*/()]*\d\)?", q).group(0) for q in questions["eval"] if "*" in q]
    assert expressions and not any(f" {e}" in training for e in expressions)
