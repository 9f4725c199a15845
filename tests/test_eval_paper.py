"""The Aligner paper's protocol: judge presets (3H prompts, both orders, harmlessness marks read the other way
round), `evaluate_paper` over the fixture sets (answer, correct, judge on the paper's dimensions, score, one
report per dataset and dimension, resumable) and ``aligner-chains eval --preset aligner-paper``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.evaluate import LLMJudge, ScoreModelJudge, evaluate_paper, load_eval_questions
from aligner_chains.evaluate.presets import JUDGE_PRESETS, parse_response_mark
from aligner_chains.evaluate.testing import FunctionChatModel, build_tiny_score_model

DATA = Path(__file__).parent / "fixtures" / "eval_datasets"
PATHS = {
    "beavertails": DATA / "beavertails_evaluation_test.jsonl",
    "beavertails-30k": DATA / "beavertails_30k_test.jsonl",
    "truthfulqa": DATA / "truthfulqa_generation_validation.jsonl",
    "dialogsum": DATA / "dialogsum_test.csv",
}


# ----------------------------------------------------------------------------------------- presets


def test_parse_response_mark_reads_the_last_mark() -> None:
    assert parse_response_mark("A is vague. Better: [[responseB]]") == "B"
    assert parse_response_mark("[[responseB]] at first, but on reflection - Better: [[ Response A ]]") == "A"
    assert parse_response_mark("More harmful: [[Equal]]") == "tie"
    assert parse_response_mark("Both fine. [[B]]") is None  # the generic marks are not this preset's


def _paper_style_judge(messages: list[BaseMessage]) -> str:
    """A judge model answering in the preset's format: the response with a raw e-mail address is the worse one."""
    text = messages[-1].content
    a = text.split("<responseA>: ")[1].split("\n\n<responseB>: ")[0]
    b = text.split("<responseB>: ")[1]
    if "harmful" in messages[0].content.lower() or "MORE harmful" in text:
        worse = "responseA" if "@" in a else "responseB" if "@" in b else "Equal"
        return f"One of them leaks an address. More harmful: [[{worse}]]"
    better = "responseA" if "@" not in a and "@" in b else "responseB" if "@" in a and "@" not in b else "Equal"
    return f"Reasoning. Better: [[{better}]]"


async def test_presets_ask_both_orders_and_read_harm_marks_the_other_way_round() -> None:
    model = FunctionChatModel(fn=_paper_style_judge)
    harmless = LLMJudge.preset(model, "harmlessness")
    assert harmless.name == "LLMJudge(function-chat, aligner-paper)"
    messages = harmless.messages("Q?", "first", "second")
    assert "<Prompt>: Q?\n\n<responseA>: first\n\n<responseB>: second" in messages[1].content
    assert "More harmful: [[responseA]]" in messages[1].content and "harm" in messages[0].content
    judgment = await harmless.ajudge("Q?", "write to a@b.com", "write to [EMAIL]")
    assert (judgment.verdict, judgment.consistent, len(judgment.replies)) == ("win", True, 2)
    helpful = LLMJudge.preset(model, "helpfulness")
    assert "Leave safety aside" in helpful.messages("Q", "a", "b")[0].content
    assert (await helpful.ajudge("Q?", "a@b.com", "[EMAIL]")).verdict == "win"
    assert (await helpful.ajudge("Q?", "same", "same")).verdict == "tie"
    assert set(JUDGE_PRESETS["aligner-paper"]) == {"helpfulness", "harmlessness", "honesty"}
    with pytest.raises(ConfigError, match="Unknown judge preset 'gpt4'"):
        LLMJudge.preset(model, "helpfulness", preset="gpt4")
    with pytest.raises(ConfigError, match="no dimension 'brevity'"):
        LLMJudge.preset(model, "brevity")


# ---------------------------------------------------------------------------------------- protocol


@pytest.fixture(scope="module")
def score_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scores")
    return {
        kind: build_tiny_score_model(root / kind, kind=kind, seed=seed, bias=kind == "cost")
        for kind, seed in (("reward", 0), ("cost", 1))
    }


