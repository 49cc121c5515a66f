"""`python -m data_process.synth --out DIR --size small --seed 0`: write the built-in corpus."""

import data_process.synth
from data_process.synth.corpus import SIZES, build_corpus
from modeling_miniminds.cli import FlagParser, command_main


def make_parser():
    parser = FlagParser(prog="python -m data_process.synth", description=data_process.synth.__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", default="small", choices=tuple(SIZES), help="tiny: tests; small: demo; medium")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    paths = build_corpus(args.out, size=args.size, seed=args.seed)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
