"""Record builders: items turned into pretraining paragraphs, chats, thinking and tool-call conversations, DPO
pairs, RL prompts and agent RL records, each returned with the item keys it states."""

import json
import random

from data_process.demo_tools import DEMO_TOOL_SCHEMAS, DEMO_TOOLS, PHRASES, TIMEZONES, WEATHER
from data_process.synth.families import FAMILIES, Item, article, near_miss, pick, sample_item
from data_process.synth.heldout import check_split, is_heldout, split_of, split_rows
from data_process.synth.tables import (
    AGENT_CURRENCIES,
    AGENT_QUESTIONS,
    AGENT_SYSTEM,
    AGENT_UNIT_PAIRS,
    ANSWER_PREFIX,
    CHITCHAT,
    RL_SYSTEM,
    SYSTEM_PROMPTS,
)
from data_process.tools import CALCULATOR_TOOL, calculator


def _lang(rng):
    return "zh" if rng.random() < 0.5 else "en"


def _animal_paragraph(rng, lang, split):
    zh, en, legs, zh_sound, en_sound, zh_home, en_home = pick(rng, split_rows("animal", split))
    if lang == "zh":
        sentences = [f"{zh}是一种常见的动物。", f"{zh}有 {legs} 条腿。", f"{zh}常常生活在{zh_home}。"]
        if zh_sound:
            sentences.insert(2, f"{zh}的叫声是“{zh_sound}”。")
        return {"text": "".join(sentences)}, [f"animal:{en}"]
    a = article(en).capitalize()
    sentences = [f"The {en} is a common animal.", f"{a} {en} has {legs} legs.", f"{a} {en} often lives near {en_home}."]
    if en_sound:
        sentences.insert(2, f"{a} {en} says {en_sound}.")
    return {"text": " ".join(sentences)}, [f"animal:{en}"]


# The share of a paragraph's statements that follow the question they answer, as on a FAQ page. Reading a question
# and restating its operands is learnt in pretraining, at twice SFT's tokens a second, and SFT is left the chat format:
# on the dev split, half the statements so led raised SFT's task accuracy from 0.15 to 0.36 at equal steps.
QUESTION_LED = 0.5


# Each maker returns (record, keys): the record in its project format and the item keys it states.
def pretrain_doc(rng, split="train"):
    """One short monolingual paragraph of related statements, some led by their question."""
    lang = _lang(rng)
    if rng.random() < 0.15:
        return _animal_paragraph(rng, lang, split)
    items = [sample_item(rng, lang, split) for _ in range(rng.randint(3, 8))]
    space = "" if lang == "zh" else " "
    sentences = [f"{i.question}{space}{i.statement}" if rng.random() < QUESTION_LED else i.statement for i in items]
    return {"text": space.join(sentences)}, [i.key for i in items]


def _assistant(item):
    return {"role": "assistant", "content": item.reply}


def _system(rng, lang):
    return [{"role": "system", "content": pick(rng, SYSTEM_PROMPTS[lang])}] if rng.random() < 0.8 else []


def sft_record(rng, split="train"):
    """A 1-3 turn conversation, usually with a system prompt; some training turns are small talk, never eval ones."""
    lang = _lang(rng)
    messages, keys = _system(rng, lang), []
    for _ in range(rng.randint(1, 3)):
        if split == "train" and rng.random() < 0.1:
            question, reply = pick(rng, CHITCHAT[lang])
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        else:
            item = sample_item(rng, lang, split)
            messages += [{"role": "user", "content": item.question}, _assistant(item)]
            keys.append(item.key)
    return {"messages": messages}, keys


FULL_STOP = {"zh": "。", "en": "."}
SYMBOLS = {"add": "+", "sub": "-", "mul": "×"}
FOLLOW_UPS = {
    "add": {"zh": "再加上 {n} 呢？", "en": "And if you add {n} to that?"},
    "sub": {"zh": "再减去 {n} 呢？", "en": "Now take {n} away from that."},
    "mul": {"zh": "再乘以 {n} 呢？", "en": "And that times {n}?"},
}
CHAIN_QUESTIONS = {
    "zh": ["{expression} 等于多少？", "请一步一步计算 {expression}。"],
    "en": ["What is {expression}?", "Work out {expression} step by step."],
}
CALCULATOR_QUESTIONS = {
    "zh": ["用计算器算一下 {expression}。", "{expression} 等于多少？", "请计算 {expression}。"],
    "en": ["Use the calculator to work out {expression}.", "What is {expression}?", "Please calculate {expression}."],
}


