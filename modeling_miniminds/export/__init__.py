"""Export: conversion to and from Qwen3 and upstream MiniMind weights, GGUF for llama.cpp and Ollama, model cards and Hub push, LoRA merge."""
