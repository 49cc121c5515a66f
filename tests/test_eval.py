"""Evaluation recipe: bits per byte counts exactly the tokens and bytes it says, windows score each token once,
multiple choice picks what the model prefers and weighs subjects by their questions, lm-evaluation-harness agrees on
the same items, and a user's mistake is one `error:` line."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from data_process.jsonl import write_jsonl
from data_process.loading import iter_texts
from data_process.mc import Question, builtin_questions, question_record, read_questions, write_builtin_mc
from data_process.records import DataError
from recipes.training.eval_lm import load_model, read_documents
from recipes.training.evaluation import eval_mode
from recipes.training.scoring import (
    choice_request,
    fewshot_context,
    fewshot_examples,
    multiple_choice_metrics,
    question_prompt,
    rolling_requests,
    score_requests,
    text_metrics,
)

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "recipes" / "lm_eval_tasks"


@pytest.fixture(autouse=True)
def one_thread():
    """A 0.5M-parameter model runs ~50x faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A saved, randomly initialised minimind-tiny folder with the tiny tokenizer. The wide init (std 0.5) makes
    choices differ by clear margins (0.1+ nats) and letters other than A win, so comparisons decide something."""
    from modeling_miniminds import MiniMindForCausalLM, get_config
    from modeling_miniminds.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = get_config(
        "minimind-tiny",
        vocab_size=len(tokenizer),
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("model") / "tiny-random"
    MiniMindForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def documents(tiny_corpus):
    return list(iter_texts([Path(tiny_corpus["eval"]) / "pretrain.jsonl"], max_docs=8))


def hand_nll(model, sequence: list[int], count: int) -> float:
    """NLL in nats of the last `count` tokens of `sequence`, from one unbatched forward pass."""
    ids = torch.tensor([sequence])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    return F.cross_entropy(logits[-count:], ids[0, -count:], reduction="sum").item()


def test_bits_per_byte_is_the_nll_of_every_token_over_the_utf8_bytes(loaded, documents):
    """Each document is scored from its first token (given BOS) to its last; bytes, not characters, divide."""
    model, tokenizer = loaded
    result = text_metrics(model, tokenizer, documents, max_length=2048)
    nll = tokens = 0
    for text in documents:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        nll += hand_nll(model, [tokenizer.bos_token_id, *ids], len(ids))
        tokens += len(ids)
    num_bytes = sum(len(text.encode("utf-8")) for text in documents)
    assert num_bytes > sum(map(len, documents))  # the held-out text has Chinese: bytes are not characters
    assert (result["tokens"], result["bytes"], result["windows"]) == (tokens, num_bytes, len(documents))
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_a_document_that_fits_is_one_window_whatever_the_stride(loaded, documents):
    model, tokenizer = loaded
    longest = max(len(tokenizer(text, add_special_tokens=False).input_ids) for text in documents)
    whole = text_metrics(model, tokenizer, documents, max_length=2048)
    tight = text_metrics(model, tokenizer, documents, max_length=longest, stride=1)
    assert tight["windows"] == len(documents)
    assert tight["bits_per_byte"] == pytest.approx(whole["bits_per_byte"], rel=1e-6)


@pytest.mark.parametrize("stride", [32, 8])
def test_a_long_document_scores_each_token_once_with_at_least_window_minus_stride_context(loaded, documents, stride):
    """max_length=32 on a ~300-token document: the scored tails of the windows are the document in order; after
    the first window each window sees the full 32 tokens, so a token has at least 32 - stride before it; and the
    batched, padded result equals scoring every window alone."""
    model, tokenizer = loaded
    text = " ".join(documents)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    requests = rolling_requests(ids, tokenizer.bos_token_id, max_length=32, stride=stride)
    assert [token for sequence, count in requests for token in sequence[-count:]] == ids
    assert len(requests) == 1 + math.ceil((len(ids) - 32) / stride)
    assert requests[0] == ([tokenizer.bos_token_id, *ids[:32]], 32)
    assert all(len(sequence) == 33 and count <= stride for sequence, count in requests[1:])
    result = text_metrics(model, tokenizer, [text], max_length=32, stride=stride, batch_size=3)
    nll = sum(hand_nll(model, sequence, count) for sequence, count in requests)
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode("utf-8")), rel=1e-5)


def test_windows_at_full_stride_are_lm_eval_rolling_windows(tiny_tokenizer_dir):
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    ids = list(range(10, 110))
    theirs = [
        (context + continuation, len(continuation))
        for context, continuation in map(
            lm_eval_utils.make_disjoint_window, lm_eval_utils.get_rolling_token_windows(ids, 1, 16, context_len=1)
        )
    ]
    assert rolling_requests(ids, 1, max_length=16, stride=16) == theirs


class PreferringLM(torch.nn.Module):
    """A stand-in causal LM whose logits favour a fixed set of token ids at every position."""

    def __init__(self, favoured, vocab_size: int):
        super().__init__()
        self.bias = torch.zeros(vocab_size)
        self.bias[list(favoured)] = 10.0
        self.config = SimpleNamespace(max_position_embeddings=2048)
        self.device = torch.device("cpu")

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


COLOURS = ("red", "green", "pink")


def blue_at(position: int, answer: int, subject: str) -> Question:
    choices = list(COLOURS)
    choices.insert(position, "blue")
    return Question(subject, "What colour is the sky?", tuple(choices), answer)


def test_multiple_choice_picks_the_preferred_choice_and_weighs_subjects_by_questions(loaded):
    """A model that favours the tokens of " blue" picks blue by every measure. "sky" has 3 questions, blue right in
    2 of them; "sea" has 1, blue right: overall (3 * 2/3 + 1 * 1) / 4 = 0.75, not the mean of subjects (0.83)."""
    _, tokenizer = loaded
    blue = set(tokenizer(" blue", add_special_tokens=False).input_ids)
    for colour in COLOURS:
        assert set(tokenizer(" " + colour, add_special_tokens=False).input_ids) - blue
    model = PreferringLM(blue, len(tokenizer))
    questions = [blue_at(0, 0, "sky"), blue_at(1, 1, "sky"), blue_at(2, 3, "sky"), blue_at(3, 3, "sea")]
    result = multiple_choice_metrics(model, tokenizer, questions)
    subjects = result["subjects"]
    assert subjects["sky"]["questions"] == 3 and subjects["sea"]["questions"] == 1
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert subjects["sky"][metric] == pytest.approx(2 / 3) and subjects["sea"][metric] == 1.0
        weighted = sum(s[metric] * s["questions"] for s in subjects.values()) / result["questions"]
        assert result[metric] == pytest.approx(weighted) == 0.75
    assert result["chance"] == 0.25


def test_letters_style_lists_the_choices_and_scores_the_letters(loaded):
    _, tokenizer = loaded
    model = PreferringLM(tokenizer(" C", add_special_tokens=False).input_ids, len(tokenizer))
    questions = [blue_at(0, 2, "sky"), blue_at(1, 0, "sky"), blue_at(2, 2, "sky"), blue_at(3, 1, "sky")]
    listed = "What colour is the sky?\nA. blue\nB. red\nC. green\nD. pink\nAnswer:"
    assert question_prompt(questions[0], "letters") == listed
    assert multiple_choice_metrics(model, tokenizer, questions, style="letters")["acc"] == 0.5


def test_k_shot_prompts_hold_exactly_k_dev_examples_of_the_same_subject(loaded):
    _, tokenizer = loaded
    dev = [
        Question(subject, f"{subject} example {i}?", ("w", "x", "y", "z"), i % 4)
        for subject in ("sea", "sky")
        for i in range(5)
    ]
    question = blue_at(0, 0, "sky")
    shots = fewshot_examples([question], dev, num_fewshot=3)
    blocks = fewshot_context(question, shots["sky"], "cloze").split("\n\n")
    assert blocks == [f"sky example {i}?\nAnswer: {'wxyz'[i]}" for i in range(3)] + [question_prompt(question)]
    assert fewshot_context(question, fewshot_examples([question], dev, 0)["sky"]) == question_prompt(question)
    with pytest.raises(ValueError, match="subject 'sky' has 5 dev questions"):
        fewshot_examples([question], dev, num_fewshot=6)
    model = PreferringLM(tokenizer(" blue", add_special_tokens=False).input_ids, len(tokenizer))
    assert multiple_choice_metrics(model, tokenizer, [question], dev, num_fewshot=5)["acc"] == 1.0


def test_choice_tokens_are_those_after_the_context(loaded):
    """The space before a choice goes with the choice, wherever the caller put it, as in lm-eval."""
    _, tokenizer = loaded
    whole = tokenizer("Q?\nAnswer: blue", add_special_tokens=False).input_ids
    context = tokenizer("Q?\nAnswer:", add_special_tokens=False).input_ids
    expected = (context + whole[len(context) :], len(whole) - len(context))
    assert choice_request(tokenizer, "Q?\nAnswer:", " blue", 2048) == expected
    assert choice_request(tokenizer, "Q?\nAnswer: ", "blue", 2048) == expected
    sequence, count = choice_request(tokenizer, "Q?\nAnswer:", " blue", max_length=3)
    assert sequence == expected[0][-4:] and count == expected[1]


def test_score_requests_is_independent_of_batching_and_padding(loaded):
    model, _ = loaded
    requests = [(list(range(5, 5 + n)), min(n - 1, 3)) for n in (4, 9, 2, 17, 6)]
    alone = [-hand_nll(model, sequence, count) for sequence, count in requests]
    assert score_requests(model, requests, batch_size=4) == pytest.approx(alone, rel=1e-5)


def test_text_files_in_jsonl_txt_and_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    (tmp_path / "b.txt").write_text("one\n\ntwo\nthree\n", encoding="utf-8")
    pyarrow.parquet.write_table(pyarrow.table({"text": ["one", "two", "three"]}), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.txt", "c.parquet"):
        assert read_documents(tmp_path / name) == ["one", "two", "three"]
        assert read_documents(tmp_path / name, max_docs=2) == ["one", "two"]


def test_question_files_in_the_ceval_cmmlu_mmlu_and_jsonl_layouts(tmp_path):
    ceval = tmp_path / "accountant_val.csv"
    ceval.write_text("id,question,A,B,C,D,answer,explanation\n0,1+1?,2,3,4,5,A,\n", encoding="utf-8")
    cmmlu = tmp_path / "agronomy.csv"
    cmmlu.write_text(",Question,A,B,C,D,Answer\n0,1+2?,2,3,4,5,B\n", encoding="utf-8")
    mmlu = tmp_path / "abstract_algebra_test.csv"
    mmlu.write_text('"1+3?",2,3,4,5,C\n', encoding="utf-8")
    jsonl = tmp_path / "mixed.jsonl"
    write_jsonl(jsonl, [{"subject": "math", "question": "1+4?", "choices": [2, 3, 4, 5], "answer": 3}])
    questions = [q for path in (ceval, cmmlu, mmlu, jsonl) for q in read_questions(path)]
    assert [(q.subject, q.answer, q.choices) for q in questions] == [
        ("accountant", 0, ("2", "3", "4", "5")),
        ("agronomy", 1, ("2", "3", "4", "5")),
        ("abstract_algebra", 2, ("2", "3", "4", "5")),
        ("math", 3, ("2", "3", "4", "5")),
    ]
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "E"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'answer': 'E' is not one of the 4 choices"):
        read_questions(bad)


def test_builtin_questions_have_four_distinct_choices_and_balanced_answers(tmp_path):
    questions = builtin_questions(count=80)
    assert len(questions) == 80 and all(len(set(q.choices)) == 4 for q in questions)
    assert [sum(q.answer == i for q in questions) for i in range(4)] == [20, 20, 20, 20]
    paths = write_builtin_mc(tmp_path, count=80, per_subject=2)
    assert read_questions(paths["mc"]) == questions
    dev = read_questions(paths["mc_dev"])
    assert {q.subject for q in dev} == {q.subject for q in questions}
    assert not {q.question for q in dev} & {q.question for q in questions}


def lm_eval_task(name: str, task: str, data_files: dict, tasks_dir: Path, **overrides) -> None:
    """A task YAML that includes a shipped one (lm-eval's `include`) with its data paths pointed at test files (the
    shipped ones name the demo's)."""
    data_files = {k: str(v) for k, v in data_files.items()}
    config = {"include": str(TASKS / f"{name}.yaml"), "task": task, "dataset_kwargs": {"data_files": data_files}}
    (tasks_dir / f"{task}.yaml").write_text(yaml.safe_dump({**config, **overrides}), encoding="utf-8")


def test_task_data_files_are_read_against_the_repository_root_from_any_cwd(tiny_corpus, tmp_path, monkeypatch):
    """Issue 17: `data_files` relative to the repository root were read against the working directory, so the
    shipped tasks ran only from the root. The loader they name comes through lm-eval's own YAML loader."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks._yaml_loader import load_yaml

    text_file = Path(tiny_corpus["eval"]) / "pretrain.jsonl"
    monkeypatch.chdir(tmp_path)
    config = load_yaml(TASKS / "miniminds_bpb.yaml", resolve_func=True)
    dataset = config["custom_dataset"](**config["metadata"], data_files={"test": os.path.relpath(text_file, REPO)})
    assert dataset["test"]["text"] == list(iter_texts([text_file]))
    assert config["custom_dataset"](data_files={"test": str(text_file)})["test"].num_rows == dataset["test"].num_rows


def test_lm_eval_harness_agrees_on_the_same_items(model_dir, loaded, tiny_corpus, tmp_path):
    """The shipped YAMLs, run by `lm_eval --model hf ... --include_path` offline on the saved folder from another
    working directory than the repository root: the same accuracies (cloze 0-shot, letters 0-shot, cloze 2-shot on
    one subject) and the same bits per byte, with a 48-token window so long contexts are cut and documents split the
    same way on both sides."""
    pytest.importorskip("lm_eval")
    text_file = Path(tiny_corpus["eval"]) / "pretrain.jsonl"
    paths = write_builtin_mc(tmp_path / "data", count=60, per_subject=2)
    subject = Counter(q.subject for q in read_questions(paths["mc"])).most_common(1)[0][0]
    one_subject = {}
    for split in ("mc", "mc_dev"):
        one_subject[split] = tmp_path / "data" / f"{split}_{subject}.jsonl"
        rows = [question_record(q, i) for i, q in enumerate(read_questions(paths[split])) if q.subject == subject]
        write_jsonl(one_subject[split], rows)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    lm_eval_task("miniminds_bpb", "t_bpb", {"test": os.path.relpath(text_file, REPO)}, tasks)  # from the root
    lm_eval_task("miniminds_mc", "t_mc", {"test": paths["mc"], "dev": paths["mc_dev"]}, tasks)
    lm_eval_task("miniminds_mc_letters", "t_letters", {"test": paths["mc"], "dev": paths["mc_dev"]}, tasks)
    lm_eval_task(
        "miniminds_mc", "t_mc_2shot", {"test": one_subject["mc"], "dev": one_subject["mc_dev"]}, tasks, num_fewshot=2
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},trust_remote_code=True,dtype=float32,max_length=48",
        "--include_path",
        str(tasks),
        "--tasks",
        "t_bpb,t_mc,t_letters,t_mc_2shot",
        "--device",
        "cpu",
        "--batch_size",
        "8",
        "--output_path",
        str(tmp_path / "lm_eval_out"),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "lm_eval_out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text(encoding="utf-8"))["results"]

    model, tokenizer = loaded
    questions, one_subject_questions = read_questions(paths["mc"]), read_questions(one_subject["mc"])
    ours = {
        "t_mc": multiple_choice_metrics(model, tokenizer, questions, max_length=48),
        "t_letters": multiple_choice_metrics(model, tokenizer, questions, style="letters", max_length=48),
        "t_mc_2shot": multiple_choice_metrics(
            model, tokenizer, one_subject_questions, read_questions(one_subject["mc_dev"]), 2, max_length=48
        ),
    }
    for task, result in ours.items():
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert result[metric] == pytest.approx(theirs[task][f"{metric},none"], abs=1e-9), (task, metric)
    bits_per_byte = text_metrics(model, tokenizer, list(iter_texts([text_file])), max_length=48)
    assert bits_per_byte["windows"] > bits_per_byte["documents"]  # some documents span several windows
    assert bits_per_byte["bits_per_byte"] == pytest.approx(theirs["t_bpb"]["bits_per_byte,none"], rel=0.01)


def eval_cli(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "recipes" / "eval.py"), *map(str, argv)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def test_cli_missing_model_folder_is_one_error_line(tiny_corpus, tmp_path):
    text_file = Path(tiny_corpus["eval"]) / "pretrain.jsonl"
    done = eval_cli(
        "--model_name_or_path", tmp_path / "pretrian", "--text_files", text_file, "--output_dir", tmp_path / "out"
    )
    assert done.returncode == 1
    assert error_line(done.stderr) == f"error: model {tmp_path / 'pretrian'}: no such file or folder"


def run_main(*argv):
    from recipes.eval import main, make_parser

    main(*make_parser().parse_args_and_config([str(arg) for arg in argv]))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--text_files", "{tmp}/missing.jsonl"], "error: --text_files {tmp}/missing.jsonl: no such file"),
        (
            ["--mc_files", "{mc}", "--num_fewshot", "2"],
            "error: --num_fewshot 2 needs --mc_dev_files to draw the examples from",
        ),
        ([], "error: nothing to evaluate: pass --text_files, --mc_files or --chat_files"),
    ],
)
def test_cli_user_mistakes_are_one_error_line(model_dir, tmp_path, capsys, flags, message):
    paths = write_builtin_mc(tmp_path, count=4, per_subject=1)
    fill = {"tmp": tmp_path, "mc": paths["mc"]}
    with pytest.raises(SystemExit) as exit_info:
        run_main(
            "--model_name_or_path",
            model_dir,
            "--output_dir",
            tmp_path / "out",
            *[flag.format(**fill) for flag in flags],
        )
    assert exit_info.value.code == 1
    assert error_line(capsys.readouterr().err) == message.format(**fill)


def test_two_models_give_one_table_one_chart_and_appended_results(model_dir, tiny_corpus, tmp_path, capsys):
    second = tmp_path / "second"
    model, tokenizer = load_model(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # sharper predictions: a different bits per byte
    model.save_pretrained(second)
    tokenizer.save_pretrained(second)
    paths = write_builtin_mc(tmp_path / "data", count=8, per_subject=1)
    log = tmp_path / "runs.jsonl"
    log.write_text('{"earlier": "run"}\n', encoding="utf-8")
    out = tmp_path / "out"
    run_main(
        "--model_name_or_path",
        model_dir,
        second,
        "--text_files",
        Path(tiny_corpus["eval"]) / "pretrain.jsonl",
        "--max_docs",
        5,
        "--mc_files",
        paths["mc"],
        "--chat_files",
        Path(tiny_corpus["eval"]) / "rl.jsonl",
        "--max_new_tokens",
        4,
        "--output_dir",
        out,
        "--results_file",
        log,
    )
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert list(results["models"]) == ["tiny-random", "second"]
    first_bpb, second_bpb = (m["bits_per_byte"]["pretrain.jsonl"] for m in results["models"].values())
    assert first_bpb != pytest.approx(second_bpb)
    for metrics in results["models"].values():
        assert set(metrics["multiple_choice"]["mc.jsonl"]) >= {"acc", "acc_norm", "acc_bytes", "chance", "subjects"}
        assert set(metrics["chat"]["rl.jsonl"]) >= {"accuracy", "task_accuracy", "eot_rate"}
    table = (out / "eval_table.md").read_text(encoding="utf-8")
    assert table.splitlines()[0] == "| metric | better | tiny-random | second |"
    assert table in capsys.readouterr().out
    assert len(table.splitlines()) == 2 + 1 + 3 + 2  # header, bits per byte, 3 accuracies, task accuracy + eot rate
    assert (out / "eval_chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "run"}
    assert json.loads(lines[1])["models"] == results["models"]


def test_eval_mode_puts_the_mode_back_even_after_an_error():
    """Probes run in the middle of training: dropout must come back on after them, and stay off for a model that
    was already in eval mode."""
    model = torch.nn.Dropout()
    with eval_mode(model):
        assert not model.training
    assert model.training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("a probe failed")
    assert model.training
    with eval_mode(model.eval()):
        pass
    assert not model.training