def _step(lang, op, a, b):
    """One arithmetic step as (key, "a + b = r.", r), keyed the way `_arith` keys the same operands."""
    result = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    key = f"sub:{a}:{b}" if op == "sub" else f"{op}:{min(a, b)}:{max(a, b)}"
    return key, f"{a} {SYMBOLS[op]} {b} = {result}{FULL_STOP[lang]}", result


def _final_reply(lang, expression, result):
    return f"{expression} = {result}{FULL_STOP[lang]}\n{ANSWER_PREFIX[lang]}{result}"


def follow_up_record(rng):
    """Two turns whose second question only makes sense after the first answer ("And that times 3?"). Training only:
    such a question names no fact of its own, so an eval copy would repeat training questions word for word."""
    lang = _lang(rng)
    while True:
        first = FAMILIES[pick(rng, ("add", "sub", "mul"))](rng, lang)
        previous, op = int(first.answer), pick(rng, ("add", "sub", "mul"))
        n = rng.randint(2, 5) if op == "mul" else rng.randint(1, 20)
        if op == "sub" and n > previous:
            continue
        key, statement, result = _step(lang, op, previous, n)
        if not is_heldout(first.key) and not is_heldout(key):
            break
    second = Item(key, lang, statement, FOLLOW_UPS[op][lang].format(n=n), str(result), near_miss(rng, result))
    messages = _system(rng, lang)
    for item in (first, second):
        messages += [{"role": "user", "content": item.question}, _assistant(item)]
    return {"messages": messages}, [first.key, key]


def _chain(rng, lang, split):
    """Three numbers added or subtracted left to right, both intermediate steps keyed in the requested split."""
    while True:
        a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(0, 99)
        first_op, second_op = pick(rng, ("add", "sub")), pick(rng, ("add", "sub"))
        if first_op == "sub" and b > a:
            a, b = b, a
        first_key, first_step, partial = _step(lang, first_op, a, b)
        if second_op == "sub" and c > partial:
            second_op = "add"
        second_key, second_step, result = _step(lang, second_op, partial, c)
        if split_of(first_key) == split_of(second_key) == split:
            expression = f"{a} {SYMBOLS[first_op]} {b} {SYMBOLS[second_op]} {c}"
            return expression, (first_step, second_step), result, [first_key, second_key]


def thinking_record(rng, split="train"):
    """A two-step sum whose steps are worked out in `reasoning_content` (rendered as <think>...</think>) before the
    reply states the result."""
    lang = _lang(rng)
    expression, steps, result, keys = _chain(rng, lang, split)
    question = pick(rng, CHAIN_QUESTIONS[lang]).format(expression=expression)
    reasoning = ("" if lang == "zh" else " ").join(steps)
    reply = {"role": "assistant", "content": _final_reply(lang, expression, result), "reasoning_content": reasoning}
    return {"messages": _system(rng, lang) + [{"role": "user", "content": question}, reply]}, keys


def _calculator_expression(rng):
    a, b, c = rng.randint(100, 999), rng.randint(11, 99), rng.randint(2, 999)
    shapes = [f"{a} * {b}", f"{a} * {b} + {c}", f"{a} * {b} - {c}", f"({a} + {c}) * {b}", f"{a * b} / {b}"]
    return pick(rng, shapes)


