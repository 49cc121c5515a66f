r"""Evaluate saved models side by side: bits per byte on held-out text, multiple-choice accuracy (C-Eval, CMMLU or
MMLU layouts), and greedy chat accuracy with the end-of-turn rate. Writes eval_results.json, a markdown table
(eval_table.md, also printed) and a bar chart (eval_chart.png) to --output_dir.

```bash
# The demo's stages on the built-in held-out data (multiple choice from data_process.mc)
python -m data_process.mc --out runs/demo/data/eval
python recipes/eval.py --model_name_or_path runs/demo/pretrain runs/demo/sft runs/demo/dpo \
    --text_files runs/demo/data/eval/pretrain.jsonl --mc_files runs/demo/data/eval/mc.jsonl \
    --chat_files runs/demo/data/eval/rl.jsonl --output_dir runs/demo/eval

# C-Eval 5-shot on its validation split (per-subject CSV files), answers scored as letters
python recipes/eval.py --model_name_or_path runs/sft-64m --mc_files ceval/val/*.csv \
    --mc_dev_files ceval/dev/*.csv --num_fewshot 5 --mc_style letters --output_dir runs/eval-ceval

# Bits per byte on a long text with overlapping windows, appending to a log of runs
python recipes/eval.py --model_name_or_path runs/pretrain-64m --text_files data/book.txt \
    --max_length 512 --stride 256 --output_dir runs/eval-book --results_file runs/eval_log.jsonl
```
"""

from recipes.training.cli import recipe_main
from recipes.training.eval_lm import EvalConfig, EvalModelArguments, EvalParser, EvalScriptArguments, evaluate


@recipe_main
def main(script_args, config, model_args):
    return evaluate(script_args, config, model_args)


def make_parser():
    return EvalParser((EvalScriptArguments, EvalConfig, EvalModelArguments), description=__doc__)


if __name__ == "__main__":
    script_args, config, model_args = make_parser().parse_args_and_config()
    main(script_args, config, model_args)
