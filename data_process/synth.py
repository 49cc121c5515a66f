"""Built-in bilingual corpus: small, deterministic, learnable and checkable.

Every item comes from a task family (arithmetic, comparison, counting, units, dates, small fact tables),
stated in prose for pretraining and asked as a question for SFT, DPO and RL. Assistant replies end with
an answer line (`答案：X` / `Answer: X`) that `data_process.rewards` checks. Held-out eval items never
appear in the training files: compositional items are split by a hash of their key, fact questions by
phrasing.

    python -m data_process.synth --out data/synth --size small --seed 0
"""

import datetime
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_process.io import build_parser, write_jsonl

SIZES = {
    "tiny": {"pretrain": 400, "sft": 300, "dpo": 120, "rl": 120, "eval": 40},
    "small": {"pretrain": 30000, "sft": 8000, "dpo": 2000, "rl": 2000, "eval": 400},
    "medium": {"pretrain": 300000, "sft": 60000, "dpo": 12000, "rl": 12000, "eval": 2000},
}
ANSWER_PREFIX = {"zh": "答案：", "en": "Answer: "}
HELDOUT_PERCENT = 10

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
WORDS = ["cat", "apple", "banana", "river", "mountain", "sun", "book", "garden", "window", "music", "tree", "house"]
ZH_WORDS = ["你好", "春天", "图书馆", "小猫", "大熊猫", "天气很好", "学习", "长江", "飞机场", "中秋节"]
MONTHS_EN = "January February March April May June July August September October November December".split()

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


@dataclass(frozen=True)
class Item:
    """One checkable fact: prose for pretraining, a question, its canonical answer and a wrong one."""

    key: str
    lang: str
    statement: str
    question: str
    answer: str
    wrong: str
    heldout: bool

    @property
    def reply(self):
        return f"{self.statement}\n{ANSWER_PREFIX[self.lang]}{self.answer}"


def _heldout(key):
    return zlib.crc32(key.encode("utf-8")) % 100 < HELDOUT_PERCENT


def _pick(rng, options):
    return options[rng.randrange(len(options))]


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
    key = f"{op}:{a}:{b}"
    if lang == "zh":
        statement = _pick(rng, [f"{a} {zh_op} {b} 等于 {result}。", f"{a} {sym} {b} = {result}。"])
        question = _pick(rng, [f"{a} {zh_op} {b} 等于多少？", f"请计算 {a} {sym} {b}。", f"{a} {sym} {b} 是多少？"])
    else:
        statement = _pick(rng, [f"{a} {en_op} {b} equals {result}.", f"{a} {sym} {b} = {result}."])
        question = _pick(rng, [f"What is {a} {en_op} {b}?", f"Compute {a} {sym} {b}.", f"How much is {a} {sym} {b}?"])
    return Item(key, lang, statement, question, str(result), _near_miss(rng, result), _heldout(key))


def _compare(rng, lang):
    a, b = rng.sample(range(0, 1000), 2)
    big, small = max(a, b), min(a, b)
    key = f"cmp:{a}:{b}"
    if lang == "zh":
        statement = f"{big} 比 {small} 大。"
        question = _pick(rng, [f"{a} 和 {b} 哪个更大？", f"比较 {a} 和 {b}，哪个数更大？"])
    else:
        statement = f"{big} is larger than {small}."
        question = _pick(rng, [f"Which is larger, {a} or {b}?", f"Compare {a} and {b}. Which number is larger?"])
    return Item(key, lang, statement, question, str(big), str(small), _heldout(key))


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
        statement = f"In the list {listed}, the word {name} appears {count} times."
        question = f"Count: how many times does {name} appear in the list {listed}?"
    return Item(key, lang, statement, question, str(count), str(count + 1), _heldout(key))


def _count_letters(rng, lang):
    if lang == "zh":
        word = _pick(rng, ZH_WORDS)
        key = f"zhlen:{word}"
        statement = f"“{word}”一共有 {len(word)} 个字。"
        question = f"“{word}”有几个字？"
    else:
        word = _pick(rng, WORDS)
        key = f"enlen:{word}"
        statement = f"The word {word} has {len(word)} letters."
        question = f"How many letters are in the word {word}?"
    return Item(key, lang, statement, question, str(len(word)), str(len(word) + 1), False)


def _unit(rng, lang):
    zh_big, en_big, zh_small, en_small, factor = _pick(rng, UNITS)
    n = rng.randint(1, 20)
    key = f"unit:{en_big}:{n}"
    if lang == "zh":
        statement = f"{n} {zh_big}等于 {n * factor} {zh_small}。"
        question = f"{n} {zh_big}是多少{zh_small}？"
    else:
        statement = f"{n} {en_big} equal {n * factor} {en_small}."
        question = f"How many {en_small} are in {n} {en_big}?"
    return Item(key, lang, statement, question, str(n * factor), str(n * factor + factor), _heldout(key))


