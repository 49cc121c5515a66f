"""The task families: each draws one checkable `Item` (key, statement, question, answer, wrong answer) in a
language, from arithmetic, comparison, counting, units, dates and the fact tables."""

import datetime
from dataclasses import dataclass

from data_process.synth.heldout import TRAIN_ONLY, split_of, split_rows
from data_process.synth.tables import (
    ANIMALS,
    ANSWER_PREFIX,
    CAPITALS,
    COLORS,
    FRUITS,
    MONTHS_EN,
    UNITS,
    WORDS,
    ZH_WORDS,
)


@dataclass(frozen=True)
class Item:
    """One checkable fact: its key, prose for pretraining that ends in the answer, a question, the answer as the
    prose writes it, and a wrong one."""

    key: str
    lang: str
    statement: str
    question: str
    answer: str
    wrong: str

    @property
    def reply(self):
        return f"{self.statement}\n{ANSWER_PREFIX[self.lang]}{self.answer}"

    @property
    def cloze(self):
        """The statement cut right before its answer, and the answer: ("37 plus 45 equals", "82")."""
        cut = self.statement.rindex(self.answer)
        return self.statement[:cut].rstrip(), self.answer

    @property
    def wrong_statement(self):
        """The statement with the wrong answer in the answer's place, for rejected DPO replies."""
        cut = self.statement.rindex(self.answer)
        return self.statement[:cut] + self.wrong + self.statement[cut + len(self.answer) :]


def pick(rng, options):
    return options[rng.randrange(len(options))]


def article(noun):
    return "an" if noun[0] in "aeiou" else "a"


def near_miss(rng, value):
    return str(value + pick(rng, [-10, -2, -1, 1, 2, 10]) if value > 10 else value + pick(rng, [1, 2, 3]))


def _arith(rng, lang, op):
    if op == "mul":
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        result, zh_op, en_op, sym = a * b, "乘以", "times", "×"
    elif op == "sub":
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        result, zh_op, en_op, sym = a - b, "减", "minus", "-"
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        result, zh_op, en_op, sym = a + b, "加", "plus", "+"
    key = f"sub:{a}:{b}" if op == "sub" else f"{op}:{min(a, b)}:{max(a, b)}"
    if lang == "zh":
        statement = pick(rng, [f"{a} {zh_op} {b} 等于 {result}。", f"{a} {sym} {b} = {result}。"])
        question = pick(rng, [f"{a} {zh_op} {b} 等于多少？", f"请计算 {a} {sym} {b}。", f"{a} {sym} {b} 是多少？"])
    else:
        statement = pick(rng, [f"{a} {en_op} {b} equals {result}.", f"{a} {sym} {b} = {result}."])
        question = pick(rng, [f"What is {a} {en_op} {b}?", f"Compute {a} {sym} {b}.", f"How much is {a} {sym} {b}?"])
    return Item(key, lang, statement, question, str(result), near_miss(rng, result))


def _compare(rng, lang):
    """Both numbers come before the answer, in random order, so the statement's shape does not give it away."""
    a, b = rng.sample(range(0, 1000), 2)
    big, small = max(a, b), min(a, b)
    key = f"compare:{small}:{big}"
    if lang == "zh":
        statement = f"比较 {a} 和 {b}，较大的是 {big}。"
        question = pick(rng, [f"{a} 和 {b} 哪个更大？", f"比较 {a} 和 {b}，哪个数更大？"])
    else:
        statement = f"Between {a} and {b}, the larger is {big}."
        question = pick(rng, [f"Which is larger, {a} or {b}?", f"Compare {a} and {b}. Which number is larger?"])
    return Item(key, lang, statement, question, str(big), str(small))


def _count_items(rng, lang):
    length = rng.randint(3, 7)
    basket = [rng.randrange(3) for _ in range(length)]
    target = pick(rng, basket)
    count = basket.count(target)
    key = f"count:{''.join(map(str, basket))}:{target}"
    if lang == "zh":
        listed = "、".join(FRUITS[i][0] for i in basket)
        name = FRUITS[target][0]
        statement = f"在“{listed}”中，{name}出现了 {count} 次。"
        question = f"数一数：“{listed}”里有几个{name}？"
    else:
        listed = ", ".join(FRUITS[i][1] for i in basket)
        name = FRUITS[target][1]
        statement = f"In the list {listed}, the word {name} appears {count} {'time' if count == 1 else 'times'}."
        question = f"Count: how many times does {name} appear in the list {listed}?"
    return Item(key, lang, statement, question, str(count), str(count + 1))


def _count_letters(rng, lang):
    if lang == "zh":
        word = pick(rng, ZH_WORDS)
        statement = f"“{word}”一共有 {len(word)} 个字。"
        question = f"“{word}”有几个字？"
    else:
        word = pick(rng, WORDS)
        statement = f"The word {word} has {len(word)} letters."
        question = f"How many letters are in the word {word}?"
    return Item(f"letters:{word}", lang, statement, question, str(len(word)), str(len(word) + 1))


def _unit(rng, lang):
    zh_big, en_big, zh_small, en_small, factor = pick(rng, UNITS)
    n = rng.randint(2, 20)
    key = f"unit:{en_big}:{n}"
    if lang == "zh":
        statement = f"{n} {zh_big}等于 {n * factor} {zh_small}。"
        question = f"{n} {zh_big}是多少{zh_small}？"
    else:
        statement = f"{n} {en_big} equal {n * factor} {en_small}."
        question = f"How many {en_small} are in {n} {en_big}?"
    return Item(key, lang, statement, question, str(n * factor), str(n * factor + factor))


