"""Reproduce the shipped demo Aligner: build its data, train it with `train_sft`, score it, install it.

    python -m cookbook.demo_aligner.train --workdir runs/demo --install  # full recipe (2 CPU cores: ~5 h)
    python -m cookbook.demo_aligner.train --workdir runs/demo --short    # a seconds-long smoke version
    python -m cookbook.demo_aligner.train --evaluate aligner_chains/demo/model

The held-out set is built with another seed from disjoint base texts and contact pools.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from aligner_chains.demo import DEMO_MODEL_DIR
from aligner_chains.finetune.average import average_exports
from aligner_chains.finetune.config import SFTConfig
from aligner_chains.finetune.sft import train_sft
from cookbook.demo_aligner.dataset import build_examples, find_contacts, redact, score_demo, write_jsonl
from cookbook.demo_aligner.real import build_real_examples, correct_and_score, draft_phrases, heldout_sets
from cookbook.demo_aligner.variety import noise_word

TRAIN_SEED, HELDOUT_SEED, VALIDATION_SEED = 0, 1, 2

_ARCH = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
}
_COMMON = {
    "template": "aligner-v2",
    "max_length": 512,
    "eval_fraction": 0.02,
    "num_epochs": 1.0,
    "per_device_batch_size": 32,
    "mixed_precision": "bf16",  # 1.5x faster than fp32 on CPUs with AVX512-BF16
    "weight_decay": 0.01,
    "warmup_ratio": 0.03,
    "save_steps": 100,
    "logging_steps": 10,
}


def _continued(learning_rate: float, seed: int) -> dict[str, Any]:
    """The training settings of a phase that continues from an export (no identity warm-up)."""
    return {**_COMMON, "identity_warmup_fraction": 0.0, "learning_rate": learning_rate, "seed": seed}


#: The data of phases 8-11: scrambled answers whose made-up words include vocabulary pieces, composed
#: contacts and dangerous requests, a third of contact sentences made of real words.
_PIECES = {"scramble": 0.5, "noise": 0.2, "vocabulary_noise": True, "rich": True, "composed_contacts": 0.3}
_MORE_DANGER = {"clean": 0.4, "redact": 0.3, "dangerous": 0.3}
#: The data of phases 11-12: more dangerous rows still, and numbers among the made-up words.
_NUMBERS = {"mix": {"clean": 0.35, "redact": 0.3, "dangerous": 0.35}, **_PIECES, "number_noise": True}
#: The data of phases 13-14: repeated lead-ins before contacts, complying answers of unrelated text.
_LOOSE = {**_NUMBERS, "mix": {"clean": 0.3, "redact": 0.3, "dangerous": 0.4}, "repeat_lead": 0.5, "loose_comply": 0.5}

#: The recipe of the shipped model: phase 1 trains from scratch (identity warm-up first); every
#: later phase continues from the previous export (or the mean of those named by ``"base"``) on
#: fresh examples with a new cosine schedule; the shipped model is the last export unless
#: ``"average"`` names phases to average. ``--short`` scales it down for smoke tests and CI.
FULL: dict[str, Any] = {
    "n_heldout": 1000,
    "phases": [
        {
            "n_train": 30000,
            "data_seed": TRAIN_SEED,
            "config": {
                **_COMMON,
                "model_config": _ARCH,
                "tokenizer_vocab_size": 4096,
                "tokenizer_extra_tokens": ["[EMAIL]", "[PHONE]"],
                "identity_warmup_fraction": 0.2,
                "learning_rate": 1.5e-3,
                "seed": 0,
            },
        },
        {
            "n_train": 30000,
            "data_seed": TRAIN_SEED + 2,
            "config": _continued(1.0e-3, seed=1),
        },
        {
            # Phases 1-2 learned the format but memorised the base sentences instead of copying them
            # (held-out exact match 2 %). Scrambled answers cannot be predicted, only copied.
            "n_train": 24000,
            "data_seed": TRAIN_SEED + 3,
            "scramble": 0.6,
            "config": _continued(1.0e-3, seed=2),
        },
        {
            # Phase 3 learned to copy (loss 0.015, still falling): more of the same at a lower rate.
            "n_train": 32000,
            "data_seed": TRAIN_SEED + 4,
            "scramble": 0.5,
            "config": _continued(6.0e-4, seed=3),
        },
        {
            # Phase 4 copied 79 % of clean held-out answers and refused none: composed contacts and
            # dangerous requests (``rich``) and made-up words in scrambled answers (``noise``).
            "n_train": 56000,
            "data_seed": TRAIN_SEED + 5,
            "scramble": 0.5,
            "noise": 0.15,
            "rich": True,
            "config": _continued(6.0e-4, seed=4),
        },
        {
            # Phase 5: exact match 78 %, clean unchanged 88 %, redaction 88 %, refusals 91 %. More of it.
            "n_train": 56000,
            "data_seed": TRAIN_SEED + 6,
            "scramble": 0.5,
            "noise": 0.15,
            "rich": True,
            "config": _continued(4.0e-4, seed=5),
        },
        {
            # Phase 6 alone: clean unchanged 90 %, redaction 89 %, but refusals fell to 67 %; the mean
            # of phases 5 and 6 kept the best of both (exact match 78.7 %; a phase at lr 2.5e-4 with
            # noise 0.25 and the mean of 5-7 were worse: 76.9 % and 78.2 %). Its held-out failures
            # were mostly contact sentences of unseen wording: every answer with one slipped on a
            # word near the contact or copied a word-like local part before [EMAIL]. So this phase
            # starts from that mean and composes half its contact sentences from real words.
            "base": [5, 6],
            "n_train": 56000,
            "data_seed": TRAIN_SEED + 7,
            "scramble": 0.5,
            "noise": 0.15,
            "rich": True,
            "composed_contacts": 0.5,
            "config": _continued(3.0e-4, seed=6),
        },
        {
            # Phase 7: exact match 81.8 %, redaction 96.9 %, but every held-out answer with the word
            # "drop" failed: its piece " dro" never occurred in a correction, so the model could not
            # write it. Half the made-up words are now pieces of the tokenizer's own vocabulary.
            # From this phase on, scrambling no longer glues a word onto a contact (phases 3-7
            # trained on data where ~6 % of scrambled contact rows had one, e.g. "[PHONE] 3882nqp").
            "n_train": 56000,
            "data_seed": TRAIN_SEED + 8,
            **_PIECES,
            "config": _continued(3.0e-4, seed=7),
        },
        {
            # Phase 8: exact match 84.3 %, clean unchanged 97.6 %, redaction 96.3 %, but refusals
            # fell to 62 %. More dangerous rows, at a lower rate.
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 9,
            "mix": _MORE_DANGER,
            **_PIECES,
            "config": _continued(2.0e-4, seed=8),
        },
        {
            # Phase 9: exact match 88.2 %, clean unchanged 96.9 %, redaction 98.0 %, refusals 80 %.
            # The same data anew at half the rate.
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 10,
            "mix": _MORE_DANGER,
            **_PIECES,
            "config": _continued(1.0e-4, seed=9),
        },
        {
            # Phase 10: clean unchanged 99.0 %, but refusals fell to 60 %; the mean of phases 9 and 10:
            # exact match 89.0 %, refusals 72 %, and 0.5 % of answers without contacts got a token
            # (numbers such as "10 units" became [PHONE]). From that mean, with more dangerous rows
            # and numbers among the made-up words.
            "base": [9, 10],
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 11,
            **_NUMBERS,
            "config": _continued(1.5e-4, seed=10),
        },
        {
            # Phase 11: clean unchanged 99.2 %, no false redaction, refusals 61 %. Refusals swing from
            # phase to phase (80, 60, 61 % in phases 9-11) while copying keeps improving; of the means
            # tried, that of phases 7, 9, 10 and 11 scored best on validation (exact match 89.9 %,
            # refusals 76 %). Phases 12-14 all start from that mean at a gentle rate, each on fresh
            # data, to be averaged with it. Phase 12: the data of phase 11, 35 % dangerous rows.
            "base": [7, 9, 10, 11],
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 12,
            **_NUMBERS,
            "config": _continued(1.0e-4, seed=11),
        },
        {
            # Two failure families of that mean on validation. Half its contact failures dropped or
            # doubled a lead-in word that also occurs just before it ("to drop a line to <address>"):
            # lead-ins are now repeated in training. Its missed refusals came from the answers: with a
            # training-style complying answer in place of the held-out one it refused 100 %, with a
            # training-style question 82 %. So half the complying answers are now unrelated real text.
            "base": [7, 9, 10, 11],
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 13,
            **_LOOSE,
            "config": _continued(1.0e-4, seed=12),
        },
        {
            "base": [7, 9, 10, 11],
            "n_train": 40000,
            "data_seed": TRAIN_SEED + 14,
            **_LOOSE,
            "config": _continued(1.0e-4, seed=13),
        },
    ],
    # Alone, phases 12-14 score lower than the mean they start from (validation exact match 87.1,
    # 88.8 and 87.0 %; 13 and 14 refuse every dangerous request but also 6-7 % of harmless ones).
    # The mean of that mean and phases 12-14 scored best of the means tried on both validation sets
    # (seeds 2 and 3: 93.4 % each), so it ships. Also tried from the same mean: lr 2e-4 with 35 %
    # dangerous rows and lr 3e-4 with 40 % (86.8 and 86.3 % alone); a phase like 14 whose clean
    # passages are asked 40 % of the time by harmless requests worded like dangerous ones
    # (``harmless_requests=0.4``: 89.5 % alone, over-refusal 3.8 %; 92.4-93.3 % in the means tried).
    "average": [[7, 9, 10, 11], 12, 13, 14],
}
#: Demo Aligner v2: phases that continue from the v1 recipe's result on real, multi-line answers of open
#: chat models (``cookbook.demo_aligner.real``), with a 2,048-token context. ``--from MODEL`` starts them
#: from an existing v1 export instead of running phases 1-14 again.
_REAL_COMMON = {**_COMMON, "max_length": 2048, "per_device_batch_size": 8, "identity_warmup_fraction": 0.0}
REAL_PHASES: list[dict[str, Any]] = [
    {
        # v1 stops at the first newline and garbles prompts over ~140 tokens: it never saw either. Real
        # answers (10 generators, 70 % of the instructions), cut to runs of lines in a quarter of rows,
        # contacts inserted as sentences, list items, table rows or inline; AdvBench requests with
        # complying replies of unrelated real text. A tenth of the rows are v1's, to keep its skills.
        "real": True,
        "real_mix": {"clean": 0.42, "redact": 0.32, "harmful": 0.26},
        "base": "v1",
        "context": 2048,
        "n_train": 12000,
        "data_seed": 100,
        "v1_share": 0.1,
        "config": {**_REAL_COMMON, "learning_rate": 3e-4, "seed": 100},
    },
    {
        # Harmless questions worded like dangerous ones ("How do I kill a Python process?"), a tenth
        # of the rows, with their written answers or real ones; fresh rows otherwise, at a lower rate.
        "real": True,
        "n_train": 12000,
        "data_seed": 101,
        "v1_share": 0.1,
        "config": {**_REAL_COMMON, "learning_rate": 2e-4, "seed": 101},
    },
    {
        # Phase 15 on validation: long copies slip (a repeated phrase takes the copy elsewhere) or run on
        # past the answer into the prompt's "##Correction:"; more of phase 16's data at a lower rate.
        "real": True,
        "n_train": 9000,
        "data_seed": 102,
        "v1_share": 0.1,
        "config": {**_REAL_COMMON, "learning_rate": 1e-4, "seed": 102},
    },
    {
        # Phase 17 on validation: 4 in 10 answers over 500 characters slip, and contact rows fail most
        # (44 % exact). Twice the rows, more of them with contacts, the over-refusal share kept, 5 % v1.
        "real": True,
        "real_mix": {"clean": 0.42, "redact": 0.36, "harmful": 0.12, "harmless": 0.10},
        "n_train": 24000,
        "data_seed": 103,
        "v1_share": 0.05,
        "config": {**_REAL_COMMON, "learning_rate": 2e-4, "seed": 103},
    },
    {
        # Phase 18 gained on every figure (copies 70 -> 79 %, redactions 41 -> 52 %); more contact rows
        # at a lower rate, to settle.
        "real": True,
        "real_mix": {"clean": 0.38, "redact": 0.42, "harmful": 0.10, "harmless": 0.10},
        "n_train": 12000,
        "data_seed": 104,
        "v1_share": 0.05,
        "config": {**_REAL_COMMON, "learning_rate": 8e-5, "seed": 104},
    },
]
REAL: dict[str, Any] = {"n_heldout": FULL["n_heldout"], "phases": [*FULL["phases"], *REAL_PHASES], "average": []}
SHORT: dict[str, Any] = {
    "n_heldout": 40,
    "phases": [
        {
            "n_train": 400,
            "data_seed": TRAIN_SEED,
            "config": {
                **FULL["phases"][0]["config"],
                "model_config": {**_ARCH, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
                "tokenizer_vocab_size": 1024,
                "per_device_batch_size": 16,
                "save_steps": 10,
            },
        },
        {
            "n_train": 200,
            "data_seed": TRAIN_SEED + 3,
            "scramble": 0.6,
            "config": {**FULL["phases"][2]["config"], "per_device_batch_size": 16, "save_steps": 10},
        },
        {
            "base": [1, 2],
            "n_train": 200,
            "data_seed": TRAIN_SEED + 7,
            "scramble": 0.5,
            "noise": 0.2,
            "vocabulary_noise": True,
            "rich": True,
            "composed_contacts": 0.5,
            "config": {**FULL["phases"][6]["config"], "per_device_batch_size": 16, "save_steps": 10},
        },
    ],
    "average": [2, 3],
}


def build_data(
    path: Path,
    n: int,
    seed: int,
    split: str,
    scramble_fraction: float = 0.0,
    noise: float = 0.0,
    vocabulary: Vocabulary | None = None,
    **options: Any,
) -> Path:
    """Write one JSONL file of demo examples (deterministic for a seed); ``options`` go to `build_examples`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = build_examples(n, seed, split, **options)  # type: ignore[arg-type]
    write_jsonl(scramble(rows, scramble_fraction, seed, noise, vocabulary) if scramble_fraction else rows, path)
    return path


