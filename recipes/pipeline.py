r"""Every stage of a profile in order, with a plan first, resume after a stop, and the report card at the end.

```bash
python -m recipes.pipeline --profile demo                          # `make demo`: built-in corpus, CPU
python -m recipes.pipeline --profile minimind-64m --data hub --plan_only   # files, tokens, disk, ETA; no training
python -m recipes.pipeline --profile minimind-64m --data hub       # then the run; run it again to resume
python -m recipes.pipeline --profile minimind-26m --data data/minimind --stages pretrain sft \
    --tokenizer data/minimind/tokenizer --set sft.learning_rate=2e-4
python -m recipes.pipeline --profile minimind-moe --dry_run        # every stage, a few steps, CPU
NPROC=8 python -m recipes.pipeline --profile minimind-64m --data hub   # each training stage on 8 GPUs
```

Profiles: demo (the recipes' `*_tiny.yaml`), minimind-26m, minimind-64m, minimind-moe (`*_26m.yaml`, `*_64m.yaml`,
`pretrain_moe.yaml`). `--data DIR` reads upstream MiniMind's files by name (pretrain_t2t_mini.jsonl or
pretrain_hq.jsonl, sft_t2t_mini.jsonl or sft_mini_512.jsonl, dpo.jsonl, rlaif.jsonl); `--data hub` downloads them.
"""

from recipes.training.pipeline import main

if __name__ == "__main__":
    main()
