"""The MiniMinds chat format in one place: the special and tag tokens, the Jinja chat template, the response
template that reads a reply back, and the Ollama template of the same layout.

ChatML turns (`<|im_start|>role\n...<|im_end|>\n`); an assistant turn may open with a `<think>` block and end with
`<tool_call>` JSON blocks; tool results come back as `tool` turns inside `<tool_response>`. The chat template wraps
assistant content, including the closing <|im_end|>, in {% generation %} markers so TRL's `assistant_only_loss=True`
trains exactly those tokens. `tests/test_tokenizer.py` renders the same conversations through all three templates
and through `replies.parse_reply`, so a change to one that the others miss fails there.
"""

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE = TAG_TOKENS[:4]

CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call the functions whose JSON signatures are inside <tools></tools>:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nTo call one, reply with <tool_call>\\n' }}
    {{- '{"name": <name>, "arguments": <object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {%- if message.reasoning_content %}
                {{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}
            {%- endif %}
            {{- message.content or '' }}
            {%- if message.tool_calls %}
                {%- for tool_call in message.tool_calls %}
                    {%- set call = tool_call.function if tool_call.function else tool_call %}
                    {%- if message.content or not loop.first %}
                        {{- '\\n' }}
                    {%- endif %}
                    {{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
                    {%- if call.arguments is string %}
                        {{- call.arguments }}
                    {%- else %}
                        {{- call.arguments | tojson }}
                    {%- endif %}
                    {{- '}\\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


# How a reply rendered by CHAT_TEMPLATE parses back (transformers' response-template format, version 1): an optional
# <think> block, then any number of <tool_call> JSON objects, and the text up to <|im_end|> as the content.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def writes_replies_alike(chat_template) -> bool:
    """Whether a template lays out replies as CHAT_TEMPLATE does: ChatML turns whose tool calls are <tool_call> JSON
    blocks after the thinking and the content. The project's template and upstream MiniMind's (Qwen's layout) do."""
    return isinstance(chat_template, str) and f"{BOS}assistant" in chat_template and TOOL_OPEN in chat_template


def add_response_template(tokenizer):
    """Let `tokenizer.parse_response` read replies (tool calls included) of the MiniMinds chat template or one that
    writes replies alike (upstream MiniMind's), as TRL's tool loop needs; a tokenizer with another template, or one
    that already has a response template, is returned unchanged."""
    if writes_replies_alike(tokenizer.chat_template) and getattr(tokenizer, "response_template", None) is None:
        tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


# Ollama's Go template for the same layout: the tools in the system turn, assistant turns with their thinking and
# tool calls, tool turns, then the generation prompt (thinking left to the model, as when `enable_thinking` is unset).
OLLAMA_TEMPLATE = """\
{{- if .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}

{{ end }}# Tools

You may call the functions whose JSON signatures are inside <tools></tools>:
<tools>
{{- range .Tools }}
{{ json . }}
{{- end }}
</tools>

To call one, reply with <tool_call>
{"name": <name>, "arguments": <object>}
</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}
{{- $content := .Content }}
{{- range $i, $call := .ToolCalls }}
{{- if or $content $i }}
{{ end }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
</tool_call>
{{- end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>tool
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ else if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