class Vocabulary:
    """A tokenizer's pieces as text, to make noise words that put every piece in a target.

    A token never seen as a target keeps (under weight decay, shrinks) its initial embedding, so
    the model cannot write it even when copying: the held-out word ``drop`` became ``Okp``
    because the piece `` dro`` never occurred in a correction.
    """

    def __init__(self, tokenizer_dir: str | Path, numbers: bool = False) -> None:
        from transformers import AutoTokenizer

        self.numbers = numbers  # also numbers (counts, years, decimals, percentages), kept as they are
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        special = set(tokenizer.all_special_ids)
        self.starts: list[str] = []  # pieces that begin a word (a leading space in byte-level BPE)
        self.rests: list[str] = []  # pieces that continue one
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            if token_id in special or not text.strip() or "\ufffd" in text or "@" in text or "[" in text:
                continue
            (self.starts if text.startswith(" ") else self.rests).append(text.strip())

    def word(self, rng: random.Random) -> str:
        """One or two pieces, drawn uniformly, as a made-up word (or, with ``numbers``, sometimes a number)."""
        if self.numbers and rng.random() < 0.25:
            return _number(rng)
        word = rng.choice(self.starts)
        return word + rng.choice(self.rests) if rng.random() < 0.4 else word


def _number(rng: random.Random) -> str:
    """A number that is not a phone number: a count, year, decimal, percentage or amount."""
    return rng.choice(
        (
            str(rng.randint(0, 99)),
            str(rng.randint(100, 9999)),
            f"{rng.randint(0, 999)}.{rng.randint(0, 99)}",
            f"{rng.randint(0, 100)}%",
            f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}%",
            f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}",
            f"${rng.randint(1, 999)}",
            str(rng.randint(1800, 2030)),
        )
    )


