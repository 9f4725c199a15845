"""`RemoteBackend`: an Aligner served by an OpenAI-compatible completions server.

vLLM, Text Generation Inference, SGLang and ``aligner-chains serve`` all speak ``POST /v1/completions``.
The backend sends the rendered Aligner template as a raw completion prompt (no chat template), greedy
unless told otherwise, and turns the reply into the same `GenerationOutput` the local backend gives,
so `Aligner` reports the same `Correction`s and raises the same errors.

Token counting (the Aligner sizes ``max_new_tokens`` and checks the context before sending), in order:

1. ``tokenizer=`` (a local directory, hub id in the HF cache, or a tokenizer object): exact and local;
   recommended for production, since it costs no round trip.
2. the server's ``POST /tokenize`` (vLLM's and ours; exact, one round trip per count, results cached);
3. otherwise an upper bound, UTF-8 bytes + 2, which is never below the true count of byte-level BPE
   or SentencePiece (byte-fallback) tokenizers: a prompt accepted here is never too long there, but a
   long input may be refused early. The context length itself comes from ``max_context=`` or the
   server's ``GET /v1/models`` (``max_model_len``); when unknown, only the server checks lengths.

The API key comes from ``api_key=`` or the ``ALIGNER_API_KEY`` environment variable (never from
``OPENAI_API_KEY``, which must not leak to a self-hosted server); it is sent as a bearer token and
never logged, printed or put into error messages.

``httpx`` is imported lazily (``pip install -e '.[remote]'``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from aligner_chains.backends.remote.fleet import ServerFleet, server_root
from aligner_chains.backends.remote.protocol import (
    error_message,
    estimate_tokens,
    finish_reason,
    is_count,
    short_text,
    sse_events,
)
from aligner_chains.backends.remote.transport import HTTPTransport
from aligner_chains.backends.tokenizers import LockedTokenizer, decode_text, load_tokenizer
from aligner_chains.core.errors import BackendError, BackendTimeoutError, ConfigError
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams, StopSignal, check_limits
from aligner_chains.core.model_files import read_aligner_config, resolve_model_path
from aligner_chains.core.templates import Template, get_template, template_for_model

logger = logging.getLogger("aligner_chains.backends.remote")

API_KEY_ENV = "ALIGNER_API_KEY"
"""Environment variable the remote backend (and ``aligner-chains serve``) read the API key from."""

TokenCounting = Literal["auto", "tokenizer", "server", "estimate"]
_UNSET: Any = "auto"
_COUNT_CACHE_SIZE = 4096


class RemoteBackend(Backend):
    """Generation on an OpenAI-compatible server, through ``POST {base_url}/v1/completions``.

    Args:
        base_url: the server's address, with or without a trailing ``/v1``
            (``http://127.0.0.1:8000`` or ``http://127.0.0.1:8000/v1``); or a list of addresses of
            servers of the same model (replicas): each request goes to the least busy one, and a
            server that fails is set aside while the others take over (`ServerFleet`).
        model: the served model name sent with every request; None asks ``GET /v1/models`` (one model).
        api_key: bearer token; default ``$ALIGNER_API_KEY`` (``api_key_env``). Never logged.
        tokenizer: a local tokenizer (path, cached hub id, or object) for exact local token counts;
            a directory with ``aligner_config.json`` also gives the template.
        token_counting: ``"auto"`` (tokenizer, else the server's ``/tokenize``, else ``"estimate"``),
            or force one of ``"tokenizer"``, ``"server"``, ``"estimate"``.
        max_context: the model's context in tokens; ``"auto"`` reads ``max_model_len`` from
            ``GET /v1/models`` on first use; None leaves length checks to the server.
        timeout: seconds to wait for a reply (for streams: between two pieces); ``connect_timeout``
            for the connection.
        max_retries: retries of a request on 408/429/5xx and connection failures, with exponential
            backoff (``backoff`` * 2**attempt, with jitter, at most ``max_backoff``; ``Retry-After``
            is honoured). A timed-out generation is not retried.
        max_concurrency: requests in flight at once from this backend, over all its servers (threads
            beyond wait).
        stop: stop strings sent with every request (e.g. when the server ignores the model's EOS).
        return_token_ids: ask for the generated token ids (vLLM >= 0.10.2 and ``aligner-chains
            serve``); otherwise ``GenerationOutput.token_ids`` holds ``-1`` placeholders, one per
            generated token, so that counts stay right.
        stream_usage: ask for usage in streams (``stream_options.include_usage``).
        headers: extra HTTP headers for every request.
        http_client: an ``httpx.Client`` to use (e.g. Starlette's ``TestClient`` for an in-process
            app); it is not closed by `close`.
    """

    supports_stop = True

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        api_key_env: str = API_KEY_ENV,
        tokenizer: Any = None,
        token_counting: TokenCounting = "auto",
        max_context: int | Literal["auto"] | None = "auto",
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_concurrency: int = 8,
        stop: str | Sequence[str] | None = None,
        return_token_ids: bool = False,
        stream_usage: bool = True,
        headers: Mapping[str, str] | None = None,
        http_client: Any = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url) if isinstance(base_url, Sequence) else []
        if not urls:
            raise ConfigError(
                f"base_url={base_url!r}: give a server URL, e.g. 'http://127.0.0.1:8000', or a list of them."
            )
        for url in urls:
            if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
                raise ConfigError(
                    f"base_url={url!r} is not an http(s) URL; pass e.g. 'http://127.0.0.1:8000' "
                    "(a trailing /v1 is fine)."
                )
        if token_counting not in ("auto", "tokenizer", "server", "estimate"):
            raise ConfigError(f"token_counting={token_counting!r}: use 'auto', 'tokenizer', 'server' or 'estimate'.")
        if token_counting == "tokenizer" and tokenizer is None:
            raise ConfigError("token_counting='tokenizer' needs tokenizer= (a local path, cached hub id or object).")
        if not (max_context is None or max_context == "auto" or (is_count(max_context) and max_context > 0)):
            raise ConfigError(f"max_context={max_context!r}: use a positive int, None or 'auto'.")
        for label, value in (("max_retries", max_retries), ("max_concurrency", max_concurrency)):
            if not isinstance(value, int) or value < (0 if label == "max_retries" else 1):
                raise ConfigError(f"{label}={value!r} must be an int >= {0 if label == 'max_retries' else 1}.")
        for label, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{label}={value!r} must be a positive number of seconds.")
        self._model = model
        key = api_key if api_key else (os.environ.get(api_key_env) or None)
        self.fleet = ServerFleet(
            [
                HTTPTransport(
                    server_root(url),
                    api_key=key,
                    api_key_env=api_key_env,
                    timeout=timeout,
                    connect_timeout=connect_timeout,
                    max_retries=max_retries,
                    backoff=backoff,
                    max_backoff=max_backoff,
                    max_concurrency=max_concurrency,
                    headers=headers,
                    http_client=http_client,
                )
                for url in urls
            ]
        )
        self.transport = self.fleet.primary
        self.base_url = self.transport.base_url
        self.timeout = float(timeout)
        self.max_concurrency = max_concurrency
        self.stop: list[str] | None = [stop] if isinstance(stop, str) else (list(stop) if stop else None)
        self.return_token_ids = return_token_ids
        self.stream_usage = stream_usage
        self._lock = threading.RLock()  # discovery (models, counting mode); re-entered through `name`
        self._cache_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._models: list[dict[str, Any]] | None = None
        self._max_context = max_context
        self._tokenizer: LockedTokenizer | None = None  # every call under the tokenizer's one lock
        self._tokenizer_dir: Path | None = None
        self._counting: str = token_counting
        self._count_cache: OrderedDict[str, int] = OrderedDict()
        if tokenizer is not None:
            self._tokenizer = LockedTokenizer(self._load_tokenizer(tokenizer))
            if token_counting == "auto":
                self._counting = "tokenizer"

    # ----------------------------------------------------------------- identity

    @property
    def name(self) -> str:  # type: ignore[override]
        """The served model name sent with each request (asks the server when not given)."""
        if self._model is None:
            self.resolve_model()
        return self._model or ""

    @property
    def max_context(self) -> int | None:  # type: ignore[override]
        """The model's context window, from ``max_context=`` or the server's ``/v1/models``."""
        if self._max_context == "auto":
            info = self._model_info()
            value = info.get("max_model_len") if info else None
            if value is not None and not (is_count(value) and value > 0):
                logger.warning(
                    "%s lists max_model_len=%s for %r, which is not a positive whole number: ignored, so only "
                    "the server checks lengths. Pass max_context= to check them here.",
                    self.base_url,
                    short_text(value),
                    self.name,
                )
            self._max_context = value if is_count(value) and value > 0 else None
        return self._max_context

    def resolve_model(self) -> str:
        """The model to use: ``model=`` if given, else the one model the server lists."""
        if self._model is not None:
            return self._model
        models = self.list_models()
        ids = [m.get("id") for m in models if isinstance(m.get("id"), str)]
        if len(ids) != 1:
            raise ConfigError(
                f"The server at {self.base_url} serves {len(ids)} models ({', '.join(ids) or 'none listed'}); "
                "pass model= to choose one."
            )
        self._model = ids[0]
        return self._model

    def list_models(self) -> list[dict[str, Any]]:
        """The server's ``GET /v1/models`` entries (fetched once; an empty list if it has none)."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    try:
                        data = self.fleet.request_json("GET", "/v1/models")
                    except BackendError as exc:
                        if exc.status_code in (404, 405):
                            self._models = []
                            return self._models
                        raise
                    entries = data.get("data") if isinstance(data, dict) else None
                    self._models = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        return self._models

    def check_servers(self) -> None:
        """Check that every server is up and lists this model (`ServerFleet.check_model`)."""
        self.fleet.check_model(self.name)

    def _model_info(self) -> dict[str, Any] | None:
        name = self.name
        for entry in self.list_models():
            if entry.get("id") == name:
                return entry
        return None

    def resolve_template(self, template: str | Template | dict[str, Any] | None = None) -> Template:
        """``template`` if given; else the tokenizer directory's ``aligner_config.json``; else what the
        server advertises (``aligner-chains serve`` does, in ``/v1/models``); else the released table."""
        from aligner_chains.core.errors import TemplateError

        if template is not None:
            return get_template(template)
        stored = (self._stored_config() or {}).get("template")
        if stored is not None:
            return get_template(stored)
        info = self._model_info() or {}
        advertised = (info.get("aligner") or {}).get("template") if isinstance(info.get("aligner"), dict) else None
        if isinstance(advertised, dict):
            try:
                registered = get_template(str(advertised.get("name")))
            except TemplateError:
                registered = None
            if registered is not None and registered.prompt == advertised.get("prompt"):
                return registered
            return get_template(advertised)
        if isinstance(advertised, str):
            return get_template(advertised)
        known = template_for_model(self.name)
        if known is not None:
            return get_template(known)
        raise TemplateError(
            f"Cannot tell the prompt template of model {self.name!r} at {self.base_url}: the server does not "
            "advertise one and it is not a known released checkpoint. Pass template=, e.g. template='aligner-v2', "
            "or tokenizer= a local copy of the checkpoint (its aligner_config.json names the template)."
        )

    def stored_generation(self) -> dict[str, Any]:
        """Generation settings stored in the tokenizer directory's ``aligner_config.json``, if any."""
        return dict((self._stored_config() or {}).get("generation") or {})

    def _stored_config(self) -> dict[str, Any] | None:
        if self._tokenizer_dir is None:
            return None
        return read_aligner_config(self._tokenizer_dir)

    # ----------------------------------------------------------------- tokens

    def _load_tokenizer(self, tokenizer: Any) -> Any:
        if not isinstance(tokenizer, (str, os.PathLike)):
            return tokenizer
        path = resolve_model_path(os.fspath(tokenizer))
        self._tokenizer_dir = path
        return load_tokenizer(path)

    def counting_mode(self) -> str:
        """How tokens are counted: ``"tokenizer"``, ``"server"`` or ``"estimate"`` (``"auto"`` resolved)."""
        if self._counting == "auto":
            with self._lock:
                if self._counting == "auto":
                    self._counting = "server" if self._probe_tokenize() else "estimate"
                    if self._counting == "estimate":
                        logger.warning(
                            "%s has no /tokenize endpoint: token counts are upper-bound estimates (UTF-8 bytes). "
                            "Pass tokenizer= for exact counts.",
                            self.base_url,
                        )
        return self._counting

    def _probe_tokenize(self) -> bool:
        try:
            data = self.fleet.request_json("POST", "/tokenize", {"model": self.name, "prompt": "a"}, retry=False)
        except BackendError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code not in (401, 403):
                return False
            raise
        return isinstance(data, dict) and is_count(data.get("count"))

    def count_tokens(self, text: str) -> int:
        mode = self.counting_mode()
        if mode == "tokenizer":
            return self._tokenizer.count(text, add_special_tokens=True)
        if mode == "estimate":
            return estimate_tokens(text)
        with self._cache_lock:
            if text in self._count_cache:
                self._count_cache.move_to_end(text)
                return self._count_cache[text]
        data = self.fleet.request_json(
            "POST", "/tokenize", {"model": self.name, "prompt": text, "add_special_tokens": True}
        )
        count = data.get("count") if isinstance(data, dict) else None
        if not is_count(count):
            raise BackendError(f"{self.base_url}/tokenize answered without an integer 'count': {short_text(data)}")
        with self._cache_lock:
            self._count_cache[text] = count
            if len(self._count_cache) > _COUNT_CACHE_SIZE:
                self._count_cache.popitem(last=False)
        return count

    def truncate_left(self, text: str, n_tokens: int) -> str:
        if n_tokens <= 0:
            return text
        mode = self.counting_mode()
        if mode == "tokenizer":
            ids = self._tokenizer.ids(text, add_special_tokens=False)
            return self._tokenizer.decode(ids[n_tokens:], clean_up_tokenization_spaces=False)
        if mode == "server":
            data = self.fleet.request_json(
                "POST", "/tokenize", {"model": self.name, "prompt": text, "add_special_tokens": False}
            )
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if isinstance(tokens, list):
                try:
                    out = self.fleet.request_json(
                        "POST", "/detokenize", {"model": self.name, "tokens": tokens[n_tokens:]}
                    )
                except BackendError as exc:
                    if exc.status_code not in (404, 405):
                        raise
                else:
                    if isinstance(out, dict) and isinstance(out.get("prompt"), str):
                        return out["prompt"]
        # estimate: one token per byte, so n tokens are at most n bytes
        return text.encode("utf-8")[n_tokens:].decode("utf-8", errors="ignore")

    def decode(self, token_ids: Sequence[int]) -> str:
        """Completion token ids to text (stripped): with the local tokenizer, else the server's ``/detokenize``."""
        ids = list(token_ids)
        if self._tokenizer is not None:
            return decode_text(self._tokenizer, ids)
        if any(i < 0 for i in ids):
            raise BackendError(
                f"Cannot decode: {self.base_url} did not return token ids. Pass tokenizer=, or "
                "backend_options={'return_token_ids': True} for a server that returns them."
            )
        data = self.fleet.request_json("POST", "/detokenize", {"model": self.name, "tokens": ids})
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise BackendError(f"{self.base_url}/detokenize answered without a 'prompt' string: {short_text(data)}")
        return data["prompt"].strip()

    # ----------------------------------------------------------------- generation

    def request_body(self, prompt: str, params: GenerationParams, *, stream: bool) -> dict[str, Any]:
        """The JSON body of ``POST /v1/completions`` for ``prompt`` (greedy: ``temperature=0``)."""
        body: dict[str, Any] = {"model": self.name, "prompt": prompt, "stream": stream}
        if params.max_new_tokens is not None:
            body["max_tokens"] = params.max_new_tokens
        if params.do_sample:
            body["temperature"] = params.temperature if params.temperature is not None else 1.0
            if params.top_p is not None:
                body["top_p"] = params.top_p
            if params.top_k is not None:
                body["top_k"] = params.top_k
        else:  # explicit, so server-side defaults (e.g. a checkpoint's generation_config) cannot turn sampling on
            body["temperature"] = 0.0
        if params.repetition_penalty is not None:
            body["repetition_penalty"] = params.repetition_penalty
        for key, value in (params.model_extra or {}).items():
            if value is not None:
                body[key] = value
        if self.stop:
            body.setdefault("stop", list(self.stop))
        if self.return_token_ids:
            body["return_token_ids"] = True
        if stream and self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def can_mix_limits(self, params: GenerationParams) -> bool:
        return True  # each prompt is a request of its own, with its own max_tokens

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
        stop: StopSignal | None = None,
    ) -> list[GenerationOutput]:
        """One request per prompt (exact per-prompt usage), at most ``max_concurrency`` in flight.

        ``sources`` (copy-draft hints for local speculative decoding) are not sent: a server that drafts
        from the prompt (vLLM's n-gram speculative decoding) finds the answer there by itself.
        ``limits`` sets each request's ``max_tokens``. Once ``stop`` is set, requests not yet sent are not.
        """
        prompts = list(prompts)
        check_limits(limits, len(prompts))
        each = [params] * len(prompts) if limits is None else [params.with_max_new_tokens(n) for n in limits]
        if len(prompts) <= 1:
            return [self._complete(p, q) for p, q in zip(prompts, each, strict=True)]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="aligner-remote")
        futures = [self._pool.submit(self._complete, p, q, stop) for p, q in zip(prompts, each, strict=True)]
        return [f.result() for f in futures]

    def _complete(self, prompt: str, params: GenerationParams, stop: StopSignal | None = None) -> GenerationOutput:
        if stop is not None and stop.is_set():
            raise BackendError("Not sent: every caller of this batch has gone.")
        body = self.request_body(prompt, params, stream=False)
        data = self.fleet.call(lambda transport: transport.request_json("POST", "/v1/completions", body))
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(f"{self.base_url}/v1/completions answered without choices: {short_text(data)}")
        choice = choices[0]
        return self._output(
            prompt,
            self._choice_text(choice),
            choice.get("finish_reason"),
            _stop_reason(choice),
            data.get("usage"),
            choice.get("token_ids"),
        )

    def _choice_text(self, choice: Any) -> str:
        """A choice's ``text``; none is a `BackendError`, not an empty correction (which would erase the answer)."""
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise BackendError(
                f"{self.base_url}/v1/completions answered with a choice without a 'text' string: {short_text(choice)}",
                url=self.base_url + "/v1/completions",
            )
        return text

    def stream(
        self, prompt: str, params: GenerationParams, source: str | None = None
    ) -> Iterator[str | GenerationOutput]:
        """Server-sent events of ``/v1/completions``; pieces join to the final (stripped) text."""
        body = self.request_body(prompt, params, stream=True)
        raw = ""
        emitted = ""
        finish: Any = None
        stop_reason: Any = None
        usage: Any = None
        ids: list[int] = []
        got_ids = False
        httpx = self.transport.httpx
        server = self.base_url
        with self.fleet.lease() as transport, transport.slot():
            server = transport.base_url
            response = transport.send("POST", "/v1/completions", body, stream=True)
            try:
                for event in sse_events(response):
                    if isinstance(event.get("error"), (dict, str)):
                        raise BackendError(
                            f"{server}/v1/completions failed mid-stream: {error_message(event)}",
                            url=server + "/v1/completions",
                        )
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        raw += self._choice_text(choice)
                        if choice.get("finish_reason") is not None:
                            finish, stop_reason = choice["finish_reason"], _stop_reason(choice)
                        if isinstance(choice.get("token_ids"), list):
                            got_ids = True
                            ids.extend(choice["token_ids"])
                    text = raw.strip()
                    if len(text) > len(emitted) and text.startswith(emitted):
                        piece, emitted = text[len(emitted) :], text
                        yield piece
            except httpx.TimeoutException as exc:
                raise BackendTimeoutError(
                    f"{server}/v1/completions sent no new piece for {self.timeout} s "
                    f"({type(exc).__name__}); raise timeout= or check the server's load.",
                    url=server,
                ) from exc
            except httpx.TransportError as exc:
                raise BackendError(
                    f"The stream from {server}/v1/completions broke: {type(exc).__name__}: {exc}",
                    url=server,
                ) from exc
            finally:
                response.close()
        if finish is None:
            raise BackendError(
                f"The stream from {server}/v1/completions ended without a finish_reason (the server closed it early).",
                url=server,
            )
        output = self._output(prompt, raw, finish, stop_reason, usage, ids if got_ids else None)
        if output.text.startswith(emitted) and len(output.text) > len(emitted):
            yield output.text[len(emitted) :]
        yield output

    def _output(
        self,
        prompt: str,
        raw_text: str,
        finish_reason_raw: Any,
        stop_reason: Any,
        usage: Any,
        token_ids: Any,
    ) -> GenerationOutput:
        text = raw_text.strip()  # as engine.decode_text strips
        finish = finish_reason(finish_reason_raw, self.base_url + "/v1/completions")
        usage = usage if isinstance(usage, dict) else {}
        n_prompt = usage.get("prompt_tokens")
        if not is_count(n_prompt):
            n_prompt = self.count_tokens(prompt)
        n_completion = usage.get("completion_tokens")
        if is_count(n_completion):
            # Servers count the end-of-sequence (or stop) token they generated; the local backend does not.
            # vLLM's stop_reason (SGLang's matched_stop) is the stop string, the stop token id, or None for EOS;
            # a stop string (TGI: "stop_sequence") is text, not a token of its own.
            if finish == "stop" and not isinstance(stop_reason, str) and finish_reason_raw != "stop_sequence":
                n_completion -= 1
            n_completion = max(n_completion, 0)
        elif isinstance(token_ids, list):
            n_completion = len(token_ids)
        elif self._tokenizer is not None:
            n_completion = self._tokenizer.count(text, add_special_tokens=False)
        else:
            n_completion = 0
        if isinstance(token_ids, list) and all(isinstance(t, int) for t in token_ids):
            ids = list(token_ids[:n_completion])
        else:
            ids = [-1] * n_completion
        return GenerationOutput(
            token_ids=ids,
            text=text,
            finish_reason=finish,
            prompt_tokens=int(n_prompt),
            stats={"backend": "remote", "server_finish_reason": finish_reason_raw},
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the HTTP connections (not those of a client passed as ``http_client``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.fleet.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "***" if self.transport.has_api_key else None
        urls = self.fleet.urls
        where = repr(urls[0]) if len(urls) == 1 else repr(urls)
        return f"RemoteBackend(base_url={where}, model={self._model!r}, api_key={key!r})"


def _stop_reason(choice: dict[str, Any]) -> Any:
    """What stopped a choice: vLLM's ``stop_reason`` or SGLang's ``matched_stop`` (a stop string or token id)."""
    return choice["stop_reason"] if "stop_reason" in choice else choice.get("matched_stop")
