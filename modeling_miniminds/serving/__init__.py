"""Serving a trained model: the OpenAI-compatible HTTP app (`serve`), its request schemas (`schemas`), the batch
worker that feeds the Generator (`worker`), the terminal chat (`chat`), their shared model flags (`options`), and the
web page (`static/chat.html`)."""