def _noise(rng: random.Random, vocabulary: Vocabulary | None) -> str:
    return vocabulary.word(rng) if vocabulary is not None and rng.random() < 0.5 else noise_word(rng)


def _shuffle_words(
    text: str,
    rng: random.Random,
    noise: float = 0.0,
    vocabulary: Vocabulary | None = None,
    after_contact: bool = False,
    before_contact: bool = False,
) -> str:
    """Shuffle (and maybe replace) the words of ``text``, a stretch between contacts. A word that
    touches a contact (no space between, as the ``.`` after one) stays in place and unchanged, so
    no other word is glued onto the contact."""
    words = text.strip(" ").split(" ")
    head = words[:1] if after_contact and not text.startswith(" ") else []
    tail = words[-1:] if before_contact and not text.endswith(" ") and len(words) > len(head) else []
    middle = words[len(head) : len(words) - len(tail)]
    if len(middle) < 2:
        return text
    rng.shuffle(middle)
    if noise:
        middle = [_noise(rng, vocabulary) if rng.random() < noise else word for word in middle]
    lead, trail = text[: len(text) - len(text.lstrip(" "))], text[len(text.rstrip(" ")) :]
    return lead + " ".join([*head, *middle, *tail]) + trail


def scramble(
    rows: list[dict[str, str]], fraction: float, seed: int, noise: float = 0.0, vocabulary: Vocabulary | None = None
) -> list[dict[str, str]]:
    """Shuffle the words of a ``fraction`` of copy and redaction answers (contacts kept whole).

    The words stay real but their order cannot be predicted, so the model must learn to copy
    rather than memorise the base sentences; the correction is recomputed from the new answer.
    ``noise`` also swaps that share of the shuffled words for made-up ones (unseen subwords), half
    of them made of ``vocabulary`` pieces when one is given.
    """
    rng = random.Random(f"scramble-{seed}")
    out = []
    for row in rows:
        if row.get("category") not in ("passage", "contact", "benign_trigger") or rng.random() >= fraction:
            out.append(row)
            continue
        text, pieces, pos = row["answer"], [], 0
        spans = find_contacts(text)
        for start, end, _ in spans:
            pieces += [_shuffle_words(text[pos:start], rng, noise, vocabulary, pos > 0, True), text[start:end]]
            pos = end
        answer = "".join([*pieces, _shuffle_words(text[pos:], rng, noise, vocabulary, pos > 0)])
        if [answer[s:e] for s, e, _ in find_contacts(answer)] != [text[s:e] for s, e, _ in spans]:
            out.append(row)  # shuffling made or changed a contact-like run: keep the original
            continue
        out.append({**row, "answer": answer, "correction": redact(answer) if spans else answer})
    return out


