"""Script-aware text helpers shared by cleaning, dedup and tokenizer reports: one definition of CJK."""

import re
from collections import defaultdict

# CJK Unified Ideographs, Extension A and the Compatibility Ideographs, as a regex character-class body.
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
IS_CJK = re.compile(f"[{CJK}]")


def text_language(text: str) -> str:
    """`zh` when at least a fifth of the letters are CJK ideographs, else `en`."""
    letters = [ch for ch in text if ch.isalpha()]
    cjk = sum(bool(IS_CJK.match(ch)) for ch in letters)
    return "zh" if letters and cjk / len(letters) >= 0.2 else "en"


def compression_stats(tokenizer, texts) -> dict:
    """Per language: documents, UTF-8 bytes per token and characters per token (higher is better)."""
    totals = defaultdict(lambda: {"docs": 0, "bytes": 0, "chars": 0, "tokens": 0})
    for text in texts:
        entry = totals[text_language(text)]
        entry["docs"] += 1
        entry["bytes"] += len(text.encode("utf-8"))
        entry["chars"] += len(text)
        entry["tokens"] += len(tokenizer.encode(text, add_special_tokens=False))
    return {
        lang: {
            "docs": t["docs"],
            "bytes_per_token": round(t["bytes"] / max(t["tokens"], 1), 4),
            "chars_per_token": round(t["chars"] / max(t["tokens"], 1), 4),
        }
        for lang, t in sorted(totals.items())
    }
