"""Built-in bilingual corpus: small, deterministic, learnable and checkable.

Every item comes from a task family (arithmetic, comparison, counting, units, dates, small fact tables),
stated in prose for pretraining and asked as a question for SFT, DPO and RL. Assistant replies end with
an answer line (`答案：X` / `Answer: X`) that `data_process.rewards` checks.

Each item has a key naming its checkable content, the same in both languages: the operands (`add:37:45`, in
either order), the date, the unit and amount, the list counted, or the row of a fact table (`animal:cat`,
`capital:Japan`). The eval/ split holds only held-out keys and the training files none of them: 15% of
compositional keys by hash, and 15% of the rows of each fact table (animals, colour objects, countries, words
whose length is counted), whole, so no training text states a fact of a held-out row. Month lengths (12 keys)
and small talk are training-only. `is_heldout` decides a key; `split_keys` replays which keys went where.

eval/completion.jsonl probes generalisation: held-out arithmetic, comparison, counting, unit and date statements
cut right before their answer. eval/trained_facts.jsonl is seen data on purpose: the training statement of
every trained fact, cut the same way, to measure recall. rl_tools.jsonl and eval/rl_tools.jsonl ask for arithmetic
too large to do by heart (family `calc`), for RL with the calculator tool.

    python -m data_process.synth --out data/synth --size small --seed 0
"""

import datetime
import functools
import json
import random
import re
import zlib
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path

from tqdm import tqdm

from data_process.io import build_parser, write_jsonl
from data_process.tools import CALCULATOR_TOOL, calculator

SIZES = {
    "tiny": {"pretrain": 400, "sft": 300, "dpo": 120, "rl": 120, "rl_tools": 60, "eval": 40},
    "small": {"pretrain": 30000, "sft": 8000, "dpo": 2000, "rl": 2000, "rl_tools": 1000, "eval": 400},
    "medium": {"pretrain": 300000, "sft": 60000, "dpo": 12000, "rl": 12000, "rl_tools": 6000, "eval": 2000},
}
ANSWER_PREFIX = {"zh": "答案：", "en": "Answer: "}
HELDOUT_PERCENT = 15