#: Recipe phase keys that are `build_examples` options, passed on under the same names.
EXAMPLE_KEYS = frozenset({"rich", "composed_contacts", "mix", "repeat_lead", "loose_comply", "harmless_requests"})
#: What a recipe phase may say (anything else is a typo, refused before training starts).
PHASE_KEYS = EXAMPLE_KEYS | {
    "n_train",
    "data_seed",
    "config",
    "base",
    "scramble",
    "noise",
    "vocabulary_noise",
    "number_noise",
    "real",  # v2: rows of `cookbook.demo_aligner.real` ...
    "v1_share",  # ... with this share of v1 rows (the data of phases 13-14)
    "real_mix",  # ... and these shares of row kinds (`real.TRAIN_MIX`)
    "context",  # the base model's context is raised to this many tokens first
}


def build_real_data(path: Path, n: int, seed: int, v1_share: float = 0.0, mix: dict[str, float] | None = None) -> Path:
    """Write one JSONL file of v2 rows (real answers), ``v1_share`` of them v1 rows (phases 13-14's data)."""
    n_v1 = round(n * v1_share)
    rows = build_real_examples(n - n_v1, seed, "train", mix)
    if n_v1:
        options = {key: value for key, value in _LOOSE.items() if key in EXAMPLE_KEYS}
        rows += scramble(build_examples(n_v1, seed, "train", **options), _LOOSE["scramble"], seed, _LOOSE["noise"])
        random.Random(seed).shuffle(rows)
    write_jsonl(rows, path)
    return path


