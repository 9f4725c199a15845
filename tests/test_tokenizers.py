"""Tokenizers: one locked path for every call, and sentencepiece checkpoints encoded as they were trained."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from aligner_chains import Aligner
from aligner_chains.backends import tokenizers
from aligner_chains.backends.local import IncrementalDecoder, LoadOptions, load_model
from aligner_chains.backends.remote import RemoteBackend
from aligner_chains.backends.tokenizers import LockedTokenizer, load_tokenizer, locked
from aligner_chains.core.errors import ConfigError, MissingDependencyError
from aligner_chains.core.templates import get_template

THREADS, CALLS = 8, 200


# ----------------------------------------------------------------------------- one locked path


def test_every_wrapper_of_a_tokenizer_shares_its_one_lock(tiny_aligner: Aligner) -> None:
    raw = tiny_aligner.backend.loaded.tokenizer
    assert (
        LockedTokenizer(raw).lock is tiny_aligner.backend.tokenizer.lock is tiny_aligner.backend.loaded.tokenizer_lock
    )
    assert locked(tiny_aligner.backend.tokenizer) is tiny_aligner.backend.tokenizer
    assert locked(None) is None
    assert tiny_aligner.backend.tokenizer.pad_token_id == raw.pad_token_id  # attributes read through
    with pytest.raises(AttributeError, match="t.lock"):  # methods would bypass the lock
        tiny_aligner.backend.tokenizer.batch_decode([[1, 2]])


def test_single_and_padded_encodes_and_decodes_from_many_threads(tiny_aligner: Aligner) -> None:
    """The engine, the server's view and remote token counting share one tokenizer object; hammered from
    8 threads (single and padded encodes, decodes, streaming decodes), every call succeeds with the result
    it has alone. Without the lock, padded calls fail within a few hundred calls."""
    backend = tiny_aligner.backend
    raw = backend.loaded.tokenizer
    server_view = locked(raw)  # what the server builds from backend.tokenizer
    remote = RemoteBackend(
        "http://127.0.0.1:9", model="tiny", tokenizer=raw, token_counting="tokenizer", max_context=512
    )
    texts = [("word " * (1 + i % 7)) + f"number {i}" for i in range(12)]
    batches = [texts[i : i + 1 + i % 4] for i in range(len(texts))]
    expected_counts = [len(raw(t)["input_ids"]) for t in texts]
    expected_batches = [raw(b, padding=True, return_tensors="pt")["input_ids"].tolist() for b in batches]
    expected_text = raw.decode(raw(texts[3], add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    ids_3 = raw(texts[3], add_special_tokens=False)["input_ids"]
    errors: list[str] = []

    def work(worker: int) -> None:
        for call in range(CALLS):
            i = (worker + call) % len(texts)
            try:
                kind = call % 6
                if kind == 0:
                    got = backend.tokenizer(batches[i], padding=True, return_tensors="pt")["input_ids"].tolist()
                    assert got == expected_batches[i], "padded encode"
                elif kind == 1:
                    assert backend.count_tokens(texts[i]) == expected_counts[i], "engine count"
                elif kind == 2:
                    assert server_view.ids(texts[i]) == raw(texts[i])["input_ids"], "server encode"
                elif kind == 3:
                    assert remote.count_tokens(texts[i]) == expected_counts[i], "remote count"
                elif kind == 4:
                    assert backend.decode(ids_3) == expected_text.strip(), "decode"
                else:
                    decoder = IncrementalDecoder(backend.tokenizer, set(backend.eos_token_ids))
                    assert decoder.push(ids_3) + decoder.finish(expected_text.strip()) == expected_text.strip()
            except Exception as exc:  # collected: a failure in a thread must fail the test
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# ----------------------------------------------------------------------------- sentencepiece checkpoints

_WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had "
    "by hot word but what some we can out other were all there when up use your how said an each she which "
    "do their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call first "
    "Question Answer Correction Revision USER ASSISTANT BEGINNING CONVERSATION Edit following pair helpful"
).split()


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a sentencepiece ``tokenizer.model`` (as a slow tokenizer saves it), trained
    here like Llama-2's: BPE, byte fallback, whitespace-only pieces, no normalisation. As in Llama-2 (where
    ``▁▁`` is id 259, ahead of every merge), the whitespace-only pieces come first by id but score last."""
    root = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    lines = []
    for i in range(600):
        line = "".join(rng.choice(_WORDS) + rng.choice([" "] * 6 + ["  ", "   ", "    "]) for _ in range(8)).strip()
        lines.append("    " + line if i % 3 == 0 else line)
    (root / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "m"),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((root / "m.model").read_bytes())
    spaces = [p for p in proto.pieces if len(p.piece) > 1 and set(p.piece) == {"▁"}]
    assert spaces, "the model should have learned whitespace-only pieces"
    for piece in spaces:
        piece.score = -1e9
    model_dir = root / "checkpoint"
    model_dir.mkdir()
    (model_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return model_dir


def _sentencepiece_ids(model_dir: Path, text: str) -> list[int]:
    processor = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    return [processor.bos_id(), *processor.encode(text)]


def _prompts() -> dict[str, str]:
    question, answer = "What is hot water?", "Water is hot.\nIt was good, as you can see."
    return {
        name: get_template(name).render(question, answer) for name in ("aligner-v1", "aligner-v2", "aligner-revision")
    }


def test_transformers_alone_encodes_unlike_sentencepiece(spm_dir: Path) -> None:
    """What differs in transformers 5: no BOS token unless ``tokenizer_config.json`` says ``add_bos_token``
    (version 4's ``LlamaTokenizer`` added it), and BPE merges ranked by piece id, so ``▁▁`` is merged first
    where sentencepiece (ranking by score) writes ``▁`` + ``▁ASSISTANT``. Prompts without two spaces in a
    row differ only by the BOS token."""
    plain = load_tokenizer(spm_dir, tokenizer_mode="transformers")
    prompts = _prompts()
    assert "  " not in prompts["aligner-v1"]
    want = _sentencepiece_ids(spm_dir, prompts["aligner-v1"])
    assert plain(prompts["aligner-v1"])["input_ids"] == want[1:]  # all but the BOS token
    for name in ("aligner-v2", "aligner-revision"):
        assert "  ASSISTANT:" in prompts[name]
        got, want = plain(prompts[name])["input_ids"], _sentencepiece_ids(spm_dir, prompts[name])[1:]
        at = next(k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
        assert plain.convert_ids_to_tokens(got[at]) == "▁▁", name
        assert plain.convert_ids_to_tokens(want[at]) == "▁", name


def test_load_tokenizer_encodes_sentencepiece_checkpoints_as_trained(spm_dir: Path) -> None:
    tokenizer = load_tokenizer(spm_dir)  # "auto": only tokenizer.model, so sentencepiece's ids
    for name, prompt in _prompts().items():
        assert tokenizer(prompt)["input_ids"] == _sentencepiece_ids(spm_dir, prompt), name
    rng = random.Random(1)
    gaps = [" ", " ", "  ", "   ", "    ", "\n", " \n", "\n ", "  \n", ""]
    for _ in range(300):
        text = "".join(rng.choice(_WORDS + ["é", "日本", "42"]) + rng.choice(gaps) for _ in range(rng.randint(1, 8)))
        text = rng.choice(["", " ", "  "]) + text
        assert tokenizer(text)["input_ids"] == _sentencepiece_ids(spm_dir, text), repr(text)
    # Padded batches (left padding) and decoding agree too.
    prompts = list(_prompts().values())
    batch = tokenizer(prompts, padding=True)["input_ids"]
    for row, prompt in zip(batch, prompts, strict=True):
        ids = _sentencepiece_ids(spm_dir, prompt)
        assert row[len(row) - len(ids) :] == ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_from_pretrained_takes_the_sentencepiece_path_and_the_option(spm_dir: Path, tmp_path: Path) -> None:
    """Through the real loader: ``tokenizer_mode`` is a loading option (part of the cache key)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    for item in spm_dir.iterdir():
        (checkpoint / item.name).write_bytes(item.read_bytes())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(checkpoint, safe_serialization=True)
    prompt = _prompts()["aligner-v2"]
    want = _sentencepiece_ids(spm_dir, prompt)
    exact = Aligner.from_pretrained(str(checkpoint), template="aligner-v2", max_new_tokens=2, micro_batching=False)
    assert exact.backend.tokenizer.ids(prompt) == want
    assert exact.backend.count_tokens(prompt) == len(want)
    plain = Aligner.from_pretrained(
        str(checkpoint), template="aligner-v2", tokenizer_mode="transformers", max_new_tokens=2, micro_batching=False
    )
    assert plain.backend.tokenizer.ids(prompt) != want
    assert exact.backend.loaded is not plain.backend.loaded  # two cache entries
    with pytest.raises(ConfigError, match="tokenizer_mode='bogus'"):
        load_model(str(checkpoint), LoadOptions(tokenizer_mode="bogus"))  # type: ignore[arg-type]


def test_sentencepiece_mode_needs_a_sentencepiece_model(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.model"):
        load_tokenizer(tiny_model_dir, tokenizer_mode="sentencepiece")
    assert load_tokenizer(tiny_model_dir)("a b")["input_ids"]  # "auto" leaves a tokenizer.json checkpoint alone


def test_missing_sentencepiece_is_named(spm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizers, "_has_sentencepiece", lambda: False)
    with pytest.raises(MissingDependencyError, match=r"-e '\.\[sentencepiece\]'"):
        load_tokenizer(spm_dir)
