"""Question recovery: `AlignerRunnable` finds the user's question from the chain it runs in.

Covers sequences (message list, string, prompt value, dict keys), nested sequences, RunnableParallel
branches, batch, stream, async, `AlignerRunnable.wrap`, the explicit metadata key, the dict form,
`on_missing_question`, and that the run-input recorder keeps nothing once runs end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from aligner_chains import Aligner
from aligner_chains.langchain import AlignerRunnable, MissingQuestionError, extract_question
from aligner_chains.langchain.question import recorder
from aligner_chains.langchain.testing import ScriptedChatModel

ANSWER = "Paris is the capital of France."
QUESTION = "What is the capital of France?"


class RecordingAligner(Aligner):
    """The tiny Aligner, remembering every (question, answer) it is asked to correct."""

    def __init__(self, base: Aligner) -> None:
        super().__init__(base.backend, base.template, generation=base.generation)
        self.pairs: list[tuple[str, str]] = []

    def correct_batch(self, pairs: Any, batch_size: int = 16, **kwargs: Any) -> Any:
        pairs = list(pairs)
        self.pairs.extend(pairs)
        return super().correct_batch(pairs, batch_size, **kwargs)

    def iter_correction(self, question: str, answer: str, **kwargs: Any) -> Iterator[Any]:
        self.pairs.append((question, answer))
        yield from super().iter_correction(question, answer, **kwargs)

    def questions(self) -> list[str]:
        return [q for q, _ in self.pairs]


@pytest.fixture
def rec(tiny_aligner: Aligner) -> RecordingAligner:
    return RecordingAligner(tiny_aligner)


@pytest.fixture
def aligner(rec: RecordingAligner) -> AlignerRunnable:
    return AlignerRunnable(rec)


@pytest.fixture
def llm() -> ScriptedChatModel:
    return ScriptedChatModel(responses=[ANSWER])


@pytest.fixture(autouse=True)
def _no_leftover_runs() -> Iterator[None]:
    yield
    assert recorder.active_runs == 0, "the run-input recorder kept entries after the runs ended"


# ---------------------------------------------------------------------------- extract_question


def test_extract_question_rules() -> None:
    assert extract_question("Hi?") == "Hi?"
    assert extract_question("   ") is None
    assert extract_question([SystemMessage("sys"), HumanMessage("first"), AIMessage("a"), HumanMessage("last")]) == (
        "last"
    )
    assert extract_question([("system", "s"), ("human", "tuple q")]) == "tuple q"
    assert extract_question([AIMessage("only ai")]) is None
    assert extract_question(ChatPromptValue(messages=[HumanMessage("pv")])) == "pv"
    assert extract_question(StringPromptValue(text="spv")) == "spv"
    assert extract_question({"question": "q", "input": "i"}) == "q"
    assert extract_question({"input": "i"}) == "i"
    assert extract_question({"messages": [HumanMessage("state q")]}) == "state q"
    assert extract_question({"topic": "cats"}) is None
    assert extract_question({"query": "x"}, keys=("query",)) == "x"
    assert extract_question(HumanMessage([{"type": "text", "text": "block q"}, {"type": "image", "url": "u"}])) == (
        "block q"
    )
    assert extract_question(42) is None


# ---------------------------------------------------------------------------- sequences


def test_llm_then_aligner_with_message_list(llm: ScriptedChatModel, aligner: AlignerRunnable, rec) -> None:
    out = (llm | aligner).invoke(
        [SystemMessage("Be brief."), HumanMessage("old"), AIMessage("x"), HumanMessage(QUESTION)]
    )
    assert isinstance(out, AIMessage)
    assert rec.pairs == [(QUESTION, ANSWER)]


def test_llm_then_aligner_with_string_prompt(llm, aligner, rec) -> None:
    (llm | aligner).invoke(QUESTION)
    assert rec.questions() == [QUESTION]


def test_prompt_llm_aligner_reads_question_key(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer well."), ("human", "Context: none. Q: {question}")])
    (prompt | llm | aligner).invoke({"question": QUESTION})
    assert rec.questions() == [QUESTION]


def test_prompt_llm_aligner_reads_input_key(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{input}")])
    (prompt | llm | aligner).invoke({"input": QUESTION, "history": []})
    assert rec.questions() == [QUESTION]


def test_prompt_without_question_key_uses_the_models_input(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "sys"), ("human", "Tell me about {topic}.")])
    (prompt | llm | aligner).invoke({"topic": "France"})
    assert rec.questions() == ["Tell me about France."]


def test_string_prompt_template_and_parser(aligner, rec) -> None:
    llm = ScriptedChatModel(responses=[ANSWER])
    prompt = PromptTemplate.from_template("Q: {q}")
    (prompt | llm | StrOutputParser() | aligner).invoke({"q": "capital?"})
    assert rec.questions() == ["Q: capital?"]  # from the model's input: the dict has no question key


def test_custom_question_key(llm, rec) -> None:
    aligner = AlignerRunnable(rec, question_key="ask")
    prompt = ChatPromptTemplate.from_messages([("human", "Please answer: {ask}")])
    (prompt | llm | aligner).invoke({"ask": QUESTION})
    assert rec.questions() == [QUESTION]


def test_nested_sequences(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    inner = llm | (StrOutputParser() | aligner)
    outer = RunnablePassthrough() | (prompt | inner)
    assert isinstance(outer.invoke({"question": QUESTION}), str)
    assert rec.questions() == [QUESTION]


def test_parallel_branches(aligner, rec) -> None:
    llm_a = ScriptedChatModel(responses=["Answer A."])
    llm_b = ScriptedChatModel(responses=["Answer B."])
    chain = RunnableParallel(a=llm_a | aligner, b=llm_b | aligner, raw=RunnablePassthrough())
    out = chain.invoke(QUESTION)
    assert isinstance(out["a"], AIMessage) and isinstance(out["b"], AIMessage)
    assert sorted(rec.pairs) == [(QUESTION, "Answer A."), (QUESTION, "Answer B.")]


def test_aligner_directly_inside_parallel_skips_the_answer_level(llm, aligner, rec) -> None:
    # the RunnableParallel's input is the answer itself: recovery goes on to the sequence's input
    chain = llm | StrOutputParser() | RunnableParallel(fixed=aligner, raw=RunnablePassthrough())
    out = chain.invoke(QUESTION)
    assert out["raw"] == ANSWER
    assert rec.pairs == [(QUESTION, ANSWER)]


def test_lambda_step_between_model_and_aligner(llm, aligner, rec) -> None:
    chain = llm | RunnableLambda(lambda m: m.content.upper()) | aligner
    chain.invoke(QUESTION)
    assert rec.pairs == [(QUESTION, ANSWER.upper())]


# ---------------------------------------------------------------------------- batch / stream / async


def test_batch_recovers_each_items_question(aligner, rec) -> None:
    questions = ["Q one?", "Q two?", "Q three?"]
    llm = ScriptedChatModel(answers={q: f"Answer to {q}" for q in questions})
    outs = (llm | aligner).batch(questions)
    assert len(outs) == 3
    assert sorted(rec.pairs) == sorted((q, f"Answer to {q}") for q in questions)


def test_stream_recovers_question(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "s"), ("human", "About: {question}")])
    list((prompt | llm | aligner).stream({"question": QUESTION}))
    assert rec.questions() == [QUESTION]


def test_stream_with_model_first(llm, aligner, rec) -> None:
    list((llm | aligner).stream([HumanMessage(QUESTION)]))
    assert rec.questions() == [QUESTION]


async def test_async_invoke_batch_and_stream(aligner, rec) -> None:
    questions = ["A one?", "A two?"]
    llm = ScriptedChatModel(answers={q: f"Answer to {q}" for q in questions})
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | llm | aligner
    await chain.ainvoke({"question": "A one?"})
    await chain.abatch([{"question": q} for q in questions])
    async for _ in chain.astream({"question": "A two?"}):
        pass
    assert sorted(rec.questions()) == sorted(["A one?", "A one?", "A two?", "A two?"])
    assert all(a == f"Answer to {q}" for q, a in rec.pairs)


async def test_async_parallel_branches(aligner, rec) -> None:
    chain = RunnableParallel(
        a=ScriptedChatModel(responses=["A."]) | aligner, b=ScriptedChatModel(responses=["B."]) | aligner
    )
    await chain.ainvoke(QUESTION)
    assert sorted(rec.pairs) == [(QUESTION, "A."), (QUESTION, "B.")]


# ---------------------------------------------------------------------------- explicit forms


def test_wrap_reads_the_chains_input(llm, aligner, rec) -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "Say something about {question}")])
    chain = aligner.wrap(prompt | llm)
    out = chain.invoke({"question": QUESTION})
    assert isinstance(out, AIMessage) and "aligner" in out.response_metadata
    assert rec.pairs == [(QUESTION, ANSWER)]


def test_wrap_on_the_class_with_options(tiny_model_dir, llm) -> None:
    chain = AlignerRunnable.wrap(llm | StrOutputParser(), model=str(tiny_model_dir), max_new_tokens=4)
    assert chain.aligner.max_new_tokens == 4
    assert isinstance(chain.invoke(QUESTION), str)


def test_wrap_batch_stream_and_async(aligner, rec) -> None:
    questions = ["W one?", "W two?"]
    llm = ScriptedChatModel(answers={q: f"Answer to {q}" for q in questions})
    chain = aligner.wrap(llm)
    chain.batch(questions)
    assert sorted(rec.pairs) == sorted((q, f"Answer to {q}") for q in questions)
    rec.pairs.clear()
    chunks = list(chain.stream("W one?"))
    assert len(chunks) > 1 and rec.pairs == [("W one?", "Answer to W one?")]


async def test_wrap_async(aligner, rec) -> None:
    llm = ScriptedChatModel(answers={"W?": "Answer W."})
    chain = aligner.wrap(llm)
    await chain.ainvoke("W?")
    await chain.abatch(["W?"])
    async for _ in chain.astream("W?"):
        pass
    assert rec.pairs == [("W?", "Answer W.")] * 3


def test_dict_form_and_metadata_key(aligner, rec) -> None:
    out = aligner.invoke({"question": "dict q", "answer": ANSWER})
    assert set(out) == {"question", "answer", "aligner"}
    aligner.invoke(ANSWER, config={"metadata": {"aligner_question": "meta q"}})
    assert rec.questions() == ["dict q", "meta q"]


def test_dict_form_with_recovered_question(llm, aligner, rec) -> None:
    chain = llm | RunnableLambda(lambda m: {"answer": m.content})
    (chain | aligner).invoke(QUESTION)
    assert rec.pairs == [(QUESTION, ANSWER)]


def test_missing_question_policies(rec) -> None:
    AlignerRunnable(rec).invoke(ANSWER)
    assert rec.pairs == [("", ANSWER)]
    with pytest.raises(MissingQuestionError, match="No question found"):
        AlignerRunnable(rec, on_missing_question="raise").invoke(ANSWER)
    llm = ScriptedChatModel(responses=[ANSWER])
    with pytest.raises(MissingQuestionError):
        (llm | AlignerRunnable(rec, on_missing_question="raise")).invoke([SystemMessage("no human here")])


def test_missing_question_in_batch_with_return_exceptions(rec) -> None:
    aligner = AlignerRunnable(rec, on_missing_question="raise")
    outs = aligner.batch([{"question": "q", "answer": "a b"}, "no question"], return_exceptions=True)
    assert isinstance(outs[0], dict) and isinstance(outs[1], MissingQuestionError)
    assert rec.pairs == [("q", "a b")]