# No Chinese name ends with another (熊猫/猫, 蜗牛/牛): "猫有 4 条腿。" must not hide inside "熊猫有 4 条腿。".
ANIMALS = [
    # zh, en, legs, zh sound, en sound (None: no typical call), zh home, en home
    ("猫", "cat", 4, "喵喵", "meow", "家里", "people's homes"),
    ("狗", "dog", 4, "汪汪", "woof", "家里", "people's homes"),
    ("鸡", "chicken", 2, "咯咯", "cluck", "农场", "farms"),
    ("鸭子", "duck", 2, "嘎嘎", "quack", "池塘边", "ponds"),
    ("牛", "cow", 4, "哞哞", "moo", "农场", "farms"),
    ("羊", "sheep", 4, "咩咩", "baa", "草原", "meadows"),
    ("马", "horse", 4, "咴咴", "neigh", "草原", "meadows"),
    ("蜘蛛", "spider", 8, None, None, "墙角", "corners"),
    ("老鼠", "mouse", 4, "吱吱", "squeak", "洞里", "holes"),
    ("蝴蝶", "butterfly", 6, None, None, "花园", "gardens"),
    ("青蛙", "frog", 4, "呱呱", "croak", "池塘边", "ponds"),
    ("螃蟹", "crab", 10, None, None, "海边", "beaches"),
    ("鸟", "bird", 2, "叽叽喳喳", "tweet", "树上", "trees"),
    ("猪", "pig", 4, "哼哼", "oink", "农场", "farms"),
    ("兔子", "rabbit", 4, None, None, "草地", "fields"),
    ("大象", "elephant", 4, None, None, "草原", "grasslands"),
    ("狮子", "lion", 4, "吼吼", "roar", "草原", "grasslands"),
    ("老虎", "tiger", 4, None, None, "森林", "forests"),
    ("蚂蚁", "ant", 6, None, None, "草地", "fields"),
    ("蜜蜂", "bee", 6, "嗡嗡", "buzz", "花园", "gardens"),
    ("章鱼", "octopus", 8, None, None, "海里", "the sea"),
    ("企鹅", "penguin", 2, None, None, "南极", "the South Pole"),
    ("蛇", "snake", 0, "嘶嘶", "hiss", "草丛", "tall grass"),
    ("熊", "bear", 4, None, None, "森林", "forests"),
    ("狼", "wolf", 4, "嗷呜", "howl", "森林", "forests"),
    ("鹿", "deer", 4, None, None, "森林", "forests"),
    ("骆驼", "camel", 4, None, None, "沙漠", "deserts"),
    ("鸽子", "pigeon", 2, "咕咕", "coo", "城市", "cities"),
    ("乌龟", "turtle", 4, None, None, "池塘边", "ponds"),
    ("蝎子", "scorpion", 8, None, None, "沙漠", "deserts"),
    ("甲虫", "beetle", 6, None, None, "树林", "woods"),
    ("松鼠", "squirrel", 4, "吱吱", "squeak", "树上", "trees"),
    ("蜻蜓", "dragonfly", 6, None, None, "池塘边", "ponds"),
]
COLORS = [
    ("苹果", "apple", "红色", "red"),
    ("香蕉", "banana", "黄色", "yellow"),
    ("天空", "sky", "蓝色", "blue"),
    ("草", "grass", "绿色", "green"),
    ("雪", "snow", "白色", "white"),
    ("煤", "coal", "黑色", "black"),
    ("橙子", "orange", "橙色", "orange"),
    ("葡萄", "grape", "紫色", "purple"),
    ("柠檬", "lemon", "黄色", "yellow"),
    ("牛奶", "milk", "白色", "white"),
    ("树叶", "leaf", "绿色", "green"),
    ("乌鸦", "crow", "黑色", "black"),
    ("草莓", "strawberry", "红色", "red"),
    ("番茄", "tomato", "红色", "red"),
    ("茄子", "eggplant", "紫色", "purple"),
    ("胡萝卜", "carrot", "橙色", "orange"),
    ("大海", "sea", "蓝色", "blue"),
    ("云", "cloud", "白色", "white"),
    ("血", "blood", "红色", "red"),
    ("黄瓜", "cucumber", "绿色", "green"),
    ("玉米", "corn", "黄色", "yellow"),
    ("巧克力", "chocolate", "棕色", "brown"),
    ("咖啡", "coffee", "棕色", "brown"),
    ("盐", "salt", "白色", "white"),
    ("夜空", "night sky", "黑色", "black"),
    ("向日葵", "sunflower", "黄色", "yellow"),
    ("蓝莓", "blueberry", "蓝色", "blue"),
    ("樱桃", "cherry", "红色", "red"),
    ("木头", "wood", "棕色", "brown"),
    ("松树", "pine tree", "绿色", "green"),
    ("火烈鸟", "flamingo", "粉色", "pink"),
    ("桃子", "peach", "粉色", "pink"),
]
CAPITALS = [
    ("中国", "China", "北京", "Beijing"),
    ("日本", "Japan", "东京", "Tokyo"),
    ("法国", "France", "巴黎", "Paris"),
    ("英国", "the United Kingdom", "伦敦", "London"),
    ("德国", "Germany", "柏林", "Berlin"),
    ("意大利", "Italy", "罗马", "Rome"),
    ("俄罗斯", "Russia", "莫斯科", "Moscow"),
    ("韩国", "South Korea", "首尔", "Seoul"),
    ("埃及", "Egypt", "开罗", "Cairo"),
    ("加拿大", "Canada", "渥太华", "Ottawa"),
    ("澳大利亚", "Australia", "堪培拉", "Canberra"),
    ("西班牙", "Spain", "马德里", "Madrid"),
    ("泰国", "Thailand", "曼谷", "Bangkok"),
    ("希腊", "Greece", "雅典", "Athens"),
    ("印度", "India", "新德里", "New Delhi"),
    ("巴西", "Brazil", "巴西利亚", "Brasilia"),
    ("阿根廷", "Argentina", "布宜诺斯艾利斯", "Buenos Aires"),
    ("葡萄牙", "Portugal", "里斯本", "Lisbon"),
    ("荷兰", "the Netherlands", "阿姆斯特丹", "Amsterdam"),
    ("瑞典", "Sweden", "斯德哥尔摩", "Stockholm"),
    ("挪威", "Norway", "奥斯陆", "Oslo"),
    ("芬兰", "Finland", "赫尔辛基", "Helsinki"),
    ("波兰", "Poland", "华沙", "Warsaw"),
    ("土耳其", "Turkey", "安卡拉", "Ankara"),
    ("越南", "Vietnam", "河内", "Hanoi"),
    ("印度尼西亚", "Indonesia", "雅加达", "Jakarta"),
    ("爱尔兰", "Ireland", "都柏林", "Dublin"),
    ("奥地利", "Austria", "维也纳", "Vienna"),
    ("瑞士", "Switzerland", "伯尔尼", "Bern"),
    ("肯尼亚", "Kenya", "内罗毕", "Nairobi"),
    ("秘鲁", "Peru", "利马", "Lima"),
    ("古巴", "Cuba", "哈瓦那", "Havana"),
    ("新西兰", "New Zealand", "惠灵顿", "Wellington"),
    ("蒙古", "Mongolia", "乌兰巴托", "Ulaanbaatar"),
    ("丹麦", "Denmark", "哥本哈根", "Copenhagen"),
]
UNITS = [
    # zh big, en big, zh small, en small, factor
    ("公里", "kilometers", "米", "meters", 1000),
    ("米", "meters", "厘米", "centimeters", 100),
    ("小时", "hours", "分钟", "minutes", 60),
    ("分钟", "minutes", "秒", "seconds", 60),
    ("天", "days", "小时", "hours", 24),
    ("周", "weeks", "天", "days", 7),
    ("千克", "kilograms", "克", "grams", 1000),
    ("年", "years", "个月", "months", 12),
    ("升", "liters", "毫升", "milliliters", 1000),
]
FRUITS = [("苹果", "apple"), ("香蕉", "banana"), ("梨", "pear"), ("桃子", "peach"), ("橙子", "orange")]
WORDS = [
    "cat",
    "apple",
    "banana",
    "river",
    "mountain",
    "sun",
    "book",
    "garden",
    "window",
    "music",
    "tree",
    "house",
    "dog",
    "water",
    "flower",
    "pencil",
    "school",
    "orange",
    "table",
    "cloud",
    "bird",
    "summer",
    "winter",
    "friend",
    "rabbit",
    "moon",
    "city",
    "chair",
    "yellow",
    "dragon",
]
ZH_WORDS = [
    "你好",
    "春天",
    "图书馆",
    "小猫",
    "大熊猫",
    "天气很好",
    "学习",
    "长江",
    "飞机场",
    "中秋节",
    "月亮",
    "太阳",
    "朋友",
    "电脑",
    "火车站",
    "自行车",
    "动物园",
    "我爱你",
    "好好学习",
    "长城",
    "黄河",
    "运动会",
    "生日快乐",
    "早上好",
]
MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]

