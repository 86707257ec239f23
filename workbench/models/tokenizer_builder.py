"""A byte-level BPE tokenizer trained offline on text every machine has: the Python stdlib.

Byte-level means every UTF-8 string round-trips exactly, whatever the training text was.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# The first id that is no special token: random prompts and placeholder tokens start here.
FIRST_ORDINARY_TOKEN_ID = len(SPECIAL_TOKENS)
_TRAINING_BYTES = 5_000_000


def _stdlib_texts(limit_bytes: int = _TRAINING_BYTES) -> list[str]:
    """Sorted stdlib sources up to limit_bytes: the same corpus on every run of a machine."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    if not texts:
        raise RuntimeError(f"no Python sources found under {root} to train the tokenizer on")
    return texts


def train_tokenizer(vocab_size: int, out_dir: Path, model_max_length: int) -> None:
    """Train a byte-level BPE and save it as a transformers `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_stdlib_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[PAD_ID],
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
