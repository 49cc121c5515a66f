"""Convert a model between MiniMind and the layouts other tools run, and push any of them to the Hub with a model card.

    python -m modeling_miniminds.export.convert to-qwen3 runs/sft runs/sft-qwen3          # vLLM, SGLang, llama.cpp, ...
    python -m modeling_miniminds.export.convert from-qwen3 runs/sft-qwen3 runs/sft-again
    python -m modeling_miniminds.export.convert from-upstream full_sft_512.pth runs/upstream \
        --config minimind-26m --tokenizer ../minimind/model
    python -m modeling_miniminds.export.convert to-gguf runs/sft runs/gguf/sft.gguf --outtype q8_0 --modelfile
    python -m modeling_miniminds.export.convert push runs/sft you/minimind-sft             # or --push_to_hub on any of the above

Every export is checked by equal logits on a fixed input before it is written (`export.qwen3`); `to-gguf` runs
llama.cpp's own converter on that Qwen3 export (`export.gguf`), `from-upstream` reads upstream MiniMind `.pth`
checkpoints (`export.upstream`), and the card is written by `export.model_card`.
"""

import sys
from pathlib import Path

from ..cli import FlagParser, command_main, did_you_mean
from .gguf import LLAMA_CPP_ENV, OUTTYPES, export_gguf
from .model_card import model_card, push_to_hub
from .qwen3 import export_qwen3, import_qwen3
from .upstream import import_upstream

COMMANDS = {
    "to-qwen3": "MiniMind folder -> Qwen3ForCausalLM / Qwen3MoeForCausalLM",
    "from-qwen3": "Qwen3 / Qwen3-MoE folder -> MiniMind folder",
    "from-upstream": "upstream MiniMind .pth -> MiniMinds folder",
    "to-gguf": "MiniMind folder -> GGUF file, through llama.cpp's converter",
    "push": "upload a model folder to the Hub with a generated model card",
}
# A failed logit check and a failed llama.cpp run are RuntimeErrors: the user's model or converter, not a bug here.
ERRORS = (ValueError, OSError, RuntimeError)


def push(args, folder: Path, card_source: Path | None = None, gguf: Path | None = None) -> str:
    """Upload `folder` (or only the GGUF file and its Modelfile) with a card written from `card_source`'s files."""
    repo = args.repo if args.command == "push" else args.push_to_hub
    card = model_card(card_source or folder, repo, gguf_files=[gguf] if gguf else (), data=args.data)
    allow = [gguf.name, *(["Modelfile"] if args.modelfile else [])] if gguf else None
    return push_to_hub(folder, repo, card, allow_patterns=allow, private=args.private)


def push_if_asked(args, folder: Path, **card) -> None:
    if args.push_to_hub:
        print(f"pushed to {push(args, folder, **card)}")


def run_qwen3(args) -> None:
    convert = export_qwen3 if args.command == "to-qwen3" else import_qwen3
    diff = convert(args.source, args.output)
    print(f"wrote {args.output}: max |logit diff| vs {args.source} = {diff:.3g}")
    push_if_asked(args, args.output)


def run_upstream(args) -> None:
    count = import_upstream(args.checkpoint, args.output, args.config, args.tokenizer)
    print(f"wrote {args.output}: {count} tensors from {args.checkpoint}, all keys matched")
    push_if_asked(args, args.output)


def run_gguf(args) -> None:
    diff = export_gguf(args.source, args.output, args.outtype, args.llama_cpp, args.modelfile)
    size = args.output.stat().st_size / 2**20
    print(
        f"wrote {args.output} ({args.outtype}, {size:.1f} MiB) through Qwen3, max |logit diff| {diff:.3g}"
        f"{'; Modelfile next to it' if args.modelfile else ''}"
    )
    push_if_asked(args, args.output.parent, card_source=args.source, gguf=args.output)


def run_push(args) -> None:
    print(f"pushed {args.source} to {push(args, args.source)}")


def add_push_arguments(command: FlagParser) -> None:
    command.add_argument("--push_to_hub", metavar="REPO", default=None, help="also upload the result to this Hub repo")
    command.add_argument("--private", action="store_true", help="create the Hub repo private (with --push_to_hub)")
    command.add_argument(
        "--data",
        default=None,
        help="what the model was trained on, for the model card; None: read from a report.json next to the weights",
    )


def make_parser() -> FlagParser:
    parser = FlagParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, run) -> FlagParser:
        command = commands.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        command.set_defaults(run=run, command_parser=command)
        return command

    for name in ("to-qwen3", "from-qwen3"):
        command = add_command(name, run_qwen3)
        command.add_argument("source", type=Path, help="model folder to convert")
        command.add_argument("output", type=Path, help="folder to write")
        add_push_arguments(command)
    upstream = add_command("from-upstream", run_upstream)
    upstream.add_argument("checkpoint", type=Path, help="upstream state dict (.pth)")
    upstream.add_argument("output", type=Path, help="folder to write")
    upstream.add_argument("--config", required=True, help="preset name or upstream/MiniMinds config.json")
    upstream.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder to copy (upstream's works)")
    add_push_arguments(upstream)
    gguf = add_command("to-gguf", run_gguf)
    gguf.add_argument("source", type=Path, help="MiniMind model folder, with its tokenizer")
    gguf.add_argument("output", type=Path, help="GGUF file to write")
    gguf.add_argument("--outtype", choices=OUTTYPES, default="f16", help="tensor type")
    gguf.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile next to the file")
    gguf.add_argument(
        "--llama_cpp",
        default=None,
        help=f"llama.cpp checkout or unpacked llama-cpp-python sdist; None: ${LLAMA_CPP_ENV}, then the installed "
        "llama_cpp, then <venv>/src",
    )
    add_push_arguments(gguf)
    hub = add_command("push", run_push)
    hub.add_argument("source", type=Path, help="model folder to upload")
    hub.add_argument("repo", help="Hub repository id, owner/name")
    hub.add_argument("--private", action="store_true", help="create the repo private")
    hub.add_argument("--data", default=None, help="what the model was trained on, for the model card")
    return parser


def parse_args(argv=None):
    """The parsed command line. A misspelt command, or a flag its command does not take, exits with one `error:`
    line naming the nearest real one: argparse hands a subcommand's unknown flags to the top parser, which knows
    none of them, so the command's own parser reports them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser()
    if argv and argv[0] not in (*COMMANDS, "-h", "--help"):  # so every other flag is the command's
        parser.error(f"unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}")  # the usage lists them all
    args, extras = parser.parse_known_args(argv)
    if extras:
        args.command_parser.parse_args(argv[1:])  # exits, naming the command's nearest flag
    return args


@command_main(errors=ERRORS)
def main(argv=None) -> int:
    args = parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
