"""MiniMinds data tools: built-in corpus, JSONL I/O and validation, cleaning, dedup, conversion, packing,
sampling and reward functions. Each tool is a function and a `python -m data_process.<tool>` CLI."""
