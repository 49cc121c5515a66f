"""The whole pipeline on the built-in corpus, on a laptop CPU, ending in a report: `python -m recipes.pipeline
--profile demo`, with the demo's own flags.

    make demo                                        # installs, then runs this
    python -m recipes.demo --output_dir runs/demo    # corpus, tokenizer, pretrain, model, distill, sft, dpo,
                                                     # reward, ppo, grpo, eval (agent, tool_grpo: pipeline --stages)

Each training stage is parsed by its script's own parser from `recipes/configs/<stage>_tiny.yaml` (run sizes there,
knobs in the stage's dataclasses; the demo passes only paths and the seed) and runs the script's library function.
`--max_steps` / `--stage_steps` shorten the run (the tests). The report lands in `<output_dir>/report.md` and
`<output_dir>/report.json` (`{"stages": {"<stage>": {"seconds": ..., "before": {...}, "after": {...}, ...}}}`);
later stages add their entries. Every metric named held-out is measured on items no training file contains: the
corpus's eval/ split, or its dev/ split with `--split dev`, which is where the demo's settings are chosen. A second
run in the same folder skips the stages that finished (`--restart` runs them all again).
"""

import argparse

from recipes.training.pipeline import main as pipeline_main
from recipes.training.pipeline_profiles import DEMO_STAGES, TRAINING_STAGES

# The demo's training stages after pretraining, in its order: what `--stage_steps` caps.
POST_TRAINING = tuple(stage for stage in DEMO_STAGES if stage in TRAINING_STAGES and stage != "pretrain")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where every stage writes (default: runs/demo)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"], help="built-in corpus size")
    parser.add_argument("--vocab_size", type=int, default=2048, help="demo tokenizer vocabulary (default: 2048)")
    parser.add_argument("--max_steps", type=int, default=None, help="cap pretraining steps (default: the recipe's)")
    parser.add_argument(
        "--stage_steps", type=int, default=None, help="steps of each post-training stage (default: each recipe's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        default="eval",
        choices=["eval", "dev"],
        help="held-out split every stage is measured on: eval for the report (default), dev while choosing settings",
    )
    parser.add_argument("--restart", action="store_true", help="run every stage again, finished or not")
    return parser.parse_args(argv)


def pipeline_argv(args) -> list[str]:
    """The demo's flags as the pipeline's: its profile, and the step caps as per-stage `--set`s."""
    argv = ["--profile", "demo", "--output_dir", args.output_dir, "--size", args.size]
    argv += ["--vocab_size", str(args.vocab_size), "--seed", str(args.seed), "--split", args.split]
    if args.max_steps is not None:
        argv += ["--set", f"pretrain.max_steps={args.max_steps}"]
    if args.stage_steps is not None:
        argv += [item for stage in POST_TRAINING for item in ("--set", f"{stage}.max_steps={args.stage_steps}")]
    return argv + (["--restart"] if args.restart else [])


def main(argv=None) -> dict:
    return pipeline_main(pipeline_argv(parse_args(argv)))


if __name__ == "__main__":
    main()
