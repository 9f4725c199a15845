"""Tests for the demo Aligner dataset builder (reads only the recipe's own sources/)."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from cookbook.demo_aligner import dataset as ds
from cookbook.demo_aligner import variety

N = 2000


@pytest.fixture(scope="module")
def train_rows() -> list[dict[str, str]]:
    return ds.build_examples(N, 0, "train")


@pytest.fixture(scope="module")
def heldout_rows() -> list[dict[str, str]]:
    return ds.build_examples(600, 1, "heldout")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _regex_redact(text: str) -> str:
    return ds.PHONE_RE.sub(ds.PHONE_TOKEN, ds.EMAIL_RE.sub(ds.EMAIL_TOKEN, text))


# -- sources -------------------------------------------------------------------


def test_sources_folder_is_small_and_documented() -> None:
    files = [p for p in ds.SOURCES_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4_000_000  # v2's real answers are 2.3 MB of gzip
    readme = (ds.SOURCES_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("alpaca_eval", "hh-rlhf", "llm-attacks", "Apache-2.0", "MIT"):
        assert needle in readme
    for path in (p for p in files if p.name != "README.md"):  # every file's origin and licence is stated
        stem = path.name.split("_train")[0].split("_heldout")[0].split(".")[0]
        assert stem in readme, path.name


def test_source_sentences_are_clean() -> None:
    for split in ("train", "heldout"):
        for rec in _read_jsonl(ds.SOURCES_DIR / f"passages_{split}.jsonl"):
            for sent in rec["sentences"]:
                assert sent.isascii() and 4 <= len(sent.split()) <= 30
                assert not ds.find_contacts(sent) and "http" not in sent and "**" not in sent
            if rec["question"]:
                assert len(rec["question"].split()) <= 20


def test_train_and_heldout_base_texts_are_disjoint() -> None:
    def texts(split: str) -> tuple[set[str], set[str], set[str]]:
        recs = _read_jsonl(ds.SOURCES_DIR / f"passages_{split}.jsonl")
        sents = {s for r in recs for s in r["sentences"]}
        questions = {r["question"] for r in recs if r["question"]}
        dangerous = {r["question"] for r in _read_jsonl(ds.SOURCES_DIR / f"dangerous_{split}.jsonl")}
        return sents, questions, dangerous

    train, heldout = texts("train"), texts("heldout")
    assert len(train[0]) > 1000 and len(heldout[0]) > 200
    for a, b in zip(train, heldout, strict=True):
        assert not a & b


def test_heldout_answers_use_no_train_sentences(heldout_rows: list[dict[str, str]]) -> None:
    train_sents = ds.load_sources("train").passages
    train_set = {s for _, sents in train_sents for s in sents}
    heldout_set = {s for _, sents in ds.load_sources("heldout").passages for s in sents}
    for row in heldout_rows:
        if row["category"] == "passage":
            assert not any(s in row["answer"] for s in train_set if s not in heldout_set)
            assert any(s in row["answer"] for s in heldout_set)


def test_heldout_uses_other_contact_pools(heldout_rows: list[dict[str, str]]) -> None:
    train = ds._POOLS["train"]
    train_words = set(train.domains) | set(train.first) | set(train.last)
    heldout_emails = [m.group(0) for r in heldout_rows for m in ds.EMAIL_RE.finditer(r["answer"])]
    assert heldout_emails
    for email in heldout_emails:
        user, host = email.lower().split("@")
        assert not train_words & set(host.split(".")), email
        assert not train_words & set(re.split(r"[._+]", user)), email


# -- builder -------------------------------------------------------------------


def test_deterministic_given_seed() -> None:
    a = ds.build_examples(300, 0, "train")
    assert a == ds.build_examples(300, 0, "train")
    assert a != ds.build_examples(300, 1, "train")
    h = ds.build_examples(200, 0, "heldout")
    assert h == ds.build_examples(200, 0, "heldout")
    assert h != a[:200]


def test_row_fields(train_rows: list[dict[str, str]]) -> None:
    assert len(train_rows) == N
    for row in train_rows:
        assert {"question", "answer", "correction", "kind"} <= set(row)
        assert row["kind"] in ("clean", "redact", "refuse")
        assert all(isinstance(row[k], str) and row[k].strip() for k in ("question", "answer", "correction"))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_redact_examples(split: str, train_rows: list[dict[str, str]], heldout_rows: list[dict[str, str]]) -> None:
    rows = train_rows if split == "train" else heldout_rows
    redacts = [r for r in rows if r["kind"] == "redact"]
    assert redacts
    n_tokens = []
    for row in redacts:
        answer, correction = row["answer"], row["correction"]
        contacts = [answer[s:e] for s, e, _ in ds.find_contacts(answer)]
        assert 1 <= len(contacts) <= 3
        assert "[EMAIL]" not in answer and "[PHONE]" not in answer
        # no raw contact left in the correction
        assert not ds.EMAIL_RE.search(correction) and not ds.PHONE_RE.search(correction)
        assert not any(c in correction for c in contacts)
        # correction == answer with each contact replaced, nothing else changed
        assert correction == _regex_redact(answer) == ds.redact(answer)
        expected = answer
        for c in contacts:
            token = ds.EMAIL_TOKEN if "@" in c else ds.PHONE_TOKEN
            expected = expected.replace(c, token, 1)
        assert correction == expected
        n_tokens.append(correction.count(ds.EMAIL_TOKEN) + correction.count(ds.PHONE_TOKEN))
    assert {1, 2, 3} <= set(n_tokens)
    text = " ".join(r["answer"] for r in redacts)
    assert ds.EMAIL_RE.search(text) and ds.PHONE_RE.search(text)


def test_clean_examples_are_identical(train_rows: list[dict[str, str]], heldout_rows: list[dict[str, str]]) -> None:
    for row in train_rows + heldout_rows:
        if row["kind"] == "clean":
            assert row["correction"] == row["answer"]
            assert not ds.find_contacts(row["answer"])
        if row["kind"] != "redact":
            assert "[EMAIL]" not in row["correction"] and "[PHONE]" not in row["correction"]


def test_refuse_examples(train_rows: list[dict[str, str]]) -> None:
    refusals = set(ds.REFUSALS.values())
    refuse = [r for r in train_rows if r["kind"] == "refuse"]
    assert {r["category"] for r in refuse} == set(ds.REFUSALS)
    for row in refuse:
        assert row["correction"] == ds.REFUSALS[row["category"]]
        assert row["answer"] not in refusals and not ds.find_contacts(row["answer"])
    for refusal in refusals:
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", refusal)) <= 2


def test_mix_proportions(train_rows: list[dict[str, str]], heldout_rows: list[dict[str, str]]) -> None:
    for rows in (train_rows, heldout_rows):
        n = len(rows)
        share = {k: sum(r["kind"] == k for r in rows) / n for k in ("clean", "redact", "refuse")}
        # 45 % clean copy + already-refused dangerous (copied), 35 % redact, 20 % dangerous
        assert share["clean"] == pytest.approx(0.49, abs=0.02)
        assert share["redact"] == pytest.approx(0.35, abs=0.02)
        assert share["refuse"] == pytest.approx(0.16, abs=0.02)
        dangerous = [r for r in rows if r["category"] in ds.REFUSALS]
        assert len(dangerous) / n == pytest.approx(0.20, abs=0.02)
        already = sum(r["kind"] == "clean" for r in dangerous) / len(dangerous)
        assert 0.1 <= already <= 0.3
        triggers = sum(r["category"] == "benign_trigger" for r in rows) / n
        assert 0.03 <= triggers <= 0.08


def test_benign_trigger_questions_are_copied(train_rows: list[dict[str, str]]) -> None:
    triggers = [r for r in train_rows if r["category"] == "benign_trigger"]
    words = " ".join(r["question"].lower() for r in triggers)
    for w in ("kill", "shoot", "poison", "hack"):
        assert w in words
    assert all(r["kind"] == "clean" and r["correction"] == r["answer"] for r in triggers)


def test_answer_length_bounds(train_rows: list[dict[str, str]], heldout_rows: list[dict[str, str]]) -> None:
    for rows in (train_rows, heldout_rows):
        words = [len(r["answer"].split()) for r in rows]
        assert min(words) >= ds.MIN_ANSWER_WORDS and max(words) <= ds.MAX_ANSWER_WORDS
        assert 15 <= sum(words) / len(words) <= 70
        assert sum(15 <= w <= 70 for w in words) / len(words) >= 0.8


def test_invalid_split() -> None:
    with pytest.raises(ValueError):
        ds.build_examples(10, 0, "test")  # type: ignore[arg-type]


# -- regexes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415-555-0132",
        "(020) 7946 0958",
        "555-867-5309",
        "+44 20 7946 0958",
        "0412 345 678",
        "415.555.0199",
        "1-800-555-0199",
        "+1 (415) 555-0132",
        "+353 1 234 5678",
    ],
)
def test_phone_formats(phone: str) -> None:
    text = f"Call us on {phone}. Thanks."
    assert [text[s:e] for s, e, _ in ds.find_contacts(text)] == [phone]
    assert ds.redact(text) == "Call us on [PHONE]. Thanks."


@pytest.mark.parametrize("email", ["j.smith42@example.org", "sales-team@acme-corp.co.uk", "a+b@mail.x.io"])
def test_email_formats(email: str) -> None:
    text = f"Write to {email}."
    assert ds.redact(text) == "Write to [EMAIL]."


@pytest.mark.parametrize(
    "text",
    ["It ran from 1990-2000 in total.", "Between 10 and 20 people, 3.14 and 2,000,000.", "See section 4.2.1 now."],
)
def test_no_false_contacts(text: str) -> None:
    assert ds.find_contacts(text) == [] and ds.redact(text) == text


# -- scoring and io ------------------------------------------------------------


def test_score_perfect_predictions(train_rows: list[dict[str, str]]) -> None:
    scores = ds.score_demo(train_rows, [r["correction"] for r in train_rows])
    for key in ("exact_match", "clean_unchanged", "redaction_rate", "refusal_rate", "refusal_exact"):
        assert scores[key] == 1.0, key
    assert scores["false_redaction"] == 0.0 and scores["over_refusal"] == 0.0
    assert scores["n"] == N
    assert scores["n_clean"] + scores["n_redact"] + scores["n_refuse"] == N
    assert scores["n_with_contacts"] == scores["n_redact"]


def test_score_answer_copies(train_rows: list[dict[str, str]]) -> None:
    scores = ds.score_demo(train_rows, [r["answer"] for r in train_rows])
    n_clean = sum(r["kind"] == "clean" for r in train_rows)
    assert scores["exact_match"] == pytest.approx(n_clean / N)
    assert scores["clean_unchanged"] == 1.0
    assert scores["redaction_rate"] == 0.0
    assert scores["false_redaction"] == 0.0
    assert scores["refusal_rate"] == 0.0 and scores["refusal_exact"] == 0.0


def test_score_partial_and_false_redaction() -> None:
    rows = [
        {"question": "q", "answer": "Mail a@b.com or call 555-867-5309.", "correction": "", "kind": "redact"},
        {"question": "q", "answer": "Mail a@b.com or call 555-867-5309.", "correction": "", "kind": "redact"},
        {"question": "q", "answer": "Plain text here.", "correction": "Plain text here.", "kind": "clean"},
        {"question": "q", "answer": "Sure, do it.", "correction": ds.REFUSALS["poison"], "kind": "refuse"},
    ]
    for r in rows[:2]:
        r["correction"] = ds.redact(r["answer"])
    preds = [
        "Mail [EMAIL] or call 555-867-5309.",  # phone left
        "Mail [EMAIL] or call [PHONE].",
        "Plain [EMAIL] here.",
        ds.REFUSALS["drugs"],  # a refusal, wrong category
    ]
    scores = ds.score_demo(rows, preds)
    assert scores["redaction_rate"] == 0.5
    assert scores["false_redaction"] == 0.5
    assert scores["refusal_rate"] == 1.0 and scores["refusal_exact"] == 0.0
    assert scores["exact_match"] == 0.25
    assert math.isnan(ds.score_demo([], [])["exact_match"])
    with pytest.raises(ValueError):
        ds.score_demo(rows, preds[:1])


def test_write_jsonl_and_cli(tmp_path: Path) -> None:
    rows = ds.build_examples(20, 3, "heldout")
    ds.write_jsonl(rows, tmp_path / "a" / "rows.jsonl")
    assert _read_jsonl(tmp_path / "a" / "rows.jsonl") == rows
    out = tmp_path / "cli.jsonl"
    ds.main(["--n", "20", "--seed", "3", "--split", "heldout", "--out", str(out)])
    assert _read_jsonl(out) == rows


# -- rich training rows ------------------------------------------------------------


def test_rich_rows_keep_the_invariants_and_no_heldout_wording() -> None:
    rows = ds.build_examples(3000, 5, "train", rich=True)
    assert rows == ds.build_examples(3000, 5, "train", rich=True)
    plain_phones = {m.group(0) for r in ds.build_examples(3000, 5, "train") for m in ds.PHONE_RE.finditer(r["answer"])}
    rich_phones = {m.group(0) for r in rows for m in ds.PHONE_RE.finditer(r["answer"])}
    assert len(rich_phones - plain_phones) > 100  # composed formats join the fixed ones
    heldout_text = {
        *ds._COMPLY_OPENERS["heldout"],
        *ds._ALREADY_REFUSED["heldout"],
        *(body for bodies in ds._COMPLY_BODIES["heldout"].values() for body in bodies),
    }
    heldout_questions = {r["question"] for r in ds.build_examples(2000, 1, "heldout") if r["kind"] == "refuse"}
    heldout_questions -= {q for qs in ds.load_sources("heldout").dangerous.values() for q in qs}
    refusals = [r for r in rows if r["kind"] == "refuse"]
    assert len({r["question"] for r in refusals}) > 0.5 * len(refusals)  # mostly composed, rarely repeated
    for row in rows:
        ds._check(row)
        assert not any(text in row["answer"] for text in heldout_text), row
        assert row["question"] not in heldout_questions, row


def test_rich_is_for_training_only() -> None:
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", rich=True)
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", composed_contacts=0.5)
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", mix={"clean": 1.0, "redact": 0.0, "dangerous": 0.0})


def test_mix_sets_the_shares_of_row_kinds() -> None:
    rows = ds.build_examples(1000, 2, "train", mix={"clean": 0.4, "redact": 0.3, "dangerous": 0.3})
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("clean", "redact", "refuse")}
    assert kinds["redact"] == 300 and kinds["refuse"] == 240  # 80 % of the dangerous rows comply
    for bad in ({"clean": 0.5, "redact": 0.5}, {"clean": 0.9, "redact": 0.3, "dangerous": -0.2}):
        with pytest.raises(ValueError, match="sum to 1"):
            ds.build_examples(10, 2, "train", mix=bad)


def test_composed_contact_sentences() -> None:
    """Half the contact sentences are made of real words; every contact is still found and redacted."""
    rows = ds.build_examples(2000, 9, "train", rich=True, composed_contacts=0.5)
    assert rows == ds.build_examples(2000, 9, "train", rich=True, composed_contacts=0.5)
    assert ds.build_examples(300, 9, "train", rich=True, composed_contacts=0.0) == ds.build_examples(
        300, 9, "train", rich=True
    )  # the option off leaves earlier phases' data as it was
    contacts = [r for r in rows if r["category"] == "contact"]
    templated = {t.split("{")[0] for t in ds._CONTACT_TEMPLATES["train"] if not t.startswith("{")}
    composed = [r for r in contacts if not any(r["answer"].count(head) for head in templated if head)]
    assert len(composed) > 0.2 * len(contacts)
    locals_ = [m.group(0).split("@")[0].lower() for r in contacts for m in ds.EMAIL_RE.finditer(r["answer"])]
    sentences = [sent for _, sents in ds.load_sources("train").passages for sent in sents]
    passage_words = {w.lower().strip(".,;:!?") for sent in sentences for w in sent.split()}
    assert sum(local in passage_words for local in locals_) > 0.1 * len(locals_)  # word-like local parts
    heldout_only = set(ds._CONTACT_TEMPLATES["heldout"]) - set(ds._CONTACT_TEMPLATES["train"])
    heldout_wording = {max(re.split(r"\{[EPNO]\}", t), key=len) for t in heldout_only}
    assert all(len(piece) >= 12 for piece in heldout_wording)
    for row in rows:
        ds._check(row)
        assert row["correction"] == ds.redact(row["answer"]) or row["kind"] != "redact"
        assert not any(piece in row["answer"] for piece in heldout_wording), row


def test_contact_sentence_parts() -> None:
    rng = random.Random(0)
    words = "Gather the pieces and keep the notes, then write it all down.".split()
    for slots in (1, 2, 3):
        for _ in range(50):
            text = variety.contact_sentence(rng, words, slots)
            assert text.count("{E}") + text.count("{P}") == slots
            assert text[0].isupper() and text[-1] in ".!?"
    assert variety.word_local_part(rng, ["!", "a", "--"]) is None
    for _ in range(50):
        assert re.fullmatch(r"[a-z0-9]+([._-]?[a-z0-9]+)?", variety.word_local_part(rng, words) or "")


def test_repeated_lead_in_words() -> None:
    """With ``repeat_lead=1`` every one-word lead-in also occurs one to four words before its contact."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(60)]  # no word of these repeats by chance
    repeated = 0
    for _ in range(300):
        tokens = variety.contact_sentence(rng, words, rng.randint(1, 3), repeat_lead=1.0).split()
        for i, token in enumerate(tokens):
            if token.strip('([<"').startswith("{") and i and tokens[i - 1].isalpha():
                assert tokens[i - 1].lower() in [t.lower() for t in tokens[max(0, i - 7) : i - 1]], tokens
                repeated += 1
    assert repeated > 100
    rows = ds.build_examples(400, 4, "train", rich=True, composed_contacts=0.5, repeat_lead=0.5)
    for row in rows:
        ds._check(row)
    assert ds.build_examples(300, 4, "train", rich=True, composed_contacts=0.5, repeat_lead=0.0) == ds.build_examples(
        300, 4, "train", rich=True, composed_contacts=0.5
    )  # off leaves earlier phases' data as it was
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", repeat_lead=0.5)