def _zh_date(day):
    return f"{day.year}年{day.month}月{day.day}日"


def _en_date(day):
    return f"{MONTHS_EN[day.month - 1]} {day.day}, {day.year}"


def _next_day(rng, lang):
    """The answer is the date as the statement writes it; data_process.rewards compares dates by day."""
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randrange(3650))
    after, wrong = day + datetime.timedelta(days=1), day + datetime.timedelta(days=2)
    key = f"next_day:{day.isoformat()}"
    if lang == "zh":
        statement = f"{_zh_date(day)}的后一天是{_zh_date(after)}。"
        return Item(key, lang, statement, f"{_zh_date(day)}的后一天是哪一天？", _zh_date(after), _zh_date(wrong))
    statement = f"The day after {_en_date(day)} is {_en_date(after)}."
    return Item(key, lang, statement, f"What is the day after {_en_date(day)}?", _en_date(after), _en_date(wrong))


def _month_days(rng, lang):
    month = rng.randint(1, 12)
    days = (datetime.date(2023 + month // 12, month % 12 + 1, 1) - datetime.timedelta(days=1)).day
    key = f"month_days:{month}"
    if lang == "zh":
        statement = f"在平年，{month}月有 {days} 天。"
        question = pick(rng, [f"平年的{month}月有多少天？", f"在平年，{month}月一共有几天？"])
    else:
        statement = f"In a common year, {MONTHS_EN[month - 1]} has {days} days."
        question = f"How many days does {MONTHS_EN[month - 1]} have in a common year?"
    return Item(key, lang, statement, question, str(days), str(days + 1))


def _legs(rng, lang, row):
    zh, en, legs, *_ = row
    if lang == "zh":
        question = pick(rng, [f"{zh}有几条腿？", f"一只{zh}有多少条腿？", f"请问{zh}长着几条腿？"])
        return Item(f"animal:{en}", lang, f"{zh}有 {legs} 条腿。", question, str(legs), str(legs + 2))
    a = article(en)
    questions = [f"How many legs does {a} {en} have?", f"{a.capitalize()} {en} has how many legs?"]
    question = pick(rng, questions + [f"Count the legs of {a} {en}."])
    statement = f"{a.capitalize()} {en} has {legs} legs."
    return Item(f"animal:{en}", lang, statement, question, str(legs), str(legs + 2))


def _color(rng, lang, row):
    """Wrong colours come from training rows, so no reply names a held-out object."""
    zh, en, zh_color, en_color = row
    other = pick(rng, [c for c in split_rows("color", "train") if c[2] != zh_color])
    if lang == "zh":
        question = pick(rng, [f"{zh}是什么颜色的？", f"{zh}通常是什么颜色？", f"说出{zh}的颜色。"])
        return Item(f"color:{en}", lang, f"{zh}是{zh_color}的。", question, zh_color, other[2])
    question = pick(rng, [f"What color is {en}?", f"What is the usual color of {en}?", f"Name the color of {en}."])
    return Item(f"color:{en}", lang, f"The color of {en} is {en_color}.", question, en_color, other[3])


def _capital(rng, lang, row):
    """Wrong capitals come from training rows, so no reply names a held-out capital."""
    zh, en, zh_cap, en_cap = row
    other = pick(rng, [c for c in split_rows("capital", "train") if c[0] != zh])
    if lang == "zh":
        question = pick(rng, [f"{zh}的首都是哪里？", f"{zh}的首都是哪座城市？", f"请说出{zh}的首都。"])
        return Item(f"capital:{en}", lang, f"{zh}的首都是{zh_cap}。", question, zh_cap, other[2])
    questions = [f"What is the capital of {en}?", f"Which city is the capital of {en}?", f"Name the capital of {en}."]
    return Item(f"capital:{en}", lang, f"The capital of {en} is {en_cap}.", pick(rng, questions), en_cap, other[3])


FACT_TABLES = {"legs": (ANIMALS, _legs), "color": (COLORS, _color), "capital": (CAPITALS, _capital)}


def _random_row(make, rows):
    return lambda rng, lang: make(rng, lang, pick(rng, rows))


FAMILIES = {
    "add": lambda rng, lang: _arith(rng, lang, "add"),
    "sub": lambda rng, lang: _arith(rng, lang, "sub"),
    "mul": lambda rng, lang: _arith(rng, lang, "mul"),
    "compare": _compare,
    "count": _count_items,
    "unit": _unit,
    "next_day": _next_day,
    "letters": _count_letters,
    "month_days": _month_days,
    **{family: _random_row(make, rows) for family, (rows, make) in FACT_TABLES.items()},
}
TRAIN_FAMILIES = list(FAMILIES.values())
EVAL_FAMILIES = [make for family, make in FAMILIES.items() if family not in TRAIN_ONLY]
# Families with the fewest held-out keys first: what they cannot fill, the later ones share.
PROBE_FAMILIES = ("mul", "unit", "next_day", "count", "compare", "sub", "add")


def sample_item(rng, lang, split="train"):
    """Draw one item of a random family whose key lies in the requested split ("train", "dev" or "eval")."""
    families = TRAIN_FAMILIES if split == "train" else EVAL_FAMILIES
    while True:
        item = pick(rng, families)(rng, lang)
        if split_of(item.key) == split:
            return item
