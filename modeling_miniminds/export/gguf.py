"""GGUF export through llama.cpp's own converter, and an Ollama Modelfile for the result.

    python -m modeling_miniminds.export.convert to-gguf runs/sft runs/sft.gguf --modelfile        # f16
    python -m modeling_miniminds.export.convert to-gguf runs/sft runs/sft-q8.gguf --outtype q8_0

The model goes through the `to-qwen3` export into a temporary folder (checked by equal logits), then through
llama.cpp's `convert_hf_to_gguf.py`, run in a subprocess with its own `gguf-py`. llama.cpp names a BPE
pre-tokenizer by the hash of the ids a tokenizer gives one fixed text, and refuses hashes it does not list. The
MiniMinds tokenizer splits text with Qwen2's regex (digits one by one), which llama.cpp has under the name `qwen2`;
upstream MiniMind's uses GPT-2's byte-level regex, llama.cpp's `gpt-2`. The subprocess maps this tokenizer's hash to
its name before the converter runs; the vendored file is never edited.
"""

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from hashlib import sha256
from pathlib import Path

from ..tokenizer import load_tokenizer
from ..tokenizer.bpe import SPLIT_REGEX
from ..tokenizer.chat_format import OLLAMA_TEMPLATE
from .qwen3 import export_qwen3

CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f16", "q8_0")
LLAMA_CPP_ENV = "LLAMA_CPP_DIR"
GET_CONVERTER = (
    "pip download --no-deps --no-binary :all: llama-cpp-python -d .venv/src && "
    "tar xzf .venv/src/llama_cpp_python-*.tar.gz -C .venv/src (what `make test-all` does), "
    "or git clone https://github.com/ggml-org/llama.cpp and pass --llama_cpp DIR"
)
# tokenizers' ByteLevel pre-tokenizer with use_regex=True splits with GPT-2's regex, which llama.cpp calls "gpt-2";
# a Split on Qwen2's regex followed by a ByteLevel without one is what llama.cpp calls "qwen2".
BYTE_LEVEL_PRE = "gpt-2"
QWEN2_PRE = "qwen2"
# `{% generation %}` is a transformers extension (assistant masks for training) that other Jinja engines reject;
# `{% if true %}` keeps the same whitespace control and renders the same text.
GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def converter_root(folder: Path) -> Path | None:
    """The llama.cpp folder holding the converter: `folder` itself (a llama.cpp checkout) or its `vendor/llama.cpp`
    (an unpacked llama-cpp-python sdist); None when neither has it."""
    for root in (folder, folder / "vendor" / "llama.cpp"):
        if (root / CONVERTER).is_file():
            return root
    return None


def llama_cpp_source_tree() -> Path | None:
    """The folder above the installed `llama_cpp` package: its source tree for a checkout or editable install."""
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).resolve().parents[1] if spec is not None and spec.origin else None


def find_llama_cpp(explicit: str | Path | None = None) -> Path:
    """llama.cpp's converter folder: `--llama_cpp DIR`, else $LLAMA_CPP_DIR, else the installed llama_cpp package's
    source tree, else an unpacked sdist or checkout under `<venv>/src`. Raises FileNotFoundError saying what to get."""
    for given, what in ((explicit, "--llama_cpp"), (os.environ.get(LLAMA_CPP_ENV), f"${LLAMA_CPP_ENV}")):
        if given:
            root = converter_root(Path(given).expanduser())
            if root is None:
                raise FileNotFoundError(f"{what} {given}: no {CONVERTER} there or in its vendor/llama.cpp")
            return root
    candidates = [folder] if (folder := llama_cpp_source_tree()) else []
    src = Path(sys.prefix) / "src"
    candidates += sorted(src.glob("llama_cpp_python-*"), reverse=True) + [src / "llama.cpp"]
    for folder in candidates:
        root = converter_root(folder)
        if root is not None:
            return root
    raise FileNotFoundError(
        f"llama.cpp's {CONVERTER} not found (--llama_cpp, ${LLAMA_CPP_ENV}, the llama_cpp package, {src}): "
        f"{GET_CONVERTER}"
    )