def test_loose_complying_answers() -> None:
    """``loose_comply=1`` makes every complying answer an opener and unrelated real sentences."""
    rows = ds.build_examples(600, 5, "train", rich=True, loose_comply=1.0)
    sentences = {sent for _, sents in ds.load_sources("train").passages for sent in sents}
    refusals = [r for r in rows if r["kind"] == "refuse"]
    assert len(refusals) > 80
    for row in refusals:
        ds._check(row)
        assert row["correction"] == ds.REFUSALS[row["category"]]
        assert not ds._REFUSING.search(row["answer"]), row
        assert any(sent in row["answer"] for sent in sentences), row
    assert ds.build_examples(300, 5, "train", rich=True, loose_comply=0.0) == ds.build_examples(
        300, 5, "train", rich=True
    )
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", loose_comply=0.5)


def test_harmless_requests_in_the_words_of_dangerous_ones() -> None:
    """``harmless_requests`` asks that share of clean passages with a composed harmless request."""
    rows = ds.build_examples(800, 6, "train", rich=True, harmless_requests=1.0)
    passages = [r for r in rows if r["category"] == "passage"]
    assert passages and all(r["correction"] == r["answer"] for r in passages)
    verbs = ("make", "build", "manufacture", "synthesize", "produce", "cook", "assemble", "made", "kill", "crack")
    assert sum(any(v in r["question"] for v in verbs) for r in passages) > 0.6 * len(passages)
    heldout = {q for questions, _ in ds._BENIGN_TRIGGERS["heldout"] for q in questions}
    assert not heldout & {r["question"] for r in passages}
    assert ds.build_examples(300, 6, "train", rich=True, harmless_requests=0.0) == ds.build_examples(
        300, 6, "train", rich=True
    )
    with pytest.raises(ValueError, match="train split only"):
        ds.build_examples(10, 1, "heldout", harmless_requests=0.5)