SYSTEM_PROMPTS = {
    "zh": ["你是一个乐于助人的助手。", "你是 MiniMind，一个小而聪明的语言模型。", "请用简洁的中文回答问题。"],
    "en": ["You are a helpful assistant.", "You are MiniMind, a small but careful language model.", "Answer briefly."],
}
RL_SYSTEM = {
    "zh": "先简要说明思路，再在最后一行用“答案：X”的格式给出答案。",
    "en": "Explain briefly, then give the final answer on the last line as 'Answer: X'.",
}
CHITCHAT = {
    "zh": [
        ("你好", "你好！我是 MiniMind，一个小型语言模型。有什么可以帮你的吗？"),
        ("你是谁？", "我是 MiniMind，一个从零开始训练的小型语言模型，可以回答简单的算术和常识问题。"),
        ("谢谢你！", "不客气！如果还有问题，随时问我。"),
        ("你会做什么？", "我会做加减乘法、比较大小、数数、换算单位，也知道一些动物、颜色和首都的常识。"),
        ("再见", "再见！祝你今天愉快。"),
    ],
    "en": [
        ("Hello", "Hello! I am MiniMind, a small language model. How can I help you?"),
        ("Who are you?", "I am MiniMind, a small language model trained from scratch. I answer simple questions."),
        ("Thank you!", "You're welcome! Ask me anything else any time."),
        ("What can you do?", "I can add, subtract, multiply, compare numbers, count, convert units and recall facts."),
        ("Goodbye", "Goodbye! Have a nice day."),
    ],
}


