"""`AlignedChain`: a chain, then an Aligner reading the question from the chain's input (`AlignerRunnable.wrap`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict

from aligner_chains.langchain.question import DEFAULT_QUESTION_KEYS, QUESTION_METADATA_KEY, extract_question
from aligner_chains.langchain.runnable import AlignerRunnable
from aligner_chains.langchain.traced import TracedRunnableMixin, aiter_values
from aligner_chains.langchain.translation import (
    acollect_chunks,
    collect_chunks,
)

__all__ = ["AlignedChain"]


class AlignedChain(TracedRunnableMixin, RunnableSerializable[Any, Any]):
    """``chain`` then ``aligner``, the question read explicitly from the chain's input (`AlignerRunnable.wrap`).

    ``invoke`` runs the chain, then corrects its answer to the question found in the input; ``batch``
    batches the chain, then corrects all its answers in one batched correction; ``stream`` streams the
    chain's answer into the Aligner, then streams the correction.
    """

    chain: Runnable[Any, Any]
    aligner: AlignerRunnable
    name: str | None = "AlignedChain"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _question(self, value: Any) -> str | None:
        return extract_question(value, (self.aligner.question_key, *DEFAULT_QUESTION_KEYS))

    def _chain_config(self, config: RunnableConfig, run_manager: Any) -> RunnableConfig:
        return patch_config(config, callbacks=run_manager.get_child("aligned:chain"))

    def _aligner_config(self, config: RunnableConfig, run_manager: Any, question: str | None) -> RunnableConfig:
        child = patch_config(config, callbacks=run_manager.get_child("aligned:aligner"))
        if question is not None:
            child["metadata"] = {**(child.get("metadata") or {}), QUESTION_METADATA_KEY: question}
        return child

    def _chain_configs(self, configs: list[RunnableConfig], run_managers: list[Any]) -> list[RunnableConfig]:
        return [self._chain_config(c, rm) for c, rm in zip(configs, run_managers, strict=True)]

    def _aligner_batch(
        self, values: list[Any], answers: list[Any], configs: list[RunnableConfig], run_managers: list[Any]
    ) -> tuple[list[int], list[Any], list[RunnableConfig]]:
        """(indices, answers, configs) of the chain's answers that are not exceptions, for the Aligner."""
        ok = [i for i, answer in enumerate(answers) if not isinstance(answer, Exception)]
        inputs = [answers[i] for i in ok]
        return ok, inputs, [self._aligner_config(configs[i], run_managers[i], self._question(values[i])) for i in ok]

    @staticmethod
    def _merge(answers: list[Any], ok: list[int], corrected: list[Any]) -> list[Any]:
        out = list(answers)
        for i, result in zip(ok, corrected, strict=True):
            out[i] = result
        return out

    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        answer = self.chain.invoke(value, self._chain_config(config, run_manager), **kwargs)
        return self.aligner.invoke(answer, self._aligner_config(config, run_manager, self._question(value)))

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        answer = await self.chain.ainvoke(value, self._chain_config(config, run_manager), **kwargs)
        return await self.aligner.ainvoke(answer, self._aligner_config(config, run_manager, self._question(value)))

    def _batch(
        self,
        values: list[Any],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        configs = self._chain_configs(config, run_manager)
        answers = self.chain.batch(values, configs, return_exceptions=return_exceptions, **kwargs)
        ok, inputs, aligner_configs = self._aligner_batch(values, answers, config, run_manager)
        return self._merge(
            answers, ok, self.aligner.batch(inputs, aligner_configs, return_exceptions=return_exceptions)
        )

    async def _abatch(
        self,
        values: list[Any],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        configs = self._chain_configs(config, run_manager)
        answers = await self.chain.abatch(values, configs, return_exceptions=return_exceptions, **kwargs)
        ok, inputs, aligner_configs = self._aligner_batch(values, answers, config, run_manager)
        corrected = await self.aligner.abatch(inputs, aligner_configs, return_exceptions=return_exceptions)
        return self._merge(answers, ok, corrected)

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Iterator[Any]:
        value = collect_chunks(chunks)
        answers = self.chain.transform(iter([value]), self._chain_config(config, run_manager), **kwargs)
        yield from self.aligner.transform(answers, self._aligner_config(config, run_manager, self._question(value)))

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        value = await acollect_chunks(chunks)
        answers = self.chain.atransform(aiter_values(value), self._chain_config(config, run_manager), **kwargs)
        async for out in self.aligner.atransform(
            answers, self._aligner_config(config, run_manager, self._question(value))
        ):
            yield out
