"""Tokenizer helpers both backends use: load a checkpoint's tokenizer, call it under its one lock,
decode completions as reported.

Every encode and decode of a shared tokenizer goes through `LockedTokenizer`: fast (Rust) tokenizers
set padding and truncation on the shared object for each call, so two threads calling at once corrupt
each other's settings or fail with "Already borrowed". All wrappers of one tokenizer object share one
lock (`tokenizer_lock`), so the engine, the server and remote token counting never overlap.

SentencePiece checkpoints (Llama-2 and its fine-tunes, such as ``aligner/aligner-7b-v1.0``) that ship
only ``tokenizer.model`` are converted by transformers 5 with BPE merges ranked by piece id, while the
sentencepiece library ranks them by piece score. Llama-2 lists ``▁▁`` (two spaces, id 259) ahead of its other
merges but scores it below them, so text with two consecutive spaces (the ``aligner-v2`` template has two before
``ASSISTANT:``) is split differently from how the checkpoint was trained; and without ``add_bos_token``
in ``tokenizer_config.json`` version 5 adds no BOS token where version 4's ``LlamaTokenizer`` did.
`load_tokenizer` rebuilds such a tokenizer to encode exactly as it was trained (``tokenizer_mode``).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from aligner_chains.core.errors import CheckpointError, ConfigError, MissingDependencyError
from aligner_chains.core.options import TokenizerMode

TOKENIZER_MODES: tuple[str, ...] = get_args(TokenizerMode)

_SPM_FILE = "tokenizer.model"
_SPM_INSTALL = "pip install -e '.[sentencepiece]' (sentencepiece and protobuf)"


# ----------------------------------------------------------------------------- one lock per tokenizer

_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_by_id: dict[int, threading.Lock] = {}  # tokenizers that cannot be weakly referenced (rare)
_registry_lock = threading.Lock()


def tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """The one lock of ``tokenizer`` (the same object always gets the same lock)."""
    if isinstance(tokenizer, LockedTokenizer):
        return tokenizer.lock
    with _registry_lock:
        try:
            lock = _locks.get(tokenizer)
            if lock is None:
                lock = _locks[tokenizer] = threading.Lock()
        except TypeError:  # not weakly referenceable
            lock = _locks_by_id.setdefault(id(tokenizer), threading.Lock())
        return lock


class LockedTokenizer:
    """A shared Hugging Face tokenizer whose every encode and decode holds its one lock.

    Attributes (``pad_token_id``, ``eos_token_id``, ``chat_template``, ...) read through; other methods
    of the tokenizer are refused, so no call slips past the lock: use ``raw`` under ``lock`` for those.
    """

    def __init__(self, tokenizer: Any) -> None:
        if isinstance(tokenizer, LockedTokenizer):
            tokenizer = tokenizer.raw
        self.raw = tokenizer
        self.lock = tokenizer_lock(tokenizer)

    def __call__(self, text: str | list[str], **kwargs: Any) -> Any:
        """Encode like ``tokenizer(text, **kwargs)`` (padding, tensors, ...), under the lock."""
        with self.lock:
            return self.raw(text, **kwargs)

    def ids(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text."""
        return list(self(text, add_special_tokens=add_special_tokens)["input_ids"])

    def count(self, text: str, *, add_special_tokens: bool = True) -> int:
        """How many tokens ``text`` takes."""
        return len(self.ids(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: int | Sequence[int] | Any, **kwargs: Any) -> str:
        """Decode like ``tokenizer.decode(ids, **kwargs)`` (an id, a list, a tensor), under the lock."""
        with self.lock:
            return self.raw.decode(ids, **kwargs)

    def decode_text(self, ids: Sequence[int]) -> str:
        """Completion ids to text as corrections report it (see `decode_text`)."""
        return decode_text(self, ids)

    def __len__(self) -> int:
        with self.lock:
            return len(self.raw)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(
                f"LockedTokenizer does not pass on {name!r}: call it as `with t.lock: t.raw.{name}(...)`, "
                "so that no other thread uses the tokenizer meanwhile."
            )
        return value

    def __repr__(self) -> str:
        return f"LockedTokenizer({type(self.raw).__name__})"


def locked(tokenizer: Any) -> LockedTokenizer | None:
    """``tokenizer`` behind its lock (None stays None; a `LockedTokenizer` is returned as it is)."""
    if tokenizer is None or isinstance(tokenizer, LockedTokenizer):
        return tokenizer
    return LockedTokenizer(tokenizer)


# ----------------------------------------------------------------------------- loading


def load_tokenizer(path: Path, *, trust_remote_code: bool = False, tokenizer_mode: TokenizerMode = "auto") -> Any:
    """The checkpoint's tokenizer, left-padded, with a pad token (EOS when it has none).

    ``tokenizer_mode``: ``"sentencepiece"`` encodes exactly as the sentencepiece library does with the
    checkpoint's ``tokenizer.model`` (BPE merges ranked by piece score, one dummy-prefix space);
    ``"transformers"`` keeps what transformers builds; ``"auto"`` (default) is ``"sentencepiece"`` when
    the checkpoint ships ``tokenizer.model`` without ``tokenizer.json`` (a sentencepiece tokenizer
    saved it, so the model was trained on sentencepiece's ids) and ``"transformers"`` otherwise.
    """
    from transformers import AutoTokenizer

    if tokenizer_mode not in TOKENIZER_MODES:
        raise ConfigError(f"tokenizer_mode={tokenizer_mode!r}: use one of {', '.join(TOKENIZER_MODES)}.")
    path = Path(path)
    spm_file = path / _SPM_FILE
    spm_only = spm_file.is_file() and not (path / "tokenizer.json").is_file()
    if spm_only and not _has_sentencepiece():
        raise MissingDependencyError(
            f"{path} ships only a sentencepiece tokenizer ({_SPM_FILE}); transformers needs sentencepiece "
            f"and protobuf to read it: {_SPM_INSTALL}."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"Cannot load the tokenizer from {path}: {exc}") from exc
    if tokenizer_mode == "sentencepiece" or (tokenizer_mode == "auto" and spm_only):
        match_sentencepiece(tokenizer, spm_file, strict=tokenizer_mode == "sentencepiece")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(f"The tokenizer in {path} has neither a pad nor an EOS token; set eos_token.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _has_sentencepiece() -> bool:
    try:  # the model's protobuf schema checks that the protobuf runtime matches it
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except Exception:
        return False
    return True


def match_sentencepiece(tokenizer: Any, model_file: Path, *, strict: bool = True) -> bool:
    """Make a fast tokenizer encode exactly as sentencepiece does with ``model_file``; True when changed.

    Applies to sentencepiece BPE models without text normalisation (Llama-2's kind): the BPE merges are
    ranked by piece score and one ``▁`` is always prepended, as sentencepiece does, and a Llama tokenizer
    whose config does not say ``add_bos_token`` adds BOS, as transformers 4 did. Anything else is left
    as it is, or raises `ConfigError` when ``strict``.
    """

    def refuse(reason: str) -> bool:
        if strict:
            raise ConfigError(f"tokenizer_mode='sentencepiece' cannot apply to {model_file.parent}: {reason}.")
        return False

    if not model_file.is_file():
        return refuse(f"there is no {_SPM_FILE}")
    if not _has_sentencepiece():
        raise MissingDependencyError(f"tokenizer_mode='sentencepiece' needs {_SPM_INSTALL}.")
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import normalizers
    from tokenizers.models import BPE

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        return refuse("it is not a BPE model (transformers already follows unigram scores)")
    if norm.name not in ("identity", "") or norm.remove_extra_whitespaces or norm.precompiled_charsmap:
        return refuse(f"it normalises text ({norm.name!r}), which only sentencepiece itself reproduces")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if not isinstance(model, BPE):
        return refuse(f"{type(tokenizer).__name__} has no BPE tokenizers backend")
    vocab = backend.get_vocab(with_added_tokens=False)
    pieces = [p.piece for p in proto.pieces]
    if any(vocab.get(piece) != i for i, piece in enumerate(pieces)):
        return refuse("the tokenizer's vocabulary is not that of the sentencepiece model")
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    scores = {p.piece: p.score for p in proto.pieces if p.type == normal}
    backend.model = BPE(
        vocab=vocab,
        merges=merges_by_score(vocab, scores),
        unk_token=model.unk_token,
        fuse_unk=model.fuse_unk,
        byte_fallback=model.byte_fallback,
        dropout=model.dropout,
    )
    steps = [normalizers.Replace(" ", "▁")]
    if norm.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = None
    _llama_bos_default(tokenizer, model_file.parent)
    return True


def _llama_bos_default(tokenizer: Any, path: Path) -> None:
    """transformers 4's sentencepiece ``LlamaTokenizer`` added BOS unless its config said otherwise; version 5
    adds it only when ``tokenizer_config.json`` says ``add_bos_token``. Restore the old default there."""
    config_file = path / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError):
        return
    if config.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast") and "add_bos_token" not in config:
        tokenizer.add_bos_token = True
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()


def merges_by_score(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges in sentencepiece's order: the merged piece's score, highest first (ties: by id)."""
    ranked = []
    for piece, score in scores.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[piece], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# ----------------------------------------------------------------------------- decoding


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids to text the way corrections are reported: no special tokens, no space clean-up, stripped.

    A plain tokenizer is decoded under its lock too.
    """
    locked_tokenizer = tokenizer if isinstance(tokenizer, LockedTokenizer) else LockedTokenizer(tokenizer)
    return locked_tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