def _held_out(names):
    """The HELDOUT_PERCENT of names hashing lowest: a fixed share that no seed changes."""
    ranked = sorted(names, key=lambda name: zlib.crc32(name.encode("utf-8")))
    return frozenset(ranked[: max(1, round(len(names) * HELDOUT_PERCENT / 100))])


# Fact tables by key family. Their rows are held out whole, named by the English column; every other key is
# split by a hash of the whole key.
TABLES = {"animal": ANIMALS, "color": COLORS, "capital": CAPITALS}
HELDOUT_ROWS = {family: _held_out([row[1] for row in rows]) for family, rows in TABLES.items()}
HELDOUT_ROWS["letters"] = _held_out(WORDS) | _held_out(ZH_WORDS)
TRAIN_ONLY = ("month_days",)  # 12 keys, one fact each: too few to hold any out


def is_heldout(key):
    """Whether an item key belongs to the eval split."""
    family, name = key.split(":", 1)
    if family in HELDOUT_ROWS:
        return name in HELDOUT_ROWS[family]
    return family not in TRAIN_ONLY and zlib.crc32(key.encode("utf-8")) % 100 < HELDOUT_PERCENT


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


def _pick(rng, options):
    return options[rng.randrange(len(options))]


@functools.cache
def _split_rows(family, eval_split):
    """The rows of a fact table in one split; cached, as every colour or capital item looks them up."""
    return [row for row in TABLES[family] if is_heldout(f"{family}:{row[1]}") == eval_split]


def _article(noun):
    return "an" if noun[0] in "aeiou" else "a"


def _near_miss(rng, value):
    return str(value + _pick(rng, [-10, -2, -1, 1, 2, 10]) if value > 10 else value + _pick(rng, [1, 2, 3]))


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
        statement = _pick(rng, [f"{a} {zh_op} {b} 等于 {result}。", f"{a} {sym} {b} = {result}。"])
        question = _pick(rng, [f"{a} {zh_op} {b} 等于多少？", f"请计算 {a} {sym} {b}。", f"{a} {sym} {b} 是多少？"])
    else:
        statement = _pick(rng, [f"{a} {en_op} {b} equals {result}.", f"{a} {sym} {b} = {result}."])
        question = _pick(rng, [f"What is {a} {en_op} {b}?", f"Compute {a} {sym} {b}.", f"How much is {a} {sym} {b}?"])
    return Item(key, lang, statement, question, str(result), _near_miss(rng, result))


def _compare(rng, lang):
    """Both numbers come before the answer, in random order, so the statement's shape does not give it away."""
    a, b = rng.sample(range(0, 1000), 2)
    big, small = max(a, b), min(a, b)
    key = f"compare:{small}:{big}"
    if lang == "zh":
        statement = f"比较 {a} 和 {b}，较大的是 {big}。"
        question = _pick(rng, [f"{a} 和 {b} 哪个更大？", f"比较 {a} 和 {b}，哪个数更大？"])
    else:
        statement = f"Between {a} and {b}, the larger is {big}."
        question = _pick(rng, [f"Which is larger, {a} or {b}?", f"Compare {a} and {b}. Which number is larger?"])
    return Item(key, lang, statement, question, str(big), str(small))


def _count_items(rng, lang):
    length = rng.randint(3, 7)
    basket = [rng.randrange(3) for _ in range(length)]
    target = _pick(rng, basket)
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
        word = _pick(rng, ZH_WORDS)
        statement = f"“{word}”一共有 {len(word)} 个字。"
        question = f"“{word}”有几个字？"
    else:
        word = _pick(rng, WORDS)
        statement = f"The word {word} has {len(word)} letters."
        question = f"How many letters are in the word {word}?"
    return Item(f"letters:{word}", lang, statement, question, str(len(word)), str(len(word) + 1))