def with_context(model: Path, tokens: int, out: Path) -> Path:
    """A copy of the export ``model`` whose model and tokenizer accept ``tokens`` positions (RoPE is relative,
    so the weights stay as they are; training on longer rows teaches the longer distances)."""
    if not (out / "config.json").is_file():
        shutil.copytree(model, out, dirs_exist_ok=True)
        for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
            settings = json.loads((out / name).read_text(encoding="utf-8"))
            settings[key] = tokens
            (out / name).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return out


def run_recipe(recipe: dict[str, Any], workdir: Path, start: Path | None = None) -> Path:
    """Train every phase in turn (each resumable), each phase starting from the previous export.

    A phase's ``"base"`` (phase numbers, or ``"v1"`` for the v1 recipe's average) starts it from that
    mean instead. ``recipe["average"]`` makes the result the weight average of those phases' exports; a
    member that is itself a list of phase numbers stands for the mean of those phases (one member, one
    share). ``start`` (an existing v1 export) skips the v1 phases and stands for their average.
    """
    for number, phase in enumerate(recipe["phases"], start=1):
        unknown = set(phase) - PHASE_KEYS
        if unknown:
            raise ValueError(f"recipe phase {number} has unknown keys {sorted(unknown)}; known: {sorted(PHASE_KEYS)}")
    base: Path | None = None
    for number, phase in enumerate(recipe["phases"], start=1):
        if start is not None and not phase.get("real"):
            continue
        done = workdir / f"phase{number}" / "final"
        if (done / "aligner_config.json").is_file():  # finished earlier: reuse its export
            base = done
            continue
        if phase.get("base") == "v1":
            base = start or _average(workdir, FULL["average"], "v1-average")
        elif phase.get("base"):  # start from the mean of earlier phases' exports
            base = average_exports(_finals(workdir, phase["base"]), workdir / f"start{number}")
        if phase.get("context") and base is not None:
            base = with_context(base, phase["context"], workdir / f"start{number}-context")
        if phase.get("real"):
            train = build_real_data(
                workdir / f"phase{number}" / "train.jsonl",
                phase["n_train"],
                phase["data_seed"],
                phase.get("v1_share", 0.0),
                phase.get("real_mix"),
            )
        else:
            train = build_data(
                workdir / f"phase{number}" / "train.jsonl",
                phase["n_train"],
                phase["data_seed"],
                "train",
                phase.get("scramble", 0.0),
                phase.get("noise", 0.0),
                Vocabulary(base, phase.get("number_noise", False)) if phase.get("vocabulary_noise") and base else None,
                **{key: value for key, value in phase.items() if key in EXAMPLE_KEYS},
            )
        settings = {**phase["config"], "train_file": str(train), "output_dir": str(workdir / f"phase{number}")}
        if base is not None:
            settings["base_model"] = str(base)
        base = train_sft(SFTConfig.model_validate(settings))
    assert base is not None
    if recipe.get("average"):
        base = _average(workdir, recipe["average"], "average")
    return base


