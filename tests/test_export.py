"""GGUF export through llama.cpp's converter, the Ollama Modelfile, the model card and the Hub push.

The fast tests need neither llama.cpp nor the network: the pre-tokenizer registration runs against a stand-in
converter with llama.cpp's shape (one file in older llama.cpp, a `conversion/` package in newer), a missing converter
must fail in one line saying what to get, and the push goes to a recording stand-in for `HfApi`. The slow tests
(`--slow`, `make test-all`) run the real converter and `llama_cpp`, and hold the GGUF file to transformers' greedy
ids.
"""

import json
import os
from hashlib import sha256
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.export import gguf as gguf_export
from modeling_miniminds.export import model_card as model_card_module
from modeling_miniminds.export.convert import main
from modeling_miniminds.export.gguf import (
    find_llama_cpp,
    llama_cpp_pre_tokenizer,
    portable_chat_template,
    run_converter,
    write_modelfile,
)
from modeling_miniminds.export.model_card import model_card
from modeling_miniminds.tokenizer import load_tokenizer

UPSTREAM_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "upstream-minimind-tokenizer"
PROMPT = "The sum of 12 and 7 is"
NEW_TOKENS = 8


def saved_model(folder, tokenizer_dir, seed=0, **config):
    """A tiny MiniMind with the project tokenizer; weights rounded to float16 so an f16 GGUF holds them exactly."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer), initializer_range=0.1, **config))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


# -- pre-tokenizer and chat template ------------------------------------------------------------------------------


def test_project_and_upstream_tokenizers_map_to_llama_cpp_names(tiny_tokenizer_dir, tmp_path):
    """Ours splits with Qwen2's regex (llama.cpp's `qwen2`), upstream's is ByteLevel with GPT-2's (`gpt-2`); a regex
    this module does not know is left to llama.cpp."""
    assert llama_cpp_pre_tokenizer(tiny_tokenizer_dir / "tokenizer.json") == "qwen2"
    if UPSTREAM_TOKENIZER.is_dir():
        assert llama_cpp_pre_tokenizer(UPSTREAM_TOKENIZER / "tokenizer.json") == "gpt-2"
    split = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        }
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(split))
    assert llama_cpp_pre_tokenizer(tmp_path / "tokenizer.json") is None


def test_portable_chat_template_renders_the_same_text(tiny_tokenizer_dir):
    """llama.cpp and llama-cpp-python's Jinja engines reject transformers' `{% generation %}`; the exported template
    drops it and must render every turn kind exactly as before."""
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5", "reasoning_content": "2+3=5"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
        {"role": "tool", "content": "5"},
        {"role": "user", "content": "And 3+4?"},
    ]
    original = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    portable = portable_chat_template(tokenizer.chat_template)
    assert "{%- generation %}" not in portable and "endgeneration" not in portable
    assert (
        tokenizer.apply_chat_template(conversation, chat_template=portable, tokenize=False, add_generation_prompt=True)
        == original
    )


# -- the converter, located and patched ---------------------------------------------------------------------------

FAKE_TEXT_MODEL = """
from hashlib import sha256


class TextModel:
    def get_vocab_base_pre(self, tokenizer):
        chktxt = "Hello world 123 \\u4f60\\u597d"
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
        raise NotImplementedError(f"BPE pre-tokenizer was not recognized: {chkhsh}")
"""
FAKE_MAIN = """
import sys
from pathlib import Path


class Unknown:
    def encode(self, text):
        return [1, 2, 3]


def main():
    from transformers import AutoTokenizer

    model_dir, out = sys.argv[1], Path(sys.argv[sys.argv.index("--outfile") + 1])
    answer = TextModel().get_vocab_base_pre(AutoTokenizer.from_pretrained(model_dir))
    try:
        TextModel().get_vocab_base_pre(Unknown())
        other = "registered for every tokenizer"
    except NotImplementedError:
        other = "unknown"
    out.write_text(answer + " " + other)
"""


def fake_llama_cpp(root: Path, layout: str) -> Path:
    """A stand-in for llama.cpp's converter: its `get_vocab_base_pre` knows no hash, like any real one for ours."""
    root.mkdir(parents=True)
    (root / "gguf-py").mkdir()
    if layout == "file":
        (root / "convert_hf_to_gguf.py").write_text(FAKE_TEXT_MODEL + FAKE_MAIN)
    else:
        (root / "conversion").mkdir()
        (root / "conversion" / "__init__.py").write_text("from .base import TextModel\n")
        (root / "conversion" / "base.py").write_text(FAKE_TEXT_MODEL)
        (root / "convert_hf_to_gguf.py").write_text("from conversion import TextModel\n" + FAKE_MAIN)
    return root


