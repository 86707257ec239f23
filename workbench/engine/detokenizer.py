"""Incremental detokenization: emit text only once it is complete UTF-8.

Byte-level BPE tokens can split a multi-byte character; decoding a sliding window of recent
tokens and holding back text that ends in U+FFFD (the replacement character) avoids emitting
broken characters, as vLLM and TGI do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class IncrementalDetokenizer:
    tokenizer: object
    prompt_len: int
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""
    sent: int = 0  # characters of `text` already streamed (the engine holds back stop prefixes)

    def __post_init__(self) -> None:
        # Start a few tokens back into the prompt so the first output token decodes in context.
        self.read_offset = self.prompt_len
        self.prefix_offset = max(0, self.prompt_len - 5)

    def update(self, token_ids: list[int], final: bool = False) -> str:
        """Feed the sequence's full token list; return the newly completed text.

        `final` flushes whatever is held back (the sequence ended mid-character)."""
        if self.tokenizer is None:  # a checkpoint without tokenizer: token ids only
            return ""
        decode = self.tokenizer.decode
        prefix = decode(token_ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(token_ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(token_ids)
            self.text += delta
            return delta
        return ""