def tool_record(rng, split="train"):
    """Arithmetic too large to do by heart: the assistant calls the `calculator` tool, the tool turn returns what
    data_process.tools computes, and the assistant gives it as the answer line, nothing more. The record carries the
    tool list in `tools`. Restating the expression first ("(455 + 300) * 92 = 69460.") made the demo's SFT model copy
    the result into its answer in 1 of 80 held-out dev replies that had one; the answer line alone, 36 of 83."""
    lang = _lang(rng)
    expression = _calculator_expression(rng)
    while split_of(f"calc:{expression}") != split:
        expression = _calculator_expression(rng)
    result = calculator(expression)
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    messages = _system(rng, lang) + [
        {"role": "user", "content": pick(rng, CALCULATOR_QUESTIONS[lang]).format(expression=expression)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": f"{ANSWER_PREFIX[lang]}{result}"},
    ]
    return {"messages": messages, "tools": [CALCULATOR_TOOL]}, [f"calc:{expression}"]


def chat_record(rng, split="train"):
    """One SFT conversation: mostly `sft_record`'s questions; a tenth each are follow-ups (training only), thinking
    and calculator conversations."""
    kind = rng.random()
    if kind < 0.1 and split == "train":
        return follow_up_record(rng)
    if kind < 0.2:
        return thinking_record(rng, split)
    if kind < 0.3:
        return tool_record(rng, split)
    return sft_record(rng, split)


REJECTED_KINDS = ("wrong_answer", "unsure", "repetition")


def _bad_reply(rng, item):
    """A rejected reply and its kind: a wrong answer, no answer at all, or the question repeated."""
    kind = REJECTED_KINDS[rng.randrange(3)]
    if kind == "wrong_answer":
        return kind, f"{item.wrong_statement}\n{ANSWER_PREFIX[item.lang]}{item.wrong}"
    if kind == "unsure":
        return kind, "嗯，这个问题我不太确定，可能是吧。" if item.lang == "zh" else "Hmm, I am not sure, maybe."
    return kind, " ".join([item.question] * 3)


def dpo_record(rng, split="train"):
    """A preference pair; `rejected_kind` names what is wrong with the rejected reply, so the reward stage can say
    which kinds of pairs its model ranks right."""
    lang = _lang(rng)
    item = sample_item(rng, lang, split)
    prompt = _system(rng, lang) + [{"role": "user", "content": item.question}]
    kind, bad = _bad_reply(rng, item)
    record = {
        "chosen": prompt + [_assistant(item)],
        "rejected": prompt + [{"role": "assistant", "content": bad}],
        "rejected_kind": kind,
    }
    return record, [item.key]


def rl_record(rng, split="train"):
    lang = _lang(rng)
    item = sample_item(rng, lang, split)
    prompt = [{"role": "system", "content": RL_SYSTEM[lang]}, {"role": "user", "content": item.question}]
    return {"prompt": prompt, "answer": item.answer, "family": item.key.split(":")[0]}, [item.key]


def rl_tools_record(rng, split="train"):
    """An `rl` question for the calculator (operands too large to multiply by heart), keyed like `tool_record`'s
    conversations, so a held-out expression is in no SFT or RL training file. The record lists its tools in `tools`."""
    lang = _lang(rng)
    expression = _calculator_expression(rng)
    while split_of(f"calc:{expression}") != split:
        expression = _calculator_expression(rng)
    prompt = [
        {"role": "system", "content": RL_SYSTEM[lang]},
        {"role": "user", "content": pick(rng, CALCULATOR_QUESTIONS[lang]).format(expression=expression)},
    ]
    record = {"prompt": prompt, "answer": calculator(expression), "family": "calc", "tools": [CALCULATOR_TOOL]}
    return record, [f"calc:{expression}"]


def call(name, **arguments):
    """What a demo tool answers, read back from its JSON text."""
    return json.loads(DEMO_TOOLS[name](**arguments))


def _city(lang, row):
    return row[1] if lang == "zh" else row[0]


# Each agent task draws (key, question fields, tools it needs, gt values) in a language.
def _weather_task(rng, lang):
    row = pick(rng, WEATHER)
    temperature = call("get_current_weather", location=row[0])["temperature_c"]
    return f"agent_weather:{row[0]}", {"city": _city(lang, row)}, ["get_current_weather"], [temperature]


def _weather2_task(rng, lang):
    first, second = rng.sample(WEATHER, 2)
    gt = [call("get_current_weather", location=row[0])["temperature_c"] for row in (first, second)]
    fields = {"a": _city(lang, first), "b": _city(lang, second)}
    return f"agent_weather2:{first[0]}:{second[0]}", fields, ["get_current_weather"], gt


def _time_task(rng, lang):
    """Two time zones at once: one zone alone gives too few keys to hold some out for both dev and eval."""
    first, second = rng.sample(list(TIMEZONES), 2)
    gt = [call("get_current_time", timezone=zone)["time"] for zone in (first, second)]
    return f"agent_time:{first}:{second}", {"a": first, "b": second}, ["get_current_time"], gt


def _unit_task(rng, lang):
    source, target = pick(rng, AGENT_UNIT_PAIRS)
    value = rng.randint(1, 500)
    result = call("unit_converter", value=value, from_unit=source, to_unit=target)["result"]
    fields = {"value": value, "source": source, "target": target}
    return f"agent_unit:{value}:{source}:{target}", fields, ["unit_converter"], [result]


def _exchange_task(rng, lang):
    source, target = rng.sample(AGENT_CURRENCIES, 2)
    amount = rng.randint(1, 50) * 10
    rate = call("get_exchange_rate", from_currency=source, to_currency=target)["rate"]
    fields = {"amount": amount, "source": source, "target": target}
    return (
        f"agent_exchange:{amount}:{source}:{target}",
        fields,
        ["get_exchange_rate", "calculate_math"],
        [round(amount * rate, 2)],
    )


def _translate_task(rng, lang):
    chinese, english = pick(rng, PHRASES)
    to_english = rng.random() < 0.5
    text, language = (chinese, "english") if to_english else (english, "chinese")
    shown = {"zh": {"english": "英文", "chinese": "中文"}, "en": {"english": "English", "chinese": "Chinese"}}
    gt = call("translate_text", text=text, target_language=language)["translated_text"]
    fields = {"text": text, "language": shown[lang][language]}
    return f"agent_translate:{text}:{language}", fields, ["translate_text"], [gt]


def _math_task(rng, lang):
    expression = _calculator_expression(rng)
    result = call("calculate_math", expression=expression)["result"]
    return f"calc:{expression}", {"expression": expression}, ["calculate_math"], [result]


AGENT_TASKS = {
    "weather": _weather_task,
    "weather2": _weather2_task,
    "time": _time_task,
    "unit": _unit_task,
    "exchange": _exchange_task,
    "translate": _translate_task,
    "math": _math_task,
}


def agent_record(rng, split="train"):
    """An agent RL record in upstream MiniMind's layout: a system turn declaring the tools a question needs plus one
    to three others (as JSON text in `tools`), the question, a placeholder assistant turn, and `gt`, the values the
    tools' answers lead to (a math expression is keyed like the calculator records, so a held-out one is in no
    training file)."""
    lang = _lang(rng)
    while True:
        kind = pick(rng, list(AGENT_TASKS))
        key, fields, needed, gt = AGENT_TASKS[kind](rng, lang)
        if split_of(key) == split:
            break
    others = [name for name in DEMO_TOOL_SCHEMAS if name not in needed]
    names = needed + rng.sample(others, rng.randint(1, 3))
    rng.shuffle(names)
    tools = json.dumps([DEMO_TOOL_SCHEMAS[name] for name in names], ensure_ascii=False)
    conversations = [
        {"role": "system", "content": AGENT_SYSTEM[lang], "tools": tools},
        {"role": "user", "content": pick(rng, AGENT_QUESTIONS[kind][lang]).format(**fields)},
        {"role": "assistant", "content": ""},
    ]
    return {"conversations": conversations, "gt": [str(value) for value in gt], "family": f"agent_{kind}"}, [key]


MAKERS = {
    "pretrain": pretrain_doc,
    "sft": chat_record,
    "dpo": dpo_record,
    "rl": rl_record,
    "rl_tools": rl_tools_record,
    "agent": agent_record,
}


def iter_keyed_records(kind, seed=0, split="train"):
    """Endless stream of (record, item keys) of one kind; the same seed gives the same stream."""
    rng = random.Random(f"{kind}:{seed}:{check_split(split)}")
    make = MAKERS[kind]
    while True:
        yield make(rng, split)


def iter_records(kind, seed=0, split="train"):
    """Endless stream of records of one kind; the same seed gives the same stream."""
    return (record for record, _ in iter_keyed_records(kind, seed, split))