def _average(workdir: Path, members: list[Any], name: str) -> Path:
    """The weight average of ``members`` (phase numbers, or lists of them standing for their mean)."""
    paths = [
        average_exports(_finals(workdir, member), workdir / f"{name}-part{i}")
        if isinstance(member, list)
        else _finals(workdir, [member])[0]
        for i, member in enumerate(members, start=1)
    ]
    return average_exports(paths, workdir / name)


def _finals(workdir: Path, phases: list[int]) -> list[Path]:
    """The export directories of ``phases`` (numbers from 1) under ``workdir``."""
    return [workdir / f"phase{n}" / "final" for n in phases]


def evaluate(
    model: str | Path, heldout: Path | None = None, n: int = 1000, batch_size: int = 32, seed: int | None = None
) -> dict[str, Any]:
    """Score an Aligner on the held-out set: exact match, clean unchanged, redaction, refusal figures.

    ``seed`` builds another set from the held-out split: ``VALIDATION_SEED`` is the one phases and
    averages are chosen on, so that the reported set (``HELDOUT_SEED``) plays no part in choosing.
    """
    from aligner_chains.core.aligner import Aligner

    rows = (
        [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()]
        if heldout is not None
        else build_examples(n, HELDOUT_SEED if seed is None else seed, "heldout")
    )
    aligner = Aligner.from_pretrained(str(model), device="cpu")
    started = time.perf_counter()
    results = aligner.correct_batch([(r["question"], r["answer"]) for r in rows], batch_size=batch_size)
    scores = score_demo(rows, [r.corrected for r in results])
    return {**scores, "n": len(rows), "seconds": round(time.perf_counter() - started, 1)}


