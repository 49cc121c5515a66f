"""Streaming text: an incremental detokenizer and stop strings that are never streamed."""

from collections.abc import Sequence

from tokenizers.decoders import DecodeStream


class TextStream:
    """Incremental detokenizer: text for each new token, held back while the tokens end inside a multi-byte
    character (byte-level BPE splits UTF-8 sequences across tokens, and decoding half of one yields U+FFFD).
    `tokenizers`' DecodeStream does the work on the tokenizer's backend, special tokens skipped as in `decode`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.stream = DecodeStream(skip_special_tokens=True)
        self.held = []

    def push(self, token_id: int) -> str:
        text = self.stream.step(self.backend, token_id) or ""
        self.held = [] if text else [*self.held, token_id]
        return text

    def flush(self) -> str:
        """The held-back tokens' text when the reply ends inside a character: U+FFFD for the stray bytes, as
        `decode` gives them, so a finished reply's text is always the decode of its tokens."""
        held, self.held = self.held, []
        return self.tokenizer.decode(held, skip_special_tokens=True) if held else ""


class StopStrings:
    """Cuts a stream at the first stop string. Text that could still become a stop string is held back, so no part
    of a stop string is ever streamed."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [stop for stop in stops if stop]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached (then nothing follows)."""
        if not self.stops:
            return text, False
        buffer = self.pending + text
        hits = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        held = max((n for stop in self.stops for n in range(1, len(stop)) if buffer.endswith(stop[:n])), default=0)
        self.pending = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
