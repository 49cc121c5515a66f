"""Greedy completion of held-out facts by a saved model folder, loaded through its own modeling code.

    python -m recipes.complete_facts --model runs/demo/pretrain --eval_file runs/demo/data/eval/pretrain.jsonl

Each held-out document's first sentence is cut before its last word ("The capital of Japan is" | " Tokyo."); the
share of completions that start with the true ending is `fact_accuracy`. With `--without_package` the MiniMinds
packages are made unimportable first, so the folder must carry everything it needs (`trust_remote_code`), as it
would for someone who never installed MiniMinds. Imports only torch and transformers.
"""

import argparse
import json
import sys


def first_sentence_split(text: str) -> tuple[str, str] | None:
    end = min((i for i in (text.find(". "), text.find("。")) if i >= 0), default=len(text) - 1)
    sentence = text[: end + 1]
    cut = sentence.rstrip("。.").rfind(" ")
    return (sentence[:cut], sentence[cut:]) if cut > 0 else None


def complete_facts(model_dir: str, eval_file: str, num_facts: int = 64, num_samples: int = 6) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    with open(eval_file, encoding="utf-8") as f:
        documents = [json.loads(line)["text"] for line in f if line.strip()]
    facts = [split for split in map(first_sentence_split, documents) if split][:num_facts]
    samples, correct = [], 0
    for prompt, ending in facts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            output = model.generate(ids, max_new_tokens=len(tokenizer(ending).input_ids) + 4, do_sample=False)
        completion = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        correct += completion.strip().startswith(ending.strip())
        if len(samples) < num_samples:
            samples.append({"prompt": prompt, "expected": ending, "completion": completion})
    return {
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "fact_accuracy": round(correct / max(1, len(facts)), 3),
        "facts": len(facts),
        "samples": samples,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--eval_file", required=True, help="held-out pretrain JSONL ({'text': ...} per line)")
    parser.add_argument("--num_facts", type=int, default=64)
    parser.add_argument("--without_package", action="store_true", help="hide modeling_miniminds before loading")
    args = parser.parse_args(argv)
    if args.without_package:
        sys.modules["modeling_miniminds"] = None  # any import of it now raises ImportError
    result = complete_facts(args.model, args.eval_file, args.num_facts)
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