def _zh_date(day):
    return f"{day.year}年{day.month}月{day.day}日"


def _en_date(day):
    return f"{MONTHS_EN[day.month - 1]} {day.day}, {day.year}"


def _next_day(rng, lang):
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randrange(3650))
    after = day + datetime.timedelta(days=1)
    key = f"date:{day.isoformat()}"
    if lang == "zh":
        statement = f"{_zh_date(day)}的后一天是{_zh_date(after)}。"
        question = f"{_zh_date(day)}的后一天是哪一天？"
    else:
        statement = f"The day after {_en_date(day)} is {_en_date(after)}."
        question = f"What is the day after {_en_date(day)}?"
    wrong = (after + datetime.timedelta(days=1)).isoformat()
    return Item(key, lang, statement, question, after.isoformat(), wrong, _heldout(key))


def _month_days(rng, lang):
    month = rng.randint(1, 12)
    days = (datetime.date(2023 + month // 12, month % 12 + 1, 1) - datetime.timedelta(days=1)).day
    key = f"monthdays:{month}"
    if lang == "zh":
        statement = f"在平年，{month}月有 {days} 天。"
        question = _pick(rng, [f"平年的{month}月有多少天？", f"在平年，{month}月一共有几天？"])
    else:
        statement = f"In a common year, {MONTHS_EN[month - 1]} has {days} days."
        question = _pick(rng, [f"How many days does {MONTHS_EN[month - 1]} have in a common year?"])
    return Item(key, lang, statement, question, str(days), str(days + 1), False)


# Fact questions: the last phrasing of each list is kept for the eval split.
def _legs(rng, lang, eval_split):
    zh, en, legs, *_ = _pick(rng, ANIMALS)
    phrasings = {
        "zh": [f"{zh}有几条腿？", f"一只{zh}有多少条腿？", f"请问{zh}长着几条腿？"],
        "en": [f"How many legs does a {en} have?", f"A {en} has how many legs?", f"Count the legs of a {en}."],
    }[lang]
    question = phrasings[-1] if eval_split else _pick(rng, phrasings[:-1])
    statement = f"{zh}有 {legs} 条腿。" if lang == "zh" else f"A {en} has {legs} legs."
    return Item(f"legs:{en}", lang, statement, question, str(legs), str(legs + 2), False)


def _color(rng, lang, eval_split):
    zh, en, zh_color, en_color = _pick(rng, COLORS)
    other = _pick(rng, [c for c in COLORS if c[2] != zh_color])
    phrasings = {
        "zh": [f"{zh}是什么颜色的？", f"{zh}通常是什么颜色？", f"说出{zh}的颜色。"],
        "en": [f"What color is {en}?", f"What is the usual color of {en}?", f"Name the color of {en}."],
    }[lang]
    question = phrasings[-1] if eval_split else _pick(rng, phrasings[:-1])
    if lang == "zh":
        return Item(f"color:{en}", lang, f"{zh}是{zh_color}的。", question, zh_color, other[2], False)
    return Item(f"color:{en}", lang, f"The color of {en} is {en_color}.", question, en_color, other[3], False)


def _capital(rng, lang, eval_split):
    zh, en, zh_cap, en_cap = _pick(rng, CAPITALS)
    other = _pick(rng, [c for c in CAPITALS if c[0] != zh])
    phrasings = {
        "zh": [f"{zh}的首都是哪里？", f"{zh}的首都是哪座城市？", f"请说出{zh}的首都。"],
        "en": [f"What is the capital of {en}?", f"Which city is the capital of {en}?", f"Name the capital of {en}."],
    }[lang]
    question = phrasings[-1] if eval_split else _pick(rng, phrasings[:-1])
    if lang == "zh":
        return Item(f"capital:{en}", lang, f"{zh}的首都是{zh_cap}。", question, zh_cap, other[2], False)
    return Item(f"capital:{en}", lang, f"The capital of {en} is {en_cap}.", question, en_cap, other[3], False)


COMPOSITIONAL = [
    lambda rng, lang: _arith(rng, lang, "add"),
    lambda rng, lang: _arith(rng, lang, "sub"),
    lambda rng, lang: _arith(rng, lang, "mul"),
    _compare,
    _count_items,
    _unit,
    _next_day,
]
FIXED = [_count_letters, _month_days]
FACTS = [_legs, _color, _capital]


def sample_item(rng, lang, eval_split=False):
    """Draw one item for the train split (never held-out keys) or the eval split (only held-out keys or phrasings)."""
    while True:
        family = rng.randrange(len(COMPOSITIONAL) + len(FIXED) + len(FACTS))
        if family < len(COMPOSITIONAL):
            item = COMPOSITIONAL[family](rng, lang)
            if item.heldout == eval_split:
                return item
        elif family < len(COMPOSITIONAL) + len(FIXED):
            if not eval_split:
                return FIXED[family - len(COMPOSITIONAL)](rng, lang)
        else:
            return FACTS[family - len(COMPOSITIONAL) - len(FIXED)](rng, lang, eval_split)


def _lang(rng):
    return "zh" if rng.random() < 0.5 else "en"


def _animal_paragraph(rng, lang):
    zh, en, legs, zh_sound, en_sound, zh_home, en_home = _pick(rng, ANIMALS)
    if lang == "zh":
        sentences = [f"{zh}是一种常见的动物。", f"{zh}有 {legs} 条腿。", f"{zh}常常生活在{zh_home}。"]
        if zh_sound:
            sentences.insert(2, f"{zh}的叫声是“{zh_sound}”。")
        return "".join(sentences)
    sentences = [f"The {en} is a common animal.", f"A {en} has {legs} legs.", f"A {en} often lives near {en_home}."]
    if en_sound:
        sentences.insert(2, f"A {en} says {en_sound}.")
    return " ".join(sentences)


def pretrain_doc(rng, eval_split=False):
    """One short monolingual paragraph of related statements."""
    lang = _lang(rng)
    if not eval_split and rng.random() < 0.15:
        return {"text": _animal_paragraph(rng, lang)}
    count = rng.randint(3, 8)
    statements = [sample_item(rng, lang, eval_split).statement for _ in range(count)]
    return {"text": ("" if lang == "zh" else " ").join(statements)}


def _assistant(item):
    return {"role": "assistant", "content": item.reply}


def _system(rng, lang):
    return [{"role": "system", "content": _pick(rng, SYSTEM_PROMPTS[lang])}] if rng.random() < 0.8 else []


def sft_record(rng, eval_split=False):
    """A 1-3 turn conversation, usually with a system prompt; some turns are small talk."""
    lang = _lang(rng)
    messages = _system(rng, lang)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.1:
            question, reply = _pick(rng, CHITCHAT[lang])
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        else:
            item = sample_item(rng, lang, eval_split)
            messages += [{"role": "user", "content": item.question}, _assistant(item)]
    return {"conversations": messages}


def _bad_reply(rng, item):
    """A rejected reply: wrong answer, missing answer line, or degenerate repetition."""
    kind = rng.randrange(3)
    if kind == 0:
        statement = item.statement.replace(item.answer, item.wrong)
        return f"{statement}\n{ANSWER_PREFIX[item.lang]}{item.wrong}"
    if kind == 1:
        return "嗯，这个问题我不太确定，可能是吧。" if item.lang == "zh" else "Hmm, I am not sure, maybe."
    return " ".join([item.question] * 3)


def dpo_record(rng, eval_split=False):
    lang = _lang(rng)
    item = sample_item(rng, lang, eval_split)
    prompt = _system(rng, lang) + [{"role": "user", "content": item.question}]
    return {
        "chosen": prompt + [_assistant(item)],
        "rejected": prompt + [{"role": "assistant", "content": _bad_reply(rng, item)}],
    }


def rl_record(rng, eval_split=False):
    lang = _lang(rng)
    item = sample_item(rng, lang, eval_split)
    prompt = [{"role": "system", "content": RL_SYSTEM[lang]}, {"role": "user", "content": item.question}]
    return {"prompt": prompt, "answer": item.answer}


MAKERS = {"pretrain": pretrain_doc, "sft": sft_record, "dpo": dpo_record, "rl": rl_record}


def iter_records(kind, seed=0, eval_split=False):
    """Endless stream of records of one kind; the same seed gives the same stream."""
    rng = random.Random(f"{kind}:{seed}:{eval_split}")
    make = MAKERS[kind]
    while True:
        yield make(rng, eval_split)


def _take(kind, count, seed, eval_split):
    stream = iter_records(kind, seed, eval_split)
    return (next(stream) for _ in range(count))


def build_corpus(out_dir, size="tiny", seed=0):
    """Write pretrain/sft/dpo/rl JSONL files and an eval/ folder of held-out splits; return their paths."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    counts = SIZES[size]
    out_dir = Path(out_dir)
    eval_dir = out_dir / "eval"
    paths = {}
    written = {}
    for kind in tqdm(MAKERS, desc=f"synth {size}", disable=size == "tiny"):
        paths[kind] = out_dir / f"{kind}.jsonl"
        written[kind] = write_jsonl(paths[kind], _take(kind, counts[kind], seed, eval_split=False))
        written[f"eval/{kind}"] = write_jsonl(eval_dir / f"{kind}.jsonl", _take(kind, counts["eval"], seed, True))
    manifest = {"size": size, "seed": seed, "records": written}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
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
