"""Chat messages -> the prompt text the engine completes (POST /v1/chat/completions).

A tokenizer that ships a chat template (`tokenizer.chat_template`, as instruction-tuned
checkpoints do) renders the messages its own way. The embedded models' tokenizers have none,
and no special role tokens either, so they get DEFAULT_CHAT_TEMPLATE: a plain-text transcript,
one "role: content" line per message, ending with "assistant:" for the model to continue.
Plain text because a base model trained on plain text continues a transcript like that more
naturally than any markup, and every tokenizer encodes it. It goes through the same
`apply_chat_template` call as a tokenizer's own template, so the prompt of a request is exactly
what `chat_prompt` returns, and `LLMEngine.generate(chat_prompt(...))` reproduces a greedy
chat answer.

Rendering only reads the tokenizer's template (no tokenizer state changes), so the server's
tokenizing threads do it (admission.py); the engine thread only ever sees the token ids.
"""

from __future__ import annotations

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt for `messages` ([{role, content}, ...]); ValueError (naming `messages`) when
    the tokenizer cannot render them: no tokenizer, or its template refuses the messages."""
    if tokenizer is None:
        raise ValueError("messages: this checkpoint has no tokenizer, so it cannot take chat "
                         "messages; send token ids to /v1/completions")
    from jinja2 import TemplateError

    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as e:  # e.g. a template that insists roles alternate
        raise ValueError(f"messages: the model's chat template refused them: {e}") from None
