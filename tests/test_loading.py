from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aligner_chains import (
    Aligner,
    CheckpointError,
    ConfigError,
    MissingDependencyError,
    ModelNotFoundError,
    Template,
    TemplateError,
    clear_model_cache,
    load_model,
)
from aligner_chains.backends.local.loading import LoadOptions, cached_model_count, resolve_device, resolve_dtype


def test_cache_shares_one_model_per_key(tiny_model_dir: Path) -> None:
    a = load_model(str(tiny_model_dir))
    b = load_model(str(tiny_model_dir) + "/")
    assert a is b
    before = cached_model_count()
    c = load_model(str(tiny_model_dir), LoadOptions(dtype="bfloat16"))
    assert c is not a and c.dtype == torch.bfloat16
    assert cached_model_count() == before + 1
    one = Aligner.from_pretrained(str(tiny_model_dir))
    two = Aligner.from_pretrained(str(tiny_model_dir), template="aligner-v1")
    assert one.backend.loaded.model is two.backend.loaded.model


def test_clear_model_cache_of_one_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    kept, dropped = load_model(str(tiny_model_dir)), load_model(str(other))
    clear_model_cache(str(other))
    assert load_model(str(tiny_model_dir)) is kept  # other models keep their cached weights
    assert load_model(str(other)) is not dropped


def test_template_comes_from_aligner_config(tiny_model_dir: Path, tiny_pad_model_dir: Path) -> None:
    assert Aligner.from_pretrained(str(tiny_model_dir)).template.name == "aligner-v2"
    assert Aligner.from_pretrained(str(tiny_pad_model_dir)).template.name == "aligner-v1"


def test_custom_template_stored_as_dict(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, target)
    (target / "aligner_config.json").write_text(
        json.dumps({"template": {"name": "mine", "prompt": "{question}>{answer}>"}})
    )
    aligner = Aligner.from_pretrained(str(target))
    assert aligner.template == Template("mine", prompt="{question}>{answer}>")


def test_without_config_asks_for_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = tmp_path / "noconf"
    shutil.copytree(tiny_model_dir, target)
    (target / "aligner_config.json").unlink()
    with pytest.raises(TemplateError, match="template="):
        Aligner.from_pretrained(str(target))
    assert Aligner.from_pretrained(str(target), template="aligner-revision").template.name == "aligner-revision"


def test_missing_path_and_offline_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty cache and offline mode: the hub id below is looked up locally only, never fetched.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match="No model directory"):
        Aligner.from_pretrained("./does/not/exist")
    with pytest.raises(ModelNotFoundError, match="hf download someone/not-cached"):
        Aligner.from_pretrained("someone/not-cached")
    with pytest.raises(TypeError, match="int"):
        load_model(42)  # type: ignore[arg-type]


def test_corrupt_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, target)
    (target / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(str(target))


def test_missing_config_and_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    target = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, target)
    (target / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(str(target))
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(str(tiny_model_dir / "config.json"))


def test_pickle_weights_need_opt_in(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    target = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, target)
    (target / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_model(str(target))
    loaded = load_model(str(target), LoadOptions(allow_pickle=True))
    assert loaded.model.config.vocab_size == model.config.vocab_size


def test_device_and_dtype_resolution() -> None:
    auto = resolve_device("auto")
    assert auto.type in {"cpu", "cuda", "mps"}
    if auto.type == "cpu":
        assert resolve_dtype("auto", auto) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_quantization_needs_bitsandbytes(tiny_model_dir: Path) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"-e '\.\[quant\]'"):
            load_model(str(tiny_model_dir), LoadOptions(quantization="4bit"))
    else:
        pytest.skip("bitsandbytes is installed; the missing-dependency path cannot be shown")
    with pytest.raises(ConfigError, match="quantization"):
        load_model(str(tiny_model_dir), LoadOptions(quantization="3bit"))  # type: ignore[arg-type]


def test_peft_adapter_is_applied(tmp_path: Path, tiny_model_dir: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    plain = Aligner.from_pretrained(str(tiny_model_dir), max_new_tokens=6)
    adapted = Aligner.from_pretrained(str(tiny_model_dir), adapter=str(tmp_path / "adapter"), max_new_tokens=6)
    assert adapted.backend.loaded.model is not plain.backend.loaded.model
    assert type(adapted.backend.loaded.model).__name__.startswith("Peft")
    adapted.correct("q", "an answer")
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_model(str(tiny_model_dir), LoadOptions(adapter=str(tmp_path / "nope")))


def test_safe_defaults() -> None:
    options = LoadOptions()
    assert options.trust_remote_code is False and options.allow_pickle is False


def test_loading_is_quiet_and_puts_transformers_settings_back(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from aligner_chains.testing import build_tiny_llama

    path = str(build_tiny_llama(tmp_path / "model"))
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    monkeypatch.delenv("ALIGNER_VERBOSE", raising=False)
    hf_logging.enable_progress_bar()  # the default outside the CLI
    try:
        capfd.readouterr()
        loaded = load_model(path)
        loaded.tokenizer.model_max_length = 8  # the Aligner checks lengths itself; the tokenizer need not warn
        loaded.tokenizer("word " * 40)
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "Token indices sequence length" not in err, err
        assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == level
        assert not are_progress_bars_disabled()  # huggingface_hub's switch, which transformers' flips, too
        monkeypatch.setenv("ALIGNER_VERBOSE", "1")  # the escape hatch (`aligner-chains --verbose`)
        clear_model_cache(path)
        load_model(path)
        assert "Loading weights" in capfd.readouterr().err
    finally:
        clear_model_cache(path)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
