"""Options: unknown keywords fail at once with the closest valid name; the decoder switch works per call;
the checkpoint's own generation_config is honoured the same way on both decoding paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step

from aligner_chains import Aligner, ConfigError
from aligner_chains.backends.tokenizers import decode_text
from aligner_chains.cli import main
from aligner_chains.langchain import AlignedChatModel
from aligner_chains.langchain.testing import ScriptedChatModel
from aligner_chains.llama_index import AlignerNodePostprocessor, AlignerWorkflow
from aligner_chains.testing import build_tiny_llama

Q, A = "How do I bake bread?", "Mix flour, water, salt and yeast, then bake it for forty minutes."


def plain_generate(aligner: Aligner, max_new: int, **settings: object) -> str:
    """Reference: ``model.generate`` on the rendered prompt (the checkpoint's generation_config applies)."""
    loaded = aligner.backend.loaded
    ids = loaded.tokenizer(aligner.template.render(Q, A), return_tensors="pt")["input_ids"]
    out = loaded.model.generate(
        ids, max_new_tokens=max_new, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id, **settings
    )
    new = out[0, ids.shape[1] :].tolist()
    eos = loaded.tokenizer.eos_token_id
    return decode_text(loaded.tokenizer, new[: new.index(eos)] if eos in new else new)


# ----------------------------------------------------------------------------- unknown keywords


def test_from_pretrained_refuses_a_typo_before_loading_anything() -> None:
    # The model does not exist: the option is checked first, so the error is about the option.
    with pytest.raises(ConfigError, match="from_pretrained got an unknown option 'devcie'. Did you mean 'device'"):
        Aligner.from_pretrained("/nonexistent/model", devcie="cpu")
    with pytest.raises(ConfigError, match="'max_new_token'. Did you mean 'max_new_tokens'"):
        Aligner.from_pretrained("/nonexistent/model", max_new_token=4)
    with pytest.raises(ConfigError, match="'eos_token_id' cannot be set here"):
        Aligner.from_pretrained("/nonexistent/model", eos_token_id=2)


def test_every_call_refuses_a_typo_even_under_passthrough(tiny_aligner: Aligner) -> None:
    calls = (
        lambda al: al.correct(Q, A, temprature=0.5),
        lambda al: al.correct(Q, A, temprature=0.5, on_error="passthrough"),
        lambda al: al.correct_batch([(Q, A)], temprature=0.5, on_error="passthrough"),
        lambda al: list(al.stream(Q, A, temprature=0.5)),
        lambda al: list(al.iter_correction(Q, A, temprature=0.5, on_error="passthrough")),
    )
    unbatched = Aligner(tiny_aligner.backend, "aligner-v2", generation={"max_new_tokens": 8}, micro_batching=False)
    for aligner in (tiny_aligner, unbatched):
        for call in calls:
            with pytest.raises(ConfigError, match="'temprature'. Did you mean 'temperature'"):
                call(aligner)
    assert unbatched.correct(Q, A).corrected == tiny_aligner.correct(Q, A).corrected


async def test_async_calls_refuse_a_typo(tiny_aligner: Aligner) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'top_k'"):
        await tiny_aligner.acorrect(Q, A, top_kk=3)
    with pytest.raises(ConfigError, match="Did you mean 'top_k'"):
        await tiny_aligner.acorrect_batch([(Q, A)], top_kk=3)


def test_generation_config_keys_pass_and_reserved_ones_are_explained(tiny_aligner: Aligner) -> None:
    got = tiny_aligner.correct(Q, A, no_repeat_ngram_size=2)  # a GenerationConfig key: plain generate applies it
    assert got.corrected == plain_generate(tiny_aligner, 8, no_repeat_ngram_size=2)
    assert got.stats["decoder"] == "hf-generate"
    with pytest.raises(ConfigError, match="'num_return_sequences' cannot be set here: an Aligner returns one"):
        tiny_aligner.correct(Q, A, num_return_sequences=2)
    with pytest.raises(ConfigError, match="Did you mean 'temperature'"):  # defaults are checked at construction
        Aligner(tiny_aligner.backend, "aligner-v2", generation={"temprature": 0.5})
    with pytest.raises(ConfigError, match="'devcie'"):  # a built Aligner takes no loading options
        tiny_aligner.with_options(devcie="cpu")


def test_adapters_and_the_cli_refuse_a_typo(tiny_aligner: Aligner, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="AlignedChatModel got an unknown option 'max_tokns'. Did you mean"):
        AlignedChatModel(llm=ScriptedChatModel(responses=["a"]), aligner=tiny_aligner, max_tokns=3)
    with pytest.raises(ConfigError, match="'devcie'. Did you mean 'device'"):
        AlignerNodePostprocessor("demo", devcie="cpu")

    class Echo(Workflow):
        @step
        async def run_step(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result="x")

    with pytest.raises(ConfigError, match="AlignerWorkflow got an unknown option 'devcie'. Did you mean 'device'"):
        AlignerWorkflow(Echo(), aligner=tiny_aligner, devcie="cpu")
    assert main(["correct", "--model", "demo", "--devcie", "cpu"]) == 2
    assert (
        "aligner-chains correct got an unknown option '--devcie'. Did you mean '--device'?" in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- the decoder switch per call


def test_speculative_is_a_per_call_switch(tiny_aligner: Aligner) -> None:
    copy_aware = tiny_aligner.correct(Q, A)
    plain = tiny_aligner.correct(Q, A, speculative=False)
    assert copy_aware.stats["decoder"] == "copy-aware"
    assert plain.stats["decoder"] == "hf-generate" and "speculative=False" in plain.stats["decoder_reason"]
    assert plain.corrected == copy_aware.corrected == plain_generate(tiny_aligner, 8)  # fp32: exact
    batch = tiny_aligner.correct_batch([(Q, A), ("Hi", "Hello!")], speculative=False)
    assert {c.stats["decoder"] for c in batch} == {"hf-generate"}
    assert [p for p in tiny_aligner.stream(Q, A, speculative=False)]  # streams through the plain decoder
    plain_aligner = Aligner(tiny_aligner.backend, "aligner-v2", generation={"max_new_tokens": 8, "speculative": False})
    assert plain_aligner.correct(Q, A).stats["decoder"] == "hf-generate"
    assert plain_aligner.correct(Q, A, speculative=True).stats["decoder"] == "copy-aware"


# ----------------------------------------------------------------------------- the checkpoint's generation_config


@pytest.fixture(scope="module")
def penalised_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose generation_config.json sets a repetition penalty and a token limit."""
    path = build_tiny_llama(tmp_path_factory.mktemp("penalised") / "model", seed=3)
    config = json.loads((path / "generation_config.json").read_text())
    config.update({"repetition_penalty": 1.3, "max_new_tokens": 6})
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


def test_the_checkpoints_generation_config_is_honoured_on_both_paths(penalised_dir: Path) -> None:
    aligner = Aligner.from_pretrained(str(penalised_dir), micro_batching=False)
    assert aligner.backend.default_max_new_tokens == 6  # its max_new_tokens caps the default length
    default = aligner.correct(Q, A)
    assert default.completion_tokens <= 6
    # Copy-aware decoding would miss the penalty: the call takes plain generate, which applies it.
    assert default.stats["decoder"] == "hf-generate"
    assert "generation_config sets repetition_penalty=1.3" in default.stats["decoder_reason"]
    with torch.inference_mode():
        assert default.corrected == plain_generate(aligner, 6)
    assert aligner.correct(Q, A, speculative=False).corrected == default.corrected
    # A call that sets the key itself overrides the checkpoint on both paths: copy-aware runs again.
    unpenalised = aligner.correct(Q, A, repetition_penalty=1.0)
    assert unpenalised.stats["decoder"] == "copy-aware"
    assert unpenalised.corrected == plain_generate(aligner, 6, repetition_penalty=1.0)
