"""LangChain adapter: `AlignerRunnable` (``llm | AlignerRunnable()``), `AlignedChatModel` and `AlignerMiddleware`.

Importing this package registers the run-input recorder used for question recovery
(see `aligner_chains.langchain.question`). `AlignerMiddleware` needs the ``langchain`` extra and is
imported on first use.
"""

from __future__ import annotations

from aligner_chains._lazy import lazy_dir, lazy_getattr
from aligner_chains.langchain.aligned_chain import AlignedChain
from aligner_chains.langchain.chat_model import AlignedChatModel
from aligner_chains.langchain.question import QUESTION_METADATA_KEY, extract_question
from aligner_chains.langchain.runnable import DIFF_EVENT, AlignerRunnable, MissingQuestionError

__all__ = [
    "DIFF_EVENT",
    "QUESTION_METADATA_KEY",
    "AlignedChain",
    "AlignedChatModel",
    "AlignerMiddleware",
    "AlignerRunnable",
    "MissingQuestionError",
    "extract_question",
]


_LAZY_EXPORTS = {"AlignerMiddleware": "aligner_chains.langchain.middleware"}
__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
__dir__ = lazy_dir(__name__, _LAZY_EXPORTS)
