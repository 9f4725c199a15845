"""Workflow support: the AlignerCorrectionStep mixin and the AlignerWorkflow wrapper."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

from aligner_chains import Aligner, ConfigError, InputTooLongError
from aligner_chains.llama_index import AlignerCorrectEvent, AlignerCorrectionStep, AlignerWorkflow
from aligner_chains.llama_index.offline import ExtractiveLLM

ANSWER = "Mail jane.doe@example.com or call +1 415-555-0132."
DOCS = ["Paris is the capital of France.", "Bake the bread for forty minutes."]


class Progress(Event):
    msg: str


class AnswerFlow(AlignerCorrectionStep, Workflow):
    """A user's workflow ending with AlignerCorrectEvent instead of StopEvent."""

    @step
    async def answer(self, ev: StartEvent) -> AlignerCorrectEvent:
        return AlignerCorrectEvent(question=ev.query, result=ev.get("answer", ANSWER))


class RAGFlow(Workflow):
    """A plain workflow whose StopEvent result is a query engine Response."""

    def __init__(self, engine, **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine = engine

    @step
    async def run_query(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(msg="retrieving"))
        return StopEvent(result=await self.engine.aquery(ev.question))


class TextFlow(Workflow):
    @step
    async def go(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.get("answer", ANSWER))


async def test_mixin_step_corrects_a_text_result(tiny_aligner: Aligner) -> None:
    result = await AnswerFlow(aligner=tiny_aligner, timeout=60).run(query="How do I reach you?")
    c = tiny_aligner.correct("How do I reach you?", ANSWER)
    assert result == (c.corrected if c.changed else ANSWER)


async def test_mixin_error_policies(tiny_aligner: Aligner) -> None:
    long = "lorem ipsum " * 400
    passed = await AnswerFlow(aligner=tiny_aligner, on_error="passthrough", timeout=60).run(query="q", answer=long)
    assert passed == long
    with pytest.raises(InputTooLongError):
        await AnswerFlow(aligner=tiny_aligner, timeout=60).run(query="q", answer=long)


async def test_wrapper_corrects_a_rag_response_and_forwards_events(tiny_aligner: Aligner) -> None:
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=ExtractiveLLM(), similarity_top_k=2)
    flow = AlignerWorkflow(RAGFlow(engine, timeout=60), aligner=tiny_aligner, timeout=60)
    question = "What is the capital of France?"

    handler = flow.run(question=question)
    streamed = [ev async for ev in handler.stream_events()]
    result = await handler

    assert any(isinstance(ev, Progress) and ev.msg == "retrieving" for ev in streamed)
    assert isinstance(result, Response) and len(result.source_nodes) == 2
    c = tiny_aligner.correct(question, DOCS[0])
    assert result.metadata["aligner"]["original"] == DOCS[0]
    assert result.response == (c.corrected if c.changed else DOCS[0])


async def test_wrapper_question_key_and_missing_question(tiny_aligner: Aligner, tiny_model_dir) -> None:
    flow = AlignerWorkflow(
        TextFlow(timeout=60),
        aligner=str(tiny_model_dir),
        max_new_tokens=8,
        device="cpu",
        question_key="ask",
        timeout=60,
    )
    result = await flow.run(ask="How do I reach you?")
    assert result == tiny_aligner.correct("How do I reach you?", ANSWER).corrected
    assert flow.get_aligner().backend.loaded is tiny_aligner.backend.loaded

    with pytest.raises(ConfigError, match="No question"):
        await AlignerWorkflow(TextFlow(), aligner=tiny_aligner).run(topic="x")
    with pytest.raises(TypeError, match="Workflow"):
        AlignerWorkflow(object(), aligner=tiny_aligner)  # type: ignore[arg-type]