def _unit(rng, lang):
    zh_big, en_big, zh_small, en_small, factor = _pick(rng, UNITS)
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
        question = _pick(rng, [f"平年的{month}月有多少天？", f"在平年，{month}月一共有几天？"])
    else:
        statement = f"In a common year, {MONTHS_EN[month - 1]} has {days} days."
        question = f"How many days does {MONTHS_EN[month - 1]} have in a common year?"
    return Item(key, lang, statement, question, str(days), str(days + 1))


def _legs(rng, lang, row):
    zh, en, legs, *_ = row
    if lang == "zh":
        question = _pick(rng, [f"{zh}有几条腿？", f"一只{zh}有多少条腿？", f"请问{zh}长着几条腿？"])
        return Item(f"animal:{en}", lang, f"{zh}有 {legs} 条腿。", question, str(legs), str(legs + 2))
    a = _article(en)
    questions = [f"How many legs does {a} {en} have?", f"{a.capitalize()} {en} has how many legs?"]
    question = _pick(rng, questions + [f"Count the legs of {a} {en}."])
    statement = f"{a.capitalize()} {en} has {legs} legs."
    return Item(f"animal:{en}", lang, statement, question, str(legs), str(legs + 2))


def _color(rng, lang, row):
    """Wrong colours come from training rows, so no reply names a held-out object."""
    zh, en, zh_color, en_color = row
    other = _pick(rng, [c for c in _split_rows("color", False) if c[2] != zh_color])
    if lang == "zh":
        question = _pick(rng, [f"{zh}是什么颜色的？", f"{zh}通常是什么颜色？", f"说出{zh}的颜色。"])
        return Item(f"color:{en}", lang, f"{zh}是{zh_color}的。", question, zh_color, other[2])
    question = _pick(rng, [f"What color is {en}?", f"What is the usual color of {en}?", f"Name the color of {en}."])
    return Item(f"color:{en}", lang, f"The color of {en} is {en_color}.", question, en_color, other[3])


def _capital(rng, lang, row):
    """Wrong capitals come from training rows, so no reply names a held-out capital."""
    zh, en, zh_cap, en_cap = row
    other = _pick(rng, [c for c in _split_rows("capital", False) if c[0] != zh])
    if lang == "zh":
        question = _pick(rng, [f"{zh}的首都是哪里？", f"{zh}的首都是哪座城市？", f"请说出{zh}的首都。"])
        return Item(f"capital:{en}", lang, f"{zh}的首都是{zh_cap}。", question, zh_cap, other[2])
    questions = [f"What is the capital of {en}?", f"Which city is the capital of {en}?", f"Name the capital of {en}."]
    return Item(f"capital:{en}", lang, f"The capital of {en} is {en_cap}.", _pick(rng, questions), en_cap, other[3])


FACT_TABLES = {"legs": (ANIMALS, _legs), "color": (COLORS, _color), "capital": (CAPITALS, _capital)}


def _random_row(make, rows):
    return lambda rng, lang: make(rng, lang, _pick(rng, rows))


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


def sample_item(rng, lang, eval_split=False):
    """Draw one item of a random family whose key lies in the requested split."""
    families = EVAL_FAMILIES if eval_split else TRAIN_FAMILIES
    while True:
        item = _pick(rng, families)(rng, lang)
        if is_heldout(item.key) == eval_split:
            return item


def _lang(rng):
    return "zh" if rng.random() < 0.5 else "en"


def _animal_paragraph(rng, lang, eval_split):
    zh, en, legs, zh_sound, en_sound, zh_home, en_home = _pick(rng, _split_rows("animal", eval_split))
    if lang == "zh":
        sentences = [f"{zh}是一种常见的动物。", f"{zh}有 {legs} 条腿。", f"{zh}常常生活在{zh_home}。"]
        if zh_sound:
            sentences.insert(2, f"{zh}的叫声是“{zh_sound}”。")
        return {"text": "".join(sentences)}, [f"animal:{en}"]
    a = _article(en).capitalize()
    sentences = [f"The {en} is a common animal.", f"{a} {en} has {legs} legs.", f"{a} {en} often lives near {en_home}."]
    if en_sound:
        sentences.insert(2, f"{a} {en} says {en_sound}.")
    return {"text": " ".join(sentences)}, [f"animal:{en}"]


