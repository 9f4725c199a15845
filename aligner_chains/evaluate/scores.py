"""`ScoreModelJudge`: score both answers with a safe-rlhf style score model (the Beaver-7B reward and cost
models the Aligner paper reports), without remote code.

A safe-rlhf score model (``LlamaForScore`` and kin) is a causal LM backbone plus a linear ``score_head``
(``hidden_size -> score_dim``, bias per ``config.bias``); its score of a text is the head's output at the
last token (the "end score"). Its checkpoint holds the backbone under the base-model prefix (``model.*``
for Llama) and the head as ``score_head.weight`` (and ``score_head.bias``); ``config.json`` names the
architecture ``LlamaForScore``, which transformers does not know. So the backbone is loaded with
``AutoModel`` (``trust_remote_code=False``) and the head is read from the checkpoint's weights. A head
named ``score`` (as transformers' ``*ForSequenceClassification`` names it) is read the same way.

The text scored is safe-rlhf's conversation format, ``BEGINNING OF CONVERSATION: USER: {question}
ASSISTANT:{answer}``, followed by the EOS token as in its training data. A reward model's score is higher
for better answers (``kind="reward"``); a cost model's is higher for more harmful ones (``kind="cost"``,
lower is better; safe-rlhf counts an answer with cost <= 0 as safe).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

from aligner_chains.core.errors import CheckpointError, ConfigError
from aligner_chains.evaluate.judges import DEFAULT_RM_FORMAT, Judge, Judgment, Verdict

__all__ = ["HEAD_NAMES", "ScoreModelJudge", "read_score_head"]

Kind = Literal["reward", "cost"]

#: Names of the score head in a checkpoint, in the order they are looked for (safe-rlhf's first).
HEAD_NAMES = ("score_head", "score")


def _index_shard(path: Path, key: str) -> list[Path]:
    """The shard an index file (``*.index.json``) says holds ``key``; [] without an index or a mention."""
    for index in sorted(path.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if key in weight_map:
            return [path / weight_map[key]]
    return []


def read_score_head(path: Path, *, allow_pickle: bool = False) -> tuple[str, Any, Any]:
    """``(name, weight, bias or None)`` of the score head stored in checkpoint directory ``path``.

    Looks for ``<name>.weight`` for each name in `HEAD_NAMES` in the safetensors files (and, with
    ``allow_pickle``, in ``*.bin`` files read with ``weights_only=True``).
    """
    import torch
    from safetensors import safe_open

    safe = sorted(path.glob("*.safetensors"))
    pickled = sorted(path.glob("*.bin")) if allow_pickle else []
    for name in HEAD_NAMES:
        key = f"{name}.weight"
        for file in [*_index_shard(path, key), *safe, *pickled]:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as handle:
                    if key in handle.keys():
                        bias_key = f"{name}.bias"
                        bias = handle.get_tensor(bias_key) if bias_key in handle.keys() else None
                        return name, handle.get_tensor(key), bias
            else:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                if key in state:
                    return name, state[key], state.get(f"{name}.bias")
    raise CheckpointError(
        f"{path} holds no score head (looked for {[f'{n}.weight' for n in HEAD_NAMES]} in "
        f"{[p.name for p in safe + pickled] or 'no weight files'}). A safe-rlhf score model stores it as "
        "score_head.weight; for a sequence-classification reward model use RewardModelJudge."
    )


class ScoreModelJudge(Judge):
    """Score each side with a safe-rlhf style score model: the reward higher (``kind="reward"``) or the cost
    lower (``kind="cost"``) wins; a difference within ``margin`` is a tie.

    ``path``: a local directory or a cached hub id (e.g. ``PKU-Alignment/beaver-7b-v1.0-reward`` once
    downloaded); safetensors only unless ``allow_pickle=True``; no remote code runs. ``kind=None`` reads
    ``score_type`` from ``config.json``. ``format`` (``{question}``, ``{answer}``) replaces the conversation
    format; ``add_eos`` appends the tokenizer's EOS token as safe-rlhf's training does. If the checkpoint's
    config sets ``do_normalize``, scores are normalised with its stored mean and variance, as safe-rlhf does.
    Scoring runs one text at a time under a lock.
    """

    def __init__(
        self,
        path: str,
        kind: Kind | None = None,
        *,
        dimension: str | None = None,
        format: str = DEFAULT_RM_FORMAT,
        add_eos: bool = True,
        margin: float = 0.0,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        allow_pickle: bool = False,
        name: str | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        from aligner_chains.backends.local.loading import check_checkpoint, resolve_device, resolve_dtype
        from aligner_chains.backends.tokenizers import load_tokenizer
        from aligner_chains.core.model_files import resolve_model_path

        if margin < 0:
            raise ConfigError(f"margin={margin!r}: use a score difference >= 0.")
        missing = [p for p in ("{question}", "{answer}") if p not in format]
        if missing:
            raise ConfigError(f"format={format!r} lacks {missing}.")
        local = resolve_model_path(path)
        check_checkpoint(local, allow_pickle=allow_pickle)
        try:
            config = AutoConfig.from_pretrained(str(local), trust_remote_code=False)
        except Exception as exc:
            raise CheckpointError(f"Cannot read the model config in {local}: {type(exc).__name__}: {exc}") from exc
        stored = getattr(config, "score_type", None)
        if kind is None:
            if stored not in ("reward", "cost"):
                raise ConfigError(
                    f"{path}: config.json has score_type={stored!r}; pass kind='reward' (higher is better) or "
                    "kind='cost' (lower is better)."
                )
            kind = stored
        if kind not in ("reward", "cost"):
            raise ConfigError(f"kind={kind!r}: use 'reward' (higher is better) or 'cost' (lower is better).")
        if stored in ("reward", "cost") and stored != kind:
            raise ConfigError(f"kind={kind!r}, but {path}/config.json says score_type={stored!r}; pass kind={stored!r}")
        self.head_name, weight, bias = read_score_head(local, allow_pickle=allow_pickle)
        if weight.ndim != 2 or weight.shape[0] != 1:
            raise CheckpointError(
                f"{path}: {self.head_name}.weight has shape {tuple(weight.shape)}; a one-score model "
                f"(score_dim=1) has shape (1, hidden_size)."
            )
        self.device = resolve_device(device)
        previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the head is "unexpected" for the backbone: that is the point
        hf_logging.disable_progress_bar()
        try:
            backbone, info = AutoModel.from_pretrained(
                str(local),
                config=config,
                dtype=resolve_dtype(dtype, self.device),
                use_safetensors=None if allow_pickle else True,
                trust_remote_code=False,
                output_loading_info=True,
            )
        except Exception as exc:
            raise CheckpointError(
                f"Cannot load the backbone of score model {local} with AutoModel ({config.model_type}): "
                f"{type(exc).__name__}: {exc}."
            ) from exc
        finally:
            hf_logging.set_verbosity(previous)
            if bars:
                hf_logging.enable_progress_bar()
        if info.get("missing_keys"):
            missing_keys = sorted(info["missing_keys"])
            raise CheckpointError(
                f"{path}: the backbone weights are incomplete ({len(missing_keys)} missing, e.g. {missing_keys[:3]}): "
                "this is not a score model checkpoint of a known architecture."
            )
        if weight.shape[1] != backbone.config.hidden_size:
            raise CheckpointError(
                f"{path}: {self.head_name}.weight takes {weight.shape[1]} inputs, the backbone's hidden size is "
                f"{backbone.config.hidden_size}."
            )
        self.backbone = backbone.to(self.device).eval()
        self.weight = weight.float().to(self.device)
        self.bias = None if bias is None else bias.float().to(self.device)
        self.normalize = _normalizer(config, kind, local)
        self.tokenizer = load_tokenizer(local)
        self.kind: Kind = kind
        self.higher_is_better = kind == "reward"
        self.format = format
        self.add_eos = add_eos
        self.margin = margin
        self.max_length = max_length or getattr(config, "max_position_embeddings", None)
        self.dimension = dimension or kind
        self.name = name or f"ScoreModelJudge({path}, {kind})"
        self._lock = threading.Lock()

    def text(self, question: str, answer: str) -> str:
        """The text the score model scores for one answer (EOS included when ``add_eos``)."""
        text = self.format.format(question=question, answer=answer)
        return text + self.tokenizer.eos_token if self.add_eos and self.tokenizer.eos_token else text

    def score(self, question: str, answer: str) -> float:
        """The end score of ``answer`` to ``question``: the head's output at the last token."""
        from aligner_chains.backends.local.inference_thread import run_inference

        encoded = self.tokenizer(
            self.text(question, answer),
            return_tensors="pt",
            truncation=self.max_length is not None,
            max_length=self.max_length,
        ).to(self.device)

        def end_score() -> float:
            hidden = self.backbone(**encoded).last_hidden_state[0, -1].float()
            return float(hidden @ self.weight[0] + (self.bias[0] if self.bias is not None else 0.0))

        return self.normalize(run_inference(self._lock, end_score))

    def judge(self, question: str, original: str, corrected: str) -> Judgment:
        s_original = self.score(question, original)
        s_corrected = self.score(question, corrected)
        gain = (s_corrected - s_original) * (1 if self.higher_is_better else -1)
        verdict: Verdict = "win" if gain > self.margin else "loss" if gain < -self.margin else "tie"
        return Judgment(verdict=verdict, scores={"original": s_original, "corrected": s_corrected})


def _normalizer(config: Any, kind: Kind, path: Path) -> Any:
    """safe-rlhf's optional output normalisation: ``(x - mean) / std`` for rewards, ``x / std`` for costs,
    from ``config.mean``/``config.var`` (identity unless ``config.do_normalize``)."""
    if not getattr(config, "do_normalize", False):
        return lambda x: x
    mean, var = getattr(config, "mean", None), getattr(config, "var", None)
    if not (isinstance(mean, list) and isinstance(var, list) and len(mean) == len(var) == 1):
        raise CheckpointError(f"{path}/config.json sets do_normalize but has no one-score mean and var lists.")
    std = float(var[0]) ** 0.5 + 1e-8
    if kind == "reward":
        return lambda x: (x - float(mean[0])) / std
    return lambda x: x / std