class Upstream:
    """An upstream model that answers with an e-mail address; ``fail`` questions raise; counts its calls."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, question: str) -> str:
        self.calls += 1
        if any(question.startswith(f) for f in self.fail):
            raise RuntimeError("upstream is down")
        return f"Sure. For '{question[:24]}' write to help@example.com."


DIMENSIONS_SEEN: list[str] = []


def rule(question: str, original: str, corrected: str, dimension: str) -> str:
    DIMENSIONS_SEEN.append(dimension)
    return "win" if corrected.strip() != original.strip() else "tie"


def test_the_protocol_judges_each_set_on_its_paper_dimensions_and_resumes(
    tiny_aligner, score_models: dict[str, Path], tmp_path: Path
) -> None:
    scorers = {kind: ScoreModelJudge(str(path), device="cpu") for kind, path in score_models.items()}
    upstream = Upstream()
    DIMENSIONS_SEEN.clear()
    options = dict(
        aligner=tiny_aligner,
        judge=rule,
        reward_model=scorers["reward"],
        cost_model=scorers["cost"],
        upstream=upstream,
        upstream_name="tiny-upstream",
        paths=PATHS,
        log_dir=tmp_path / "run",
        progress=False,
    )
    report = evaluate_paper(["beavertails", "truthfulqa", "dialogsum"], **options)
    assert report.dimensions == ["helpfulness", "harmlessness", "reward", "cost", "honesty"]
    assert report.group_by == "dataset" and report.groups == ["beavertails", "dialogsum", "truthfulqa"]
    assert report.n_items == 6 + 4 + 2 and upstream.calls == 12 and report.errors == 0
    assert report.win_rate("harmlessness").n == 6 and report.win_rate("harmlessness", "beavertails").n == 6
    assert report.win_rate("helpfulness").n == 8  # BeaverTails and DialogSum
    assert report.win_rate("honesty").n == report.win_rate("honesty", "truthfulqa").n == 4
    with pytest.raises(ConfigError):
        report.win_rate("honesty", "beavertails")  # TruthfulQA alone is judged on honesty
    assert sorted(set(DIMENSIONS_SEEN)) == ["harmlessness", "helpfulness", "honesty"]
    deltas = {(d.dimension, d.group): d for d in report.score_deltas}
    assert deltas[("reward", None)].n == deltas[("cost", None)].n == 12
    assert deltas[("cost", "truthfulqa")].n == 4 and not deltas[("cost", None)].higher_is_better
    assert report.edits.n == 12 and set(report.edits_by_group) == {"beavertails", "dialogsum", "truthfulqa"}
    assert sorted({r.index for r in report.results}) == list(range(12))
    markdown = report.to_markdown()
    assert "| honesty | truthfulqa | 4 |" in markdown and "| reward | dialogsum | 2 | higher |" in markdown
    log = (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()
    answers = (tmp_path / "run" / "answers.jsonl").read_text().splitlines()
    # re-run: answers, corrections and judgments all come from the logs
    again = evaluate_paper(["beavertails", "truthfulqa", "dialogsum"], **options)
    assert upstream.calls == 12 and len((tmp_path / "run" / "judgments.jsonl").read_text().splitlines()) == len(log)
    assert len(answers) == 12 and again.win_rates == report.win_rates


def test_answers_come_from_a_file_an_upstream_model_or_the_set_itself(tiny_aligner, tmp_path: Path) -> None:
    questions = load_eval_questions("beavertails", path=PATHS["beavertails"])
    rows = [
        {"question": q["question"], "answer": f"{model} says: mail x@y.org", "upstream_model": model}
        for q in questions
        for model in ("model-a", "model-b")
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(aligner=tiny_aligner, judge=rule, paths=PATHS, progress=False)
    report = evaluate_paper(["beavertails"], answers=answers, group_by="upstream_model", **common)
    assert report.n_items == 12 and report.groups == ["model-a", "model-b"]
    with pytest.raises(DataError, match="no answer to 5 of the 6 beavertails questions"):
        evaluate_paper(["beavertails"], answers=rows[:2], **common)
    own = evaluate_paper(["beavertails-30k"], group_by="upstream_model", **common)  # Alpaca-7B's answers
    assert own.n_items == 4 and own.groups == ["alpaca-7b"]
    with pytest.raises(ConfigError, match="'truthfulqa' holds questions only: pass upstream="):
        evaluate_paper(["truthfulqa"], **common)
    with pytest.raises(ConfigError, match="Nothing judges"):
        evaluate_paper(["beavertails-30k"], aligner=tiny_aligner, paths=PATHS)
    with pytest.raises(ConfigError, match="pass aligner="):
        evaluate_paper(["beavertails-30k"], aligner=None, judge=rule, paths=PATHS)


def test_failed_upstream_answers_are_errors_retried_by_the_next_run(tiny_aligner, tmp_path: Path) -> None:
    common = dict(aligner=tiny_aligner, judge=rule, paths=PATHS, log_dir=tmp_path, retries=0, backoff=0, progress=False)
    flaky = Upstream(fail=("What happens",))
    report = evaluate_paper(["truthfulqa"], upstream=flaky, upstream_name="u", **common)
    failed = [r for r in report.results if r.status == "error"]
    assert report.errors == 2 and len(failed) == 2 and "upstream answer failed" in failed[0].error
    assert report.n_items == 4 and report.win_rate("honesty").judged == 2
    fixed = Upstream()
    report = evaluate_paper(["truthfulqa"], upstream=fixed, upstream_name="u", **common)
    assert fixed.calls == 2 and report.errors == 0 and report.win_rate("honesty").judged == 4


# --------------------------------------------------------------------------------------------- CLI

CLI_MODULE = """
def upstream(question):
    return "Sure: write to help@example.com about " + question[:20]


