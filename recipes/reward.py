r"""Train a reward model (MiniMind with a one-output score head) on preference pairs: the scorer of the PPO and GRPO
stages.

```bash
# CPU demo on the built-in corpus, from the SFT model (minimind-tiny, a minute or two)
python recipes/reward.py --config recipes/configs/reward_tiny.yaml --model_name_or_path runs/sft-tiny \
    --dataset_name data/builtin/dpo.jsonl --eval_dataset_name data/builtin/eval/dpo.jsonl --output_dir runs/reward-tiny

# One GPU, the 64M model; upstream MiniMind's dpo.jsonl is read as is; any TrainingArguments flag overrides the file
python recipes/reward.py --config recipes/configs/reward_64m.yaml --model_name_or_path runs/sft-64m \
    --dataset_name data/dpo.jsonl --output_dir runs/reward-64m

# Several GPUs: the other three launchers (same recipe flags after the script)
accelerate launch --config_file ds_configs/zero2.yaml recipes/reward.py --config recipes/configs/reward_64m.yaml ...
torchrun --nproc_per_node 8 recipes/reward.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/reward.py --deepspeed ds_configs/zero3.json --config ...

# Bad pairs (a missing or identical side) stop the run at their file:line; or set them aside, counted
python recipes/reward.py --config ... --skip_bad true          # -> <output_dir>/rejected_pairs.jsonl

# Continue an interrupted run (Ctrl-C saves a checkpoint first) from its latest complete checkpoint
python recipes/reward.py --config recipes/configs/reward_64m.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.reward import make_parser as stage_parser
from recipes.training.reward import reward


@recipe_main
def main(script_args, training_args, model_args):
    return reward(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