@pytest.mark.parametrize("layout", ["file", "package"])
def test_converter_learns_this_tokenizer_and_keeps_refusing_others(tiny_tokenizer_dir, tmp_path, layout):
    """Guards the hand edit upstream MiniMind users make to convert_hf_to_gguf.py: the hash of our tokenizer maps to
    `qwen2` in the converter's process only, and any other unknown tokenizer still fails as llama.cpp meant."""
    root = fake_llama_cpp(tmp_path / "llama.cpp", layout)
    source = (root / "convert_hf_to_gguf.py").read_text()
    run_converter(root, tiny_tokenizer_dir, tmp_path / "out.gguf", "f16")
    assert (tmp_path / "out.gguf").read_text() == "qwen2 unknown"
    assert (root / "convert_hf_to_gguf.py").read_text() == source

    chktxt = gguf_export.read_check_text(root)
    assert chktxt == "Hello world 123 \u4f60\u597d"
    expected = sha256(str(load_tokenizer(tiny_tokenizer_dir).encode(chktxt)).encode()).hexdigest()
    assert gguf_export.tokenizer_hash(load_tokenizer(tiny_tokenizer_dir), chktxt) == expected


def test_converter_is_found_in_an_unpacked_sdist(tmp_path, monkeypatch):
    sdist = tmp_path / "src" / "llama_cpp_python-0.3.99"
    fake_llama_cpp(sdist / "vendor" / "llama.cpp", "file")
    monkeypatch.delenv(gguf_export.LLAMA_CPP_ENV, raising=False)
    monkeypatch.setattr(gguf_export.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(gguf_export, "llama_cpp_source_tree", lambda: None)
    assert find_llama_cpp() == sdist / "vendor" / "llama.cpp"
    assert find_llama_cpp(sdist) == sdist / "vendor" / "llama.cpp"  # --llama_cpp takes the sdist root too


def test_missing_converter_is_one_error_line_saying_what_to_get(tiny_tokenizer_dir, tmp_path, monkeypatch, capsys):
    saved_model(tmp_path / "mm", tiny_tokenizer_dir)
    capsys.readouterr()  # the save's progress bar
    monkeypatch.delenv(gguf_export.LLAMA_CPP_ENV, raising=False)
    monkeypatch.setattr(gguf_export.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(gguf_export, "llama_cpp_source_tree", lambda: None)
    assert main(["to-gguf", str(tmp_path / "mm"), str(tmp_path / "mm.gguf")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: llama.cpp's convert_hf_to_gguf.py not found")
    assert "pip download --no-deps --no-binary :all: llama-cpp-python" in error and "--llama_cpp DIR" in error
    assert not (tmp_path / "mm.gguf").exists()

    monkeypatch.setenv(gguf_export.LLAMA_CPP_ENV, str(tmp_path / "nowhere"))
    assert main(["to-gguf", str(tmp_path / "mm"), str(tmp_path / "mm.gguf")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: $LLAMA_CPP_DIR {tmp_path / 'nowhere'}: no convert_hf_to_gguf.py there or in its vendor/llama.cpp"
    )


def test_modelfile_points_at_the_gguf_with_chatml_and_stops(tmp_path):
    path = write_modelfile(tmp_path / "sft.gguf")
    text = path.read_text()
    assert path == tmp_path / "Modelfile"
    assert "\nFROM ./sft.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in template
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template
    assert template.endswith("<|im_start|>assistant\n")  # the generation prompt, as in the chat template


# -- model card and push ------------------------------------------------------------------------------------------


def demo_like_run(tmp_path, tiny_tokenizer_dir) -> tuple[Path, MiniMindForCausalLM]:
    """runs/demo's shape: report.json above the stage folder, all_results.json inside it."""
    folder = tmp_path / "demo" / "sft"
    model = saved_model(folder, tiny_tokenizer_dir)
    report = {
        "stages": {
            "corpus": {"seconds": 1.0, "size": "tiny", "records": {"pretrain": 300, "sft": 120}},
            "sft": {
                "seconds": 106.0,
                "before": {"eval_loss": 8.52},
                "after": {"eval_loss": 2.04, "task_accuracy": 0.061},
            },
        }
    }
    (tmp_path / "demo" / "report.json").write_text(json.dumps(report))
    (folder / "all_results.json").write_text(json.dumps({"train_loss": 3.25, "eval_loss": 2.04}))
    return folder, model


def test_model_card_lists_architecture_sizes_data_stages_and_loading(tiny_tokenizer_dir, tmp_path):
    folder, model = demo_like_run(tmp_path, tiny_tokenizer_dir)
    card = model_card(folder, "me/minimind-sft")
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["miniminds", "minimind"],
    }
    card = str(card)
    parameters = sum(p.numel() for p in model.parameters())  # tied embeddings counted once, as saved
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "`MiniMindForCausalLM` (model_type `minimind`)" in card
    assert f"({parameters:,})" in card
    assert "| hidden size / layers | 128 / 2 |" in card and "| attention / kv heads / head dim | 4 / 2 / 32 |" in card
    assert "| vocabulary | 512 |" in card and "| tied embeddings | yes |" in card and "experts" not in card
    assert "size `tiny`): pretrain 300, sft 120 records" in card
    assert "| sft | 106.0 | eval_loss 2.04, task_accuracy 0.061 |" in card
    assert "- train_loss: 3.25" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/minimind-sft", trust_remote_code=True)' in card

    bare = str(model_card(tmp_path / "demo" / "sft", "me/x", data="my own corpus"))
    assert "## Data\n\nmy own corpus\n" in bare
    assert bare.startswith("---\n") and bare.endswith("```\n")  # front matter, and the file ends with one newline


class RecordingApi:
    calls: ClassVar[list] = []  # what the last push asked the Hub for

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    def upload_file(self, **kwargs):
        self.calls.append(("upload_file", kwargs["repo_id"], kwargs))


def test_push_uploads_the_folder_then_the_card_without_network(tiny_tokenizer_dir, tmp_path, monkeypatch, capsys):
    RecordingApi.calls = []
    monkeypatch.setattr(model_card_module, "HfApi", RecordingApi)
    folder, _ = demo_like_run(tmp_path, tiny_tokenizer_dir)
    assert main(["push", str(folder), "me/minimind-sft", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out
    (create, repo, options), (upload, _, folder_args), (card, _, card_args) = RecordingApi.calls
    assert (create, repo, options["private"], options["exist_ok"]) == ("create_repo", "me/minimind-sft", True, True)
    assert upload == "upload_folder" and folder_args["folder_path"] == str(folder)
    assert "checkpoint-*/" in folder_args["ignore_patterns"] and folder_args["allow_patterns"] is None
    assert card_args["path_in_repo"] == "README.md" and b"MiniMindForCausalLM" in card_args["path_or_fileobj"]
    assert not (folder / "README.md").exists()  # the card goes to the Hub, the local folder is left as it was

    RecordingApi.calls = []
    assert main(["to-qwen3", str(folder), str(tmp_path / "qwen3"), "--push_to_hub", "me/minimind-sft-qwen3"]) == 0
    card = RecordingApi.calls[-1][2]["path_or_fileobj"].decode()
    assert "`Qwen3ForCausalLM`" in card and "also loads without `trust_remote_code`" in card

    # to-gguf end to end on the stand-in converter: only the file and its Modelfile go up, the card from the source
    RecordingApi.calls = []
    root = fake_llama_cpp(tmp_path / "llama.cpp", "package")
    gguf = tmp_path / "exports" / "sft.gguf"
    args = ["to-gguf", str(folder), str(gguf), "--modelfile", "--llama_cpp", str(root), "--push_to_hub", "me/sft-gguf"]
    assert main(args) == 0
    assert gguf.read_text() == "qwen2 unknown" and (gguf.parent / "Modelfile").is_file()
    assert RecordingApi.calls[1][2]["folder_path"] == str(gguf.parent)
    assert RecordingApi.calls[1][2]["allow_patterns"] == ["sft.gguf", "Modelfile"]
    card = RecordingApi.calls[-1][2]["path_or_fileobj"].decode()
    assert (
        "library_name: gguf" in card
        and "- gguf\n" in card
        and "`MiniMindForCausalLM`" in card
        and "ollama create sft-gguf" in card
    )


# -- the real converter and llama.cpp (slow) ----------------------------------------------------------------------


def llama_cpp_or_skip():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e .[export])")
    try:
        root = find_llama_cpp()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return llama_cpp, root


def llama_greedy(llama, prompt_ids: list[int], eos: set[int]) -> list[int]:
    """Argmax decoding on llama.cpp's logits (kept only with `logits_all=True`), one token at a time, stopping at
    eos like `generate()`."""
    llama.reset()
    llama.eval(prompt_ids)
    new = []
    for _ in range(NEW_TOKENS):
        token = int(llama.scores[llama.n_tokens - 1].argmax())
        new.append(token)
        if token in eos:
            break
        llama.eval([token])
    return new


@pytest.fixture(scope="module")
def exported(tiny_tokenizer_dir, tmp_path_factory):
    """One tiny model exported once to f16 (with a Modelfile) and once to q8_0."""
    llama_cpp, root = llama_cpp_or_skip()
    tmp = tmp_path_factory.mktemp("gguf")
    saved_model(tmp / "mm", tiny_tokenizer_dir)
    for outtype in ("f16", "q8_0"):
        args = ["to-gguf", str(tmp / "mm"), str(tmp / "out" / f"mm-{outtype}.gguf"), "--outtype", outtype]
        assert main([*args, "--modelfile", "--llama_cpp", str(root)]) == 0
    return llama_cpp, tmp


@pytest.mark.slow
def test_f16_gguf_greedy_ids_equal_transformers(exported):
    """The GGUF file must tokenize like the HF tokenizer (the pre-tokenizer registration) and decode the same greedy
    ids as transformers' `generate()` on the source folder."""
    llama_cpp, tmp = exported
    tokenizer = load_tokenizer(tmp / "mm")
    model = AutoModelForCausalLM.from_pretrained(tmp / "mm", trust_remote_code=True, dtype=torch.float32).eval()
    prompt = tokenizer(PROMPT)["input_ids"]
    hf_new = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)[0, len(prompt) :]

    llama = llama_cpp.Llama(
        model_path=str(tmp / "out" / "mm-f16.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False
    )
    text = "Hello world: 12 + 7 = 19, isn't it?  Yes.\n\n你好，世界"
    assert llama.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text)["input_ids"]
    eos = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    assert llama_greedy(llama, prompt, eos) == hf_new.tolist()
    assert llama.metadata["tokenizer.ggml.pre"] == "qwen2"
    llama.close()
    assert (tmp / "out" / "Modelfile").read_text().count("FROM ./mm-") == 1


@pytest.mark.slow
def test_q8_0_gguf_is_smaller_and_replies_as_f16(exported):
    """q8_0 must lose size, not the model: the same greedy ids and the same chat reply as the f16 file. The tiny
    model's weights are drawn with initializer_range 0.1, so its top logits stand further apart than q8_0's rounding
    moves them (f16 holds the weights exactly); a quantizer that scrambles blocks changes the ids at once."""
    llama_cpp, tmp = exported
    f16, q8 = (os.path.getsize(tmp / "out" / f"mm-{outtype}.gguf") for outtype in ("f16", "q8_0"))
    assert q8 < f16
    prompt = load_tokenizer(tmp / "mm")(PROMPT)["input_ids"]
    replies = {}
    for outtype in ("f16", "q8_0"):
        llama = llama_cpp.Llama(
            model_path=str(tmp / "out" / f"mm-{outtype}.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False
        )
        ids = llama_greedy(llama, prompt, eos=set())
        # llama-cpp-python renders the chat template stored in the file (its Jinja has no `{% generation %}`)
        reply = llama.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
        replies[outtype] = (ids, reply["choices"][0]["message"])
        llama.close()
    assert len(replies["f16"][0]) == NEW_TOKENS
    assert replies["f16"][1]["role"] == "assistant"
    assert replies["q8_0"] == replies["f16"]


@pytest.mark.slow
def test_moe_without_shared_experts_exports_through_qwen3_moe(tiny_tokenizer_dir, tmp_path):
    """llama.cpp converts Qwen3-MoE, so a MoE that `to-qwen3` takes goes through; the greedy ids must match too."""
    llama_cpp, root = llama_cpp_or_skip()
    saved_model(
        tmp_path / "moe",
        tiny_tokenizer_dir,
        use_moe=True,
        num_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=0,
        norm_topk_prob=True,
    )
    assert main(["to-gguf", str(tmp_path / "moe"), str(tmp_path / "moe.gguf"), "--llama_cpp", str(root)]) == 0
    tokenizer = load_tokenizer(tmp_path / "moe")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", trust_remote_code=True, dtype=torch.float32)
    prompt = tokenizer(PROMPT)["input_ids"]
    hf_new = model.eval().generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)[0, len(prompt) :]
    llama = llama_cpp.Llama(
        model_path=str(tmp_path / "moe.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False
    )
    assert llama_greedy(llama, prompt, {2}) == hf_new.tolist()
    llama.close()


def test_shared_experts_are_refused_before_llama_cpp_runs(tiny_tokenizer_dir, tmp_path, capsys):
    root = fake_llama_cpp(tmp_path / "llama.cpp", "file")
    saved_model(
        tmp_path / "moe", tiny_tokenizer_dir, use_moe=True, num_experts=4, num_experts_per_tok=1, n_shared_experts=1
    )
    capsys.readouterr()
    assert main(["to-gguf", str(tmp_path / "moe"), str(tmp_path / "moe.gguf"), "--llama_cpp", str(root)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading progress bar
    assert error.startswith("error: Qwen3-MoE has no shared experts and this model has 1")
    assert not (tmp_path / "moe.gguf").exists()