def evaluate_real(
    model: str | Path, part: str = "report", batch_size: int = 8, limit: int | None = None
) -> dict[str, Any]:
    """Score an Aligner on the v2 held-out rows of ``part`` (``report``, or ``validation`` to choose on):
    the five figures of :func:`cookbook.demo_aligner.real.score_real`, and CPU seconds per correction."""
    from aligner_chains.core.aligner import Aligner

    rows = heldout_sets(part)  # type: ignore[arg-type]
    if limit is not None:
        rows = random.Random(0).sample(rows, min(limit, len(rows)))
    found = correct_and_score(Aligner.from_pretrained(str(model), device="cpu"), rows, batch_size)
    return {**found, "part": part}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--short", action="store_true", help="tiny smoke version of the recipe")
    parser.add_argument("--v1", action="store_true", help="only the v1 recipe (one-line synthetic text, 512 tokens)")
    parser.add_argument("--from", dest="start", metavar="MODEL", help="start the v2 phases from this v1 export")
    parser.add_argument("--install", action="store_true", help=f"copy the trained model to {DEMO_MODEL_DIR}")
    parser.add_argument("--evaluate", metavar="MODEL", help="only score MODEL on the held-out set")
    parser.add_argument("--part", choices=("report", "validation"), help="with --evaluate: the v2 held-out split")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"with --evaluate: another v1 held-out set (validation: {VALIDATION_SEED})",
    )
    args = parser.parse_args(argv)
    if args.evaluate:
        if args.part:
            scores = evaluate_real(args.evaluate, args.part)
            scores.pop("failures")
        else:
            scores = evaluate(args.evaluate, seed=args.seed)
        print(json.dumps(scores, indent=2))
        return 0
    recipe = SHORT if args.short else FULL if args.v1 else REAL
    workdir = Path(args.workdir)
    heldout = build_data(workdir / "heldout.jsonl", recipe["n_heldout"], HELDOUT_SEED, "heldout")
    final = run_recipe(recipe, workdir, Path(args.start) if args.start else None)
    scores = evaluate(final, heldout)
    if recipe is REAL:
        scores = {"v2_report": evaluate_real(final, "report"), "v1_heldout": scores}
        scores["v2_report"].pop("failures")
    (final / "heldout_scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(scores, indent=2))
    if args.install:  # the model's files replace the shipped ones; its README stays
        shutil.copytree(final, DEMO_MODEL_DIR, dirs_exist_ok=True)
        config_file = DEMO_MODEL_DIR / "aligner_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["draft_phrases"] = draft_phrases()
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        print(f"Installed at {DEMO_MODEL_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
