"""Train a byte-level BPE tokenizer from text, for models trained from scratch.

`train_sft` uses it when ``SFTConfig.model`` is None (a small Aligner trained from scratch, such as the
shipped demo) and no ``tokenizer`` is given: a vocabulary learned from the training rows themselves
keeps the embedding matrix small and the sequences short, which matters far more for a model of a few
million parameters than for a 7B one. The tests build their tiny models with it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["train_byte_bpe"]


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 512, *, pad: bool = False, extra: list[str] | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``; BOS added to every encoding.

    Byte-level, so any text encodes (no unknown token) and decoding gives the text back exactly.
    Special tokens: ``<s>`` (BOS, prepended to every encoding) and ``</s>`` (EOS), plus ``<pad>`` with
    ``pad=True``. ``vocab_size`` counts the 256 byte symbols and the special tokens; ``extra`` strings
    (e.g. a template's markers) are added as whole tokens after training, so they never split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>"] + (["<pad>"] if pad else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if extra:
        tok.add_tokens(extra)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    kwargs: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>"}
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
