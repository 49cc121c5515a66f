"""Packing keeps every token, restarts positions at document and block starts, and streams across batches; best-fit
packing starts every row at a document and keeps each document whole up to a block."""

import itertools
import json

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from data_process import pack
from data_process.collators import PackedRowsCollator
from data_process.loading import load_text_dataset

DOCS = ["你好，世界。", "The cat sat.", "3 + 5 = 8", "一个稍微长一点的文档，用来跨越块的边界。" * 3, "end"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def reference_stream(tokenizer, docs):
    """The concatenation the packer must reproduce: each document's tokens followed by eos."""
    ids, starts = [], []
    for doc in docs:
        tokens = tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
        starts += [True] + [False] * (len(tokens) - 1)
        ids += tokens
    return np.array(ids), np.array(starts)


def expected_positions(starts, block_size):
    positions = []
    for i, start in enumerate(starts):
        positions.append(0 if start or i % block_size == 0 else positions[-1] + 1)
    return np.array(positions)


@pytest.mark.parametrize("block_size", [4, 16])
def test_every_token_kept_in_order_and_positions_restart(tokenizer, block_size, monkeypatch):
    monkeypatch.setattr(pack, "PACK_BATCH_DOCS", 2)  # carry unfinished blocks across several Arrow batches
    packed = pack.pack_dataset(datasets.Dataset.from_dict({"text": DOCS}), tokenizer, block_size)
    ids, starts = reference_stream(tokenizer, DOCS)
    full = len(ids) // block_size * block_size
    assert len(packed) == len(ids) // block_size
    assert np.array_equal(np.array(packed["input_ids"]).ravel(), ids[:full])
    assert np.array_equal(np.array(packed["position_ids"]).ravel(), expected_positions(starts, block_size)[:full])


def test_dropped_remainder_is_logged(tokenizer, caplog):
    ids, _ = reference_stream(tokenizer, DOCS)
    block_size = 7 if len(ids) % 7 else 6
    pack.pack_dataset(datasets.Dataset.from_dict({"text": DOCS}), tokenizer, block_size)
    assert f"dropped the last {len(ids) % block_size} of {len(ids)} tokens" in caplog.text


def test_multiprocess_matches_single_process(tiny_corpus, tokenizer):
    dataset = load_text_dataset(tiny_corpus["pretrain"])
    single = pack.pack_dataset(dataset, tokenizer, 64, num_proc=1)
    # select() gives a new fingerprint, so the tokenized cache of the first run is not reused
    multi = pack.pack_dataset(dataset.select(range(len(dataset))), tokenizer, 64, num_proc=2)
    assert single["input_ids"] == multi["input_ids"] and single["position_ids"] == multi["position_ids"]
    ids, _ = reference_stream(tokenizer, dataset["text"])
    kept = ids[: len(ids) // 64 * 64]  # the partial block at the end is dropped, with the eos tokens it holds
    assert np.array_equal(np.array(single["input_ids"]).ravel(), kept)


def test_too_little_text_for_one_block(tokenizer):
    with pytest.raises(ValueError, match="fewer than one block of block_size=4096"):
        pack.pack_dataset(datasets.Dataset.from_dict({"text": ["short"]}), tokenizer, 4096)


def test_cli_writes_arrow_and_memmap_loadable_by_pretraining(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    output = tmp_path / "packed"
    argv = ["--input", str(tiny_corpus["pretrain"]), "--output", str(output), "--tokenizer", str(tiny_tokenizer_dir)]
    assert pack.main([*argv, "--block_size", "32", "--num_proc", "1", "--bin"]) == 0
    dataset = load_text_dataset(output)
    assert dataset.column_names == ["input_ids", "position_ids"] and len(dataset[0]["input_ids"]) == 32
    blocks = pack.load_bin(output)
    assert blocks.dtype == np.uint16 and np.array_equal(blocks, np.array(dataset["input_ids"]))
    assert json.loads((output / pack.INDEX_NAME).read_text())["num_blocks"] == len(dataset)
    assert pack.main([*argv, "--block_size", "64", "--num_proc", "1"]) == 0
    assert len(load_text_dataset(output)[0]["input_ids"]) == 64 and not (output / pack.BIN_NAME).exists()


def test_cli_reports_bad_input_with_exit_status(tmp_path, tiny_tokenizer_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": null}\n', encoding="utf-8")
    argv = ["--input", str(bad), "--output", str(tmp_path / "out"), "--tokenizer", str(tiny_tokenizer_dir)]
    assert pack.main(argv) == 1
    assert f"{bad}:2: field 'text': expected a string, got null" in capsys.readouterr().err


def test_cli_user_mistakes_give_one_error_line(tmp_path, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a document"}\n', encoding="utf-8")
    missing = tmp_path / "no_such_tokenizer"
    argv = ["--input", str(source), "--output", str(tmp_path / "out"), "--tokenizer", str(missing)]
    assert pack.main(argv) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith(f"error: tokenizer {missing}: no such file or folder") and "Traceback" not in err
    with pytest.raises(SystemExit) as caught:
        pack.main([*argv, "--blok_size", "64"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("did you mean --block_size?")


@pytest.mark.parametrize("block_size", [8, 32])
def test_best_fit_rows_start_at_documents_and_keep_each_whole_document(tokenizer, block_size, caplog):
    """Every row is whole documents (or one document's first block_size tokens), each starting a row segment;
    every token of a document that fits a block is kept exactly once, and what was cut is counted."""
    packed = pack.pack_best_fit(datasets.Dataset.from_dict({"text": DOCS}), tokenizer, block_size)
    documents = [tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id] for doc in DOCS]
    segments = []
    for row in packed:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= block_size
        offsets = np.cumsum([0, *row["seq_lengths"]])
        segments += [row["input_ids"][a:b] for a, b in itertools.pairwise(offsets)]
    assert sorted(segments) == sorted(doc[:block_size] for doc in documents)
    cut = sum(max(len(doc) - block_size, 0) for doc in documents)
    assert cut > 0  # the long document does not fit a block
    assert f"dropped {cut} of {sum(map(len, documents))} tokens" in caplog.text
    shared = [row["seq_lengths"] for row in packed if len(row["seq_lengths"]) > 1]
    assert bool(shared) == (block_size == 32)  # short documents share a row once one fits beside another


def test_best_fit_rows_train_with_positions_restarting_at_each_document(tokenizer):
    rows = [{"input_ids": [5, 6, 7, 2, 8, 2], "seq_lengths": [4, 2]}, {"input_ids": [9, 10, 2], "seq_lengths": [3]}]
    batch = PackedRowsCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 8, 2], [9, 10, 2, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 2, -100, 2], [-100, 10, 2, -100, -100, -100]]


def test_cli_packs_best_fit_and_refuses_a_memmap_of_it(tiny_corpus, tiny_tokenizer_dir, tmp_path, capsys):
    output = tmp_path / "packed"
    argv = ["--input", str(tiny_corpus["pretrain"]), "--tokenizer", str(tiny_tokenizer_dir), "--block_size", "64"]
    assert pack.main([*argv, "--output", str(output), "--num_proc", "1", "--packing", "best_fit"]) == 0
    dataset = load_text_dataset(output)
    assert set(dataset.column_names) == {"input_ids", "seq_lengths"}
    pack.check_blocks(dataset, str(output), 64, len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir)))
    assert pack.main([*argv, "--output", str(tmp_path / "bin"), "--packing", "best_fit", "--bin"]) != 0
    assert "error: --bin writes fixed-length blocks" in capsys.readouterr().err