# Each maker returns (record, keys): the record in its project format and the item keys it states.
def pretrain_doc(rng, eval_split=False):
    """One short monolingual paragraph of related statements."""
    lang = _lang(rng)
    if rng.random() < 0.15:
        return _animal_paragraph(rng, lang, eval_split)
    items = [sample_item(rng, lang, eval_split) for _ in range(rng.randint(3, 8))]
    return {"text": ("" if lang == "zh" else " ").join(i.statement for i in items)}, [i.key for i in items]


def _assistant(item):
    return {"role": "assistant", "content": item.reply}


def _system(rng, lang):
    return [{"role": "system", "content": _pick(rng, SYSTEM_PROMPTS[lang])}] if rng.random() < 0.8 else []


def sft_record(rng, eval_split=False):
    """A 1-3 turn conversation, usually with a system prompt; some training turns are small talk, never eval ones."""
    lang = _lang(rng)
    messages, keys = _system(rng, lang), []
    for _ in range(rng.randint(1, 3)):
        if not eval_split and rng.random() < 0.1:
            question, reply = _pick(rng, CHITCHAT[lang])
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        else:
            item = sample_item(rng, lang, eval_split)
            messages += [{"role": "user", "content": item.question}, _assistant(item)]
            keys.append(item.key)
    return {"conversations": messages}, keys


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
        first = FAMILIES[_pick(rng, ("add", "sub", "mul"))](rng, lang)
        previous, op = int(first.answer), _pick(rng, ("add", "sub", "mul"))
        n = rng.randint(2, 5) if op == "mul" else rng.randint(1, 20)
        if op == "sub" and n > previous:
            continue
        key, statement, result = _step(lang, op, previous, n)
        if not is_heldout(first.key) and not is_heldout(key):
            break
    second = Item(key, lang, statement, FOLLOW_UPS[op][lang].format(n=n), str(result), _near_miss(rng, result))
    messages = _system(rng, lang)
    for item in (first, second):
        messages += [{"role": "user", "content": item.question}, _assistant(item)]
    return {"conversations": messages}, [first.key, key]


def _chain(rng, lang, eval_split):
    """Three numbers added or subtracted left to right, both intermediate steps keyed in the requested split."""
    while True:
        a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(0, 99)
        first_op, second_op = _pick(rng, ("add", "sub")), _pick(rng, ("add", "sub"))
        if first_op == "sub" and b > a:
            a, b = b, a
        first_key, first_step, partial = _step(lang, first_op, a, b)
        if second_op == "sub" and c > partial:
            second_op = "add"
        second_key, second_step, result = _step(lang, second_op, partial, c)
        if is_heldout(first_key) == eval_split and is_heldout(second_key) == eval_split:
            expression = f"{a} {SYMBOLS[first_op]} {b} {SYMBOLS[second_op]} {c}"
            return expression, (first_step, second_step), result, [first_key, second_key]


def thinking_record(rng, eval_split=False):
    """A two-step sum whose steps are worked out in `reasoning_content` (rendered as <think>...</think>) before the
    reply states the result."""
    lang = _lang(rng)
    expression, steps, result, keys = _chain(rng, lang, eval_split)
    question = _pick(rng, CHAIN_QUESTIONS[lang]).format(expression=expression)
    reasoning = ("" if lang == "zh" else " ").join(steps)
    reply = {"role": "assistant", "content": _final_reply(lang, expression, result), "reasoning_content": reasoning}
    return {"conversations": _system(rng, lang) + [{"role": "user", "content": question}, reply]}, keys


def _calculator_expression(rng):
    a, b, c = rng.randint(100, 999), rng.randint(11, 99), rng.randint(2, 999)
    shapes = [f"{a} * {b}", f"{a} * {b} + {c}", f"{a} * {b} - {c}", f"({a} + {c}) * {b}", f"{a * b} / {b}"]
    return _pick(rng, shapes)


