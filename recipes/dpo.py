r"""Direct preference optimisation of an SFT model on preference pairs; the SFT folder, frozen, is the reference.

```bash
# CPU demo on the built-in corpus, from the SFT model (minimind-tiny, a few minutes)
python recipes/dpo.py --config recipes/configs/dpo_tiny.yaml --model_name_or_path runs/sft-tiny \
    --dataset_name data/builtin/dpo.jsonl --eval_dataset_name data/builtin/eval/dpo.jsonl \
    --chat_eval_dataset data/builtin/eval/rl.jsonl --output_dir runs/dpo-tiny

# One GPU, the 64M model; the loss (sigmoid, ipo, ...), beta and a precomputed reference are flags
python recipes/dpo.py --config recipes/configs/dpo_64m.yaml --model_name_or_path runs/sft-64m \
    --dataset_name data/dpo.jsonl --output_dir runs/dpo-64m --loss_type ipo --beta 0.5 --precompute_ref_log_probs true

# LoRA: the reference is the policy with its adapter disabled; the saved folder has the adapter merged
python recipes/dpo.py --config recipes/configs/dpo_64m.yaml ... --use_peft true --lora_r 16 --learning_rate 5e-6

# Several GPUs: the other three launchers (same recipe flags after the script)
accelerate launch --config_file ds_configs/zero3.yaml recipes/dpo.py --config recipes/configs/dpo_64m.yaml ...
torchrun --nproc_per_node 8 recipes/dpo.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/dpo.py --deepspeed ds_configs/zero3.json --config ...

# Pairs from SFT or RL data when none exist: sample the SFT model, keep checkably wrong replies as rejected
python -m data_process.make_pairs --model runs/sft-64m --input data/rl.jsonl --output data/pairs.jsonl

# Continue an interrupted run (Ctrl-C saves a checkpoint first) from its latest complete checkpoint
python recipes/dpo.py --config recipes/configs/dpo_64m.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.dpo import dpo
from recipes.training.dpo import make_parser as stage_parser


@recipe_main
def main(script_args, training_args, model_args):
    return dpo(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
