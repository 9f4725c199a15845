"""LlamaIndex adapter: correct retrieved chunks, final answers and workflow results with an Aligner.

- `AlignerNodePostprocessor`: a node postprocessor correcting every retrieved node (one batched call
  per query), keeping ids, scores, relationships and metadata, and the original text in metadata
  excluded from the embed and LLM views.
- `AlignerQueryEngine`: wraps any query engine and corrects its answer (sync, async, streaming).
- `AlignerCorrectionStep`, `AlignerCorrectEvent`, `AlignerWorkflow`: the same for workflows.
- `AlignerCorrectionStartEvent`, `AlignerCorrectionEndEvent`: instrumentation events carrying
  ``Correction.summary()``, sent from dispatcher spans.

All of them take the same ``aligner=`` (an `Aligner`, a model path / hub id / ``"demo"``, or None: the
default model, ``$ALIGNER_MODEL`` else the shipped demo, see `aligner_chains.core.default_model`),
loading options and ``on_error="raise" | "passthrough"``, resolved by the core's ``resolve_aligner``.
"""

from aligner_chains.core import LOADING_OPTIONS
from aligner_chains.llama_index.events import AlignerCorrectionEndEvent, AlignerCorrectionStartEvent
from aligner_chains.llama_index.postprocessor import AlignerNodePostprocessor
from aligner_chains.llama_index.query_engine import AlignerQueryEngine
from aligner_chains.llama_index.responses import METADATA_KEY
from aligner_chains.llama_index.workflow import AlignerCorrectEvent, AlignerCorrectionStep, AlignerWorkflow

__all__ = [
    "LOADING_OPTIONS",
    "METADATA_KEY",
    "AlignerCorrectEvent",
    "AlignerCorrectionEndEvent",
    "AlignerCorrectionStartEvent",
    "AlignerCorrectionStep",
    "AlignerNodePostprocessor",
    "AlignerQueryEngine",
    "AlignerWorkflow",
]