def rule(question, original, corrected, dimension):
    return "win" if corrected != original else "tie"
"""


def test_cli_runs_the_paper_preset(tiny_model_dir: Path, score_models: dict[str, Path], tmp_path: Path) -> None:
    from aligner_chains.cli import main

    module = tmp_path / "paper_parts.py"
    module.write_text(CLI_MODULE)
    out = tmp_path / "out"
    argv = ["eval", "--preset", "aligner-paper", "--dataset", "beavertails", "--dataset", "truthfulqa"]
    argv += [
        "--dataset-path",
        f"beavertails={PATHS['beavertails']}",
        "--dataset-path",
        f"truthfulqa={PATHS['truthfulqa']}",
    ]
    argv += ["--upstream", f"{module}:upstream", "--upstream-name", "tiny-up", "--judge", f"{module}:rule", "--n", "3"]
    argv += ["--reward-model", str(score_models["reward"]), "--cost-model", str(score_models["cost"])]
    argv += ["--aligner", str(tiny_model_dir), "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)]
    argv += ["--quiet", "--alpaca-eval"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dimensions"] == ["helpfulness", "harmlessness", "reward", "cost", "honesty"]
    assert report["group_by"] == "dataset" and report["n_items"] == 6
    assert {(r["dimension"], r["group"]) for r in report["win_rates"]} >= {("honesty", "truthfulqa"), ("cost", None)}
    assert {d["dimension"] for d in report["score_deltas"]} == {"reward", "cost"}
    assert {p.name for p in out.iterdir()} >= {"report.md", "win_rate.png", "answers.jsonl", "judgments.jsonl"}
    written = json.loads((out / "alpaca_eval" / "model_outputs.json").read_text())
    assert len(written) == 6 and {r["dataset"] for r in written} == {"beavertails", "truthfulqa"}
    assert {r["generator"] for r in written} == {"model_tiny-up"}  # <aligner>_<upstream>, as AlpacaEval names them


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "beavertails", "--input", "x.jsonl", "--judge", "json:dumps"], "belong to --preset"),
        (["--preset", "aligner-paper", "--aligner", "demo"], "needs at least one --dataset"),
        (["--preset", "aligner-paper", "--dataset", "beavertails", "--input", "x.jsonl"], "exclude each other"),
        (["--preset", "aligner-paper", "--dataset", "beavertails"], "pass --aligner MODEL"),
        (["--judge", "json:dumps"], "needs --input FILE and --judge SPEC"),
        (["--preset", "aligner-paper", "--dataset", "beaver", "--aligner", "demo"], "Unknown evaluation set 'beaver'"),
        (
            [
                "--preset",
                "aligner-paper",
                "--dataset",
                "dialogsum",
                "--aligner",
                "x",
                "--dataset-path",
                "harmfulqa=h.json",
            ],
            "which no --dataset names",
        ),
    ],
)
def test_cli_preset_options_are_checked(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligner_chains.cli import main

    assert main(["eval", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
