r"""Pretrain a MiniMind model from scratch, or continue pretraining one, on packed text.

```bash
# CPU demo on the built-in corpus (minimind-tiny, a couple of minutes)
python -m data_process.synth --out data/builtin --size small
python recipes/tokenizer.py --dataset_name data/builtin/pretrain.jsonl --output_dir runs/tokenizer
python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml \
    --dataset_name data/builtin/pretrain.jsonl --eval_dataset_name data/builtin/eval/pretrain.jsonl \
    --tokenizer_name_or_path runs/tokenizer --output_dir runs/pretrain-tiny

# One GPU, the default 64M model; any TrainingArguments flag overrides the recipe file
python recipes/pretrain.py --config recipes/configs/pretrain_64m.yaml \
    --dataset_name data/pretrain_hq.jsonl --tokenizer_name_or_path runs/tokenizer --output_dir runs/pretrain-64m

# Several GPUs: the other three launchers (same recipe flags after the script)
accelerate launch --config_file ds_configs/zero2.yaml recipes/pretrain.py --config recipes/configs/pretrain_104m.yaml
torchrun --nproc_per_node 8 recipes/pretrain.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/pretrain.py --deepspeed ds_configs/zero3.json --config ...

# Continue an interrupted run (Ctrl-C saves a checkpoint first) from its latest complete checkpoint
python recipes/pretrain.py --config recipes/configs/pretrain_64m.yaml ... --resume_from_checkpoint auto
```
"""

from recipes.training.cli import recipe_main
from recipes.training.pretraining import make_parser as stage_parser
from recipes.training.pretraining import pretrain


@recipe_main
def main(script_args, training_args, model_args):
    return pretrain(script_args, training_args, model_args)


def make_parser():
    return stage_parser(description=__doc__)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
