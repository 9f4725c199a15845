"""Logits only where the loss is: same losses and log-probs as the full [batch, length, vocab] logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from aligner_chains.backends.local.forward import forward_parameters
from aligner_chains.finetune.data import IGNORE_INDEX
from aligner_chains.finetune.logprobs import label_logits, sequence_logps


def _model(kind: str) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
        return LlamaForCausalLM(config).eval()
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()


class _NoKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (older transformers, custom models)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _batch() -> dict[str, torch.Tensor]:
    """Right-padded rows whose labels (the completion) start at different columns; one row has none."""
    ids = torch.randint(3, 97, (4, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, (start, end) in enumerate([(8, 20), (12, 17), (15, 16), (0, 0)]):
        labels[row, start:end] = ids[row, start:end]
        if end and end < 20:
            mask[row, end:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "no-keep"])
def test_label_logits_match_full_logits(kind: str) -> None:
    model = _model("llama" if kind == "no-keep" else kind)
    if kind == "no-keep":
        model = _NoKeep(model)
    assert ("logits_to_keep" in forward_parameters(model)) == (kind != "no-keep")
    batch = _batch()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    want = F.cross_entropy(
        full.reshape(-1, 97), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    logits, labels = label_logits(model, batch)
    assert logits.shape[1] == labels.shape[1] == 12  # columns 7-18 hold a label in some row; not all 19
    got = F.cross_entropy(logits.reshape(-1, 97), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(got, want)
    got.backward()  # gradients flow through the kept columns


def test_sequence_logps_per_row() -> None:
    model = _model("llama")
    batch = _batch()
    logps, counts = sequence_logps(model, batch)
    assert counts.tolist() == [12, 5, 1, 0]
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    for row in range(4):
        keep = labels[row] != IGNORE_INDEX
        want = full[row][keep].gather(1, labels[row][keep].unsqueeze(1)).sum()
        torch.testing.assert_close(logps[row], want)