def tool_record(rng, eval_split=False):
    """Arithmetic too large to do by heart: the assistant calls the `calculator` tool, the tool turn returns what
    data_process.tools computes, and the assistant states the answer. The record carries the tool list in `tools`."""
    lang = _lang(rng)
    expression = _calculator_expression(rng)
    while is_heldout(f"calc:{expression}") != eval_split:
        expression = _calculator_expression(rng)
    result = calculator(expression)
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    messages = _system(rng, lang) + [
        {"role": "user", "content": _pick(rng, CALCULATOR_QUESTIONS[lang]).format(expression=expression)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": _final_reply(lang, expression, result)},
    ]
    return {"conversations": messages, "tools": [CALCULATOR_TOOL]}, [f"calc:{expression}"]


def chat_record(rng, eval_split=False):
    """One SFT conversation: mostly `sft_record`'s questions; a tenth each are follow-ups (training only), thinking
    and calculator conversations."""
    kind = rng.random()
    if kind < 0.1 and not eval_split:
        return follow_up_record(rng)
    if kind < 0.2:
        return thinking_record(rng, eval_split)
    if kind < 0.3:
        return tool_record(rng, eval_split)
    return sft_record(rng, eval_split)


def _bad_reply(rng, item):
    """A rejected reply: wrong answer, missing answer line, or degenerate repetition."""
    kind = rng.randrange(3)
    if kind == 0:
        return f"{item.wrong_statement}\n{ANSWER_PREFIX[item.lang]}{item.wrong}"
    if kind == 1:
        return "嗯，这个问题我不太确定，可能是吧。" if item.lang == "zh" else "Hmm, I am not sure, maybe."
    return " ".join([item.question] * 3)


def dpo_record(rng, eval_split=False):
    lang = _lang(rng)
    item = sample_item(rng, lang, eval_split)
    prompt = _system(rng, lang) + [{"role": "user", "content": item.question}]
    record = {
        "chosen": prompt + [_assistant(item)],
        "rejected": prompt + [{"role": "assistant", "content": _bad_reply(rng, item)}],
    }
    return record, [item.key]


def rl_record(rng, eval_split=False):
    lang = _lang(rng)
    item = sample_item(rng, lang, eval_split)
    prompt = [{"role": "system", "content": RL_SYSTEM[lang]}, {"role": "user", "content": item.question}]
    return {"prompt": prompt, "answer": item.answer, "family": item.key.split(":")[0]}, [item.key]


def rl_tools_record(rng, eval_split=False):
    """An `rl` question for the calculator (operands too large to multiply by heart), keyed like `tool_record`'s
    conversations, so a held-out expression is in no SFT or RL training file. The record lists its tools in `tools`."""
    lang = _lang(rng)
    expression = _calculator_expression(rng)
    while is_heldout(f"calc:{expression}") != eval_split:
        expression = _calculator_expression(rng)
    prompt = [
        {"role": "system", "content": RL_SYSTEM[lang]},
        {"role": "user", "content": _pick(rng, CALCULATOR_QUESTIONS[lang]).format(expression=expression)},
    ]
    record = {"prompt": prompt, "answer": calculator(expression), "family": "calc", "tools": [CALCULATOR_TOOL]}
    return record, [f"calc:{expression}"]


MAKERS = {
    "pretrain": pretrain_doc,
    "sft": chat_record,
    "dpo": dpo_record,
    "rl": rl_record,
    "rl_tools": rl_tools_record,
}


def iter_keyed_records(kind, seed=0, eval_split=False):
    """Endless stream of (record, item keys) of one kind; the same seed gives the same stream."""
    rng = random.Random(f"{kind}:{seed}:{eval_split}")
    make = MAKERS[kind]
    while True:
        yield make(rng, eval_split)


def iter_records(kind, seed=0, eval_split=False):
    """Endless stream of records of one kind; the same seed gives the same stream."""
    return (record for record, _ in iter_keyed_records(kind, seed, eval_split))


def _take(kind, count, seed, eval_split):
    return islice(iter_records(kind, seed, eval_split), count)


def _answer_given(prompt, answer):
    """Whether the answer already stands in the prompt as a whole word, as in "0 plus 5 equals" -> "5"."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", prompt) is not None


def _probe(family, item):
    prompt, answer = item.cloze
    return {"family": family, "lang": item.lang, "prompt": prompt, "answer": answer, "key": item.key}


def _family_probes(rng, family, lang, quota):
    """Up to `quota` distinct held-out probes of one family and language; mul and unit run out at a few dozen."""
    make = FAMILIES[family]
    probes = {}
    for _ in range(100 * quota):
        if len(probes) == quota:
            break
        item = make(rng, lang)
        prompt, answer = item.cloze
        if is_heldout(item.key) and (family == "compare" or not _answer_given(prompt, answer)):
            probes.setdefault(prompt, _probe(family, item))
    return list(probes.values())


def completion_probes(count, seed=0):
    """`count` held-out statements cut right before their answer, shared by family and language and interleaved.

    The whole answer is scored. Items whose answer already stands in the prompt are skipped, except comparisons:
    there both numbers are given, in random order, and the model must choose.
    """
    rng = random.Random(f"completion:{seed}")
    slots = [(family, lang) for family in PROBE_FAMILIES for lang in ANSWER_PREFIX]
    groups = []
    for i, (family, lang) in enumerate(slots):
        quota = (count - sum(map(len, groups))) // (len(slots) - i)
        groups.append(_family_probes(rng, family, lang, quota))
    return [probe for row in zip_longest(*groups) for probe in row if probe]


def trained_fact_probes():
    """Seen data on purpose: every trained fact row's pretraining statement, cut before its answer, for recall."""
    rng = random.Random(0)  # picks question phrasings and wrong answers, which probes do not use
    probes = []
    for family, (rows, make) in FACT_TABLES.items():
        for row in rows:
            for lang in ANSWER_PREFIX:
                item = make(rng, lang, row)
                if not is_heldout(item.key):
                    probes.append(_probe(family, item))
    return probes


def _counts(size):
    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    return SIZES[size]


def split_keys(size="tiny", seed=0):
    """The item keys build_corpus(out, size, seed) writes into the training files and into eval/, replayed."""
    counts = _counts(size)
    keys = {"train": set(), "eval": set()}
    for kind in MAKERS:
        for split, count in (("train", counts[kind]), ("eval", counts["eval"])):
            for _, record_keys in islice(iter_keyed_records(kind, seed, split == "eval"), count):
                keys[split].update(record_keys)
    return keys


def build_corpus(out_dir, size="tiny", seed=0):
    """Write pretrain/sft/dpo/rl/rl_tools JSONL files and an eval/ folder of held-out splits and probes; return their
    paths (`rl_tools` and `eval_rl_tools` are the calculator questions for GRPO with tools, training and held-out)."""
    counts = _counts(size)
    out_dir = Path(out_dir)
    eval_dir = out_dir / "eval"
    paths = {}
    written = {}
    for kind in tqdm(MAKERS, desc=f"synth {size}", disable=size == "tiny"):
        paths[kind] = out_dir / f"{kind}.jsonl"
        written[kind] = write_jsonl(paths[kind], _take(kind, counts[kind], seed, eval_split=False))
        written[f"eval/{kind}"] = write_jsonl(eval_dir / f"{kind}.jsonl", _take(kind, counts["eval"], seed, True))
    paths["eval_rl_tools"] = eval_dir / "rl_tools.jsonl"
    paths["completion"] = eval_dir / "completion.jsonl"
    written["eval/completion"] = write_jsonl(paths["completion"], completion_probes(counts["eval"], seed))
    paths["trained_facts"] = eval_dir / "trained_facts.jsonl"
    written["eval/trained_facts"] = write_jsonl(paths["trained_facts"], trained_fact_probes())
    heldout = {family: sorted(names) for family, names in HELDOUT_ROWS.items()}
    manifest = {"size": size, "seed": seed, "records": written, "heldout_percent": HELDOUT_PERCENT, "heldout": heldout}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    paths["eval"] = eval_dir
    return paths


def make_parser():
    parser = build_parser(__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", default="small", choices=tuple(SIZES), help="tiny: tests; small: demo; medium")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    paths = build_corpus(args.out, size=args.size, seed=args.seed)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