def read_check_text(root: Path) -> str:
    """The fixed text llama.cpp hashes a tokenizer's ids of (`chktxt` in `get_vocab_base_pre`), read from the
    converter's source without running it; the converter is one file in older llama.cpp, a package in newer."""
    for path in [root / CONVERTER, *sorted((root / "conversion").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "get_vocab_base_pre":
                for statement in ast.walk(node):
                    if (
                        isinstance(statement, ast.Assign)
                        and [getattr(t, "id", None) for t in statement.targets] == ["chktxt"]
                        and isinstance(statement.value, ast.Constant)
                    ):
                        return statement.value.value
    raise ValueError(f"{root}: no get_vocab_base_pre with a chktxt string in {CONVERTER} or conversion/")


def tokenizer_hash(tokenizer, check_text: str) -> str:
    """llama.cpp's `chkhsh`: sha256 of the printed list of ids `tokenizer.encode(chktxt)` returns."""
    return sha256(str(tokenizer.encode(check_text)).encode()).hexdigest()


def llama_cpp_pre_tokenizer(tokenizer_json: Path) -> str | None:
    """The llama.cpp pre-tokenizer whose regex matches the one in `tokenizer.json`, or None when it is not one this
    module knows (llama.cpp may still know the tokenizer by its hash)."""
    pre = json.loads(Path(tokenizer_json).read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and byte_level(steps[0], use_regex=True):
        return BYTE_LEVEL_PRE
    if len(steps) == 2 and qwen2_split(steps[0]) and byte_level(steps[1], use_regex=False):
        return QWEN2_PRE
    return None


def byte_level(step: dict, use_regex: bool) -> bool:
    return (
        step.get("type") == "ByteLevel"
        and step.get("use_regex", True) == use_regex
        and not step.get("add_prefix_space", False)
    )


def qwen2_split(step: dict) -> bool:
    return (
        step.get("type") == "Split"
        and step.get("pattern") == {"Regex": SPLIT_REGEX}
        and step.get("behavior") == "Isolated"
        and not step.get("invert", False)
    )


def portable_chat_template(template: str) -> str:
    """The chat template without transformers' `{% generation %}` markers, rendering the same text."""
    return GENERATION_TAG.sub(lambda m: f"{{%{m[1]} {'endif' if m[2] else 'if true'} {m[3]}%}}", template)


def make_template_portable(folder: Path) -> None:
    """Rewrite the chat template saved in `folder` (chat_template.jinja or tokenizer_config.json) in place."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(portable_chat_template(jinja.read_text(encoding="utf-8")), encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(config.get("chat_template"), str):
            config["chat_template"] = portable_chat_template(config["chat_template"])
            config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def register_pre_tokenizer(root: Path, chkhsh: str, name: str) -> int:
    """Make every loaded converter class answer `name` for a tokenizer whose hash is `chkhsh`, and defer to
    llama.cpp's own table otherwise. Returns how many classes were patched (0: the converter changed shape)."""
    check_text = read_check_text(root)
    patched = 0
    for module in list(sys.modules.values()):
        if not str(getattr(module, "__file__", None) or "").startswith(str(root)):
            continue
        for cls in list(vars(module).values()):
            if not (isinstance(cls, type) and cls.__module__ == module.__name__):
                continue
            original = cls.__dict__.get("get_vocab_base_pre")
            if original is None:
                continue

            def get_vocab_base_pre(self, tokenizer, _original=original):
                if tokenizer_hash(tokenizer, check_text) == chkhsh:
                    return name
                return _original(self, tokenizer)

            cls.get_vocab_base_pre = get_vocab_base_pre
            patched += 1
    return patched


def converter_main(argv=None) -> None:
    """The converter subprocess: `LLAMA_CPP_DIR CHKHSH PRE_NAME -- converter args`; PRE_NAME `-` registers nothing."""
    root, chkhsh, name, separator, *converter_args = argv if argv is not None else sys.argv[1:]
    assert separator == "--", f"expected `--` before the converter's arguments, got {separator!r}"
    root = str(Path(root).resolve())  # module __file__s are absolute; the patch below finds them by this prefix
    sys.path[:0] = [root, str(Path(root) / "gguf-py")]
    converter = importlib.import_module(Path(CONVERTER).stem)
    if name != "-" and register_pre_tokenizer(Path(root), chkhsh, name) == 0:
        raise SystemExit(f"{root}: no class defines get_vocab_base_pre; this llama.cpp is not supported")
    sys.argv = [converter.__file__, *converter_args]
    converter.main()


def run_converter(root: Path, model_dir: Path, output: Path, outtype: str) -> None:
    """llama.cpp's converter on a Qwen3 folder, with this tokenizer's pre-tokenizer registered; raises RuntimeError
    with the converter's last lines when it fails."""
    name = llama_cpp_pre_tokenizer(model_dir / "tokenizer.json") if (model_dir / "tokenizer.json").is_file() else None
    chkhsh = tokenizer_hash(load_tokenizer(model_dir), read_check_text(root)) if name else "-"
    command = [sys.executable, "-c", "from modeling_miniminds.export.gguf import converter_main; converter_main()"]
    command += [str(root), chkhsh, name or "-", "--", str(model_dir), "--outfile", str(output), "--outtype", outtype]
    package_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not output.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"llama.cpp's converter failed (exit {result.returncode}) on {model_dir}:\n{tail}")


def write_modelfile(gguf: Path, stops=STOP_TOKENS) -> Path:
    """An Ollama Modelfile next to `gguf`: FROM the file, the ChatML template, and the end-of-turn stops."""
    lines = [
        f"# ollama create NAME -f {gguf.parent / 'Modelfile'}, then: ollama run NAME",
        f"FROM ./{gguf.name}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        *[f'PARAMETER stop "{stop}"' for stop in stops],
    ]
    path = gguf.parent / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def export_gguf(source: Path, output: Path, outtype: str = "f16", llama_cpp=None, modelfile: bool = False) -> float:
    """MiniMind folder -> GGUF file (and a Modelfile); returns the Qwen3 step's max |logit diff|."""
    if outtype not in OUTTYPES:
        raise ValueError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    root = find_llama_cpp(llama_cpp)  # before any work, so a missing converter costs nothing
    if not (Path(source) / "tokenizer.json").is_file():
        raise ValueError(f"{source}: a GGUF file carries its tokenizer, and this folder has no tokenizer.json")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="miniminds-gguf-") as tmp:
        qwen3_dir = Path(tmp) / "qwen3"
        diff = export_qwen3(Path(source), qwen3_dir)
        make_template_portable(qwen3_dir)
        partial = output.with_name(output.name + ".partial")  # a failed run leaves no file under the final name
        try:
            run_converter(root, qwen3_dir, partial, outtype)
            shutil.move(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    if modelfile:
        write_modelfile(output)
    return diff
