"""The shipped demo Aligner: its weights live in ``model/`` as package data, loadable offline as ``"demo"``.

How the weights are made (data builders, sources, training recipe, evaluation) lives outside the
package, in ``cookbook/demo_aligner/`` of the repository.
"""

from __future__ import annotations

from pathlib import Path

#: The name that loads the shipped demo Aligner, e.g. ``Aligner.from_pretrained("demo")``.
DEMO_MODEL_NAME = "demo"
#: Where the demo Aligner's weights, tokenizer and ``aligner_config.json`` are installed.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"

__all__ = ["DEMO_MODEL_DIR", "DEMO_MODEL_NAME"]
