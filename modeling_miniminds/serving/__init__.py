"""Serving a trained model: the OpenAI-compatible HTTP server, its web page, and the terminal chat."""
