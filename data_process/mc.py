"""Multiple-choice question files: reading the C-Eval, CMMLU and MMLU layouts, and writing a built-in set from the
held-out items of `data_process.synth`.

A question is a stem, its choices (A-D, or a `choices` list) and the index of the right one. Accepted layouts:

- C-Eval: `val/<subject>_val.csv`, `dev/<subject>_dev.csv` with columns `id,question,A,B,C,D,answer[,explanation]`
- CMMLU: `test/<subject>.csv`, `dev/<subject>.csv` with columns `,Question,A,B,C,D,Answer`
- MMLU (original release): `test/<subject>_test.csv` without a header: question, A, B, C, D, answer
- JSONL or parquet rows with `question`, `A`-`D` (or `choices`, a list), `answer` (a letter, or an index as in
  `cais/mmlu`) and optionally `subject`

Column names are matched without regard to case. Without a `subject` column the subject is the file name less a
`_val`/`_dev`/`_test` suffix, as those releases name their files.

    python -m data_process.mc --out data/builtin/eval --count 400 --seed 0   # mc.jsonl and mc_dev.jsonl
"""

import csv
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_process.jsonl import read_jsonl, write_jsonl
from data_process.records import DataError
from modeling_miniminds.cli import FlagParser, command_main

LETTERS = "ABCD"
SPLIT_SUFFIX = re.compile(r"_(val|validation|dev|test|train)$")
MC_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` indexes `choices`."""

    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int


def subject_from_path(path) -> str:
    """`accountant_val.csv` -> `accountant` (C-Eval), `agronomy.csv` -> `agronomy` (CMMLU)."""
    return SPLIT_SUFFIX.sub("", Path(path).stem)


def _answer_index(value, num_choices: int) -> int:
    """A letter (`B`, ` b `) or an integer index (`1`, as `cais/mmlu` stores it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        index = ord(value.strip().upper()) - ord("A")
    else:
        raise ValueError(f"field 'answer': expected a letter A-{LETTERS[num_choices - 1]} or an index, got {value!r}")
    if not 0 <= index < num_choices:
        raise ValueError(f"field 'answer': {value!r} is not one of the {num_choices} choices")
    return index


def _choice_text(value) -> str:
    """Spreadsheet cells may hold numbers; a float that is a whole number is written without `.0`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def question_from_record(record: dict, default_subject: str) -> Question:
    """A Question from one row of any accepted layout (keys compared without case)."""
    row = {str(key).strip().lower(): value for key, value in record.items()}
    for name in ("question", "answer"):
        if row.get(name) is None:
            raise ValueError(f"field '{name}': missing (keys: {', '.join(map(str, record))})")
    if row.get("choices") is not None:
        choices = tuple(_choice_text(c) for c in row["choices"])
    else:
        missing = [letter for letter in LETTERS if row.get(letter.lower()) is None]
        if missing:
            raise ValueError(f"field '{missing[0]}': missing, and no 'choices' list (keys: {', '.join(record)})")
        choices = tuple(_choice_text(row[letter.lower()]) for letter in LETTERS)
    if len(choices) < 2:
        raise ValueError(f"field 'choices': expected at least 2 choices, got {len(choices)}")
    if not all(choices):
        raise ValueError(f"field 'choices': a choice is empty ({list(choices)})")
    subject = str(row.get("subject") or default_subject).strip()
    return Question(subject, str(row["question"]).strip(), choices, _answer_index(row["answer"], len(choices)))


def _csv_rows(path: Path):
    """(line, record) pairs of a CSV file; a file whose first row names no `question` column is MMLU's headerless
    layout (question, A, B, C, D, answer)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header = [cell.strip().lower() for cell in rows[0]]
    if "question" in header:
        columns, start = rows[0], 1
    else:
        columns, start = ["question", *LETTERS, "answer"], 0
    for number, row in enumerate(rows[start:], start=start + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise DataError(f"{path}:{number}: expected {len(columns)} columns, got {len(row)}")
        yield number, dict(zip(columns, row))


def _records(path: Path):
    if path.suffix == ".csv":
        yield from _csv_rows(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet

        yield from enumerate(pyarrow.parquet.read_table(path).to_pylist(), start=1)
    else:
        yield from enumerate(read_jsonl(path), start=1)


def read_questions(path) -> list[Question]:
    """Every question of one file; a bad row raises DataError naming `file:line`."""
    path = Path(path)
    if path.suffix not in MC_SUFFIXES:
        raise ValueError(f"{path}: expected a {', '.join(MC_SUFFIXES)} file of multiple-choice questions")
    questions = []
    for number, record in _records(path):
        try:
            questions.append(question_from_record(record, subject_from_path(path)))
        except ValueError as err:
            raise DataError(f"{path}:{number}: {err}") from None
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def _answer_pools(items) -> dict:
    """The answers of the items per (family, language): the distractors a question of that family may draw."""
    pools = defaultdict(set)
    for item in items:
        pools[item.key.split(":")[0], item.lang].add(item.answer)
    return {key: sorted(values) for key, values in pools.items()}


def _distractors(rng: random.Random, item, pool: list[str]) -> list[str] | None:
    """Three wrong choices as unfamiliar to the model as the right one: other answers of the same family, language
    and split (a held-out capital among held-out capitals, not among trained ones). A number's first distractor is
    its near miss, and its neighbours join the pool, as legs and letters have few distinct answers."""
    if item.answer.isdigit():
        value = int(item.answer)
        near = {str(value + step) for step in (-2, -1, 1, 2) if value + step >= 0}
        others = sorted((set(pool) | near) - {item.answer, item.wrong})
        return [item.wrong, *rng.sample(others, 2)] if len(others) >= 2 else None
    others = [value for value in pool if value != item.answer]
    return rng.sample(others, 3) if len(others) >= 3 else None


def _builtin_questions(rng: random.Random, split: str, draws: int) -> list[Question]:
    """Distinct questions of the split with three distractors each. The right answer's position cycles through A-D,
    so no letter is favoured."""
    from data_process.synth import sample_item

    items = [sample_item(rng, "zh" if rng.random() < 0.5 else "en", split) for _ in range(draws)]
    pools = _answer_pools(items)
    questions = {}
    for item in items:
        subject = item.key.split(":")[0]
        wrong = None if item.question in questions else _distractors(rng, item, pools[subject, item.lang])
        if wrong is None:
            continue
        rng.shuffle(wrong)
        position = len(questions) % len(LETTERS)
        choices = (*wrong[:position], item.answer, *wrong[position:])
        questions[item.question] = Question(subject, item.question, choices, position)
    return list(questions.values())


def builtin_questions(count: int = 400, seed: int = 0, split: str = "eval") -> list[Question]:
    """`count` questions on held-out items only (the keys no training file of `data_process.synth` states), of the
    eval split or of dev."""
    rng = random.Random(f"mc:{seed}:{split}")
    return _builtin_questions(rng, split, draws=20 * count)[:count]


def builtin_dev(per_subject: int = 5, seed: int = 0, subjects=None) -> list[Question]:
    """Few-shot examples drawn from training items: the first `per_subject` of each subject, as C-Eval's dev split."""
    rng = random.Random(f"mc:{seed}:dev")
    taken = defaultdict(list)
    for question in _builtin_questions(rng, "train", draws=4000):
        if (subjects is None or question.subject in subjects) and len(taken[question.subject]) < per_subject:
            taken[question.subject].append(question)
    return [q for subject in sorted(taken) for q in taken[subject]]


def question_record(question: Question, index: int) -> dict:
    """The C-Eval layout with a subject column: id, subject, question, A-D, answer letter."""
    letters = dict(zip(LETTERS, question.choices))
    return {
        "id": index,
        "subject": question.subject,
        "question": question.question,
        **letters,
        "answer": LETTERS[question.answer],
    }


def write_builtin_mc(out_dir, count: int = 400, per_subject: int = 5, seed: int = 0, split: str = "eval") -> dict:
    """Write `mc.jsonl` (held-out questions of `split`) and `mc_dev.jsonl` (few-shot examples) into `out_dir`."""
    out_dir = Path(out_dir)
    questions = builtin_questions(count, seed, split)
    dev = builtin_dev(per_subject, seed, subjects={q.subject for q in questions})
    paths = {"mc": out_dir / "mc.jsonl", "mc_dev": out_dir / "mc_dev.jsonl"}
    write_jsonl(paths["mc"], (question_record(q, i) for i, q in enumerate(questions)))
    write_jsonl(paths["mc_dev"], (question_record(q, i) for i, q in enumerate(dev)))
    return paths


def make_parser():
    parser = FlagParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (e.g. the eval/ folder of a built-in corpus)")
    parser.add_argument("--count", type=int, default=400, help="held-out questions to write")
    parser.add_argument("--per_subject", type=int, default=5, help="few-shot examples per subject in mc_dev.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    for name, path in write_builtin_mc(args.out, args.count, args.per_subject, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
