"""One simulated vLLM server: vLLM's OpenAI HTTP surface over an Engine, plus fault injection.

Response shapes follow vLLM's OpenAI server (`data: {...}\\n\\n` SSE chunks, `data: [DONE]`,
`usage.prompt_tokens_details.cached_tokens`, errors as {"error": {...}}). A client that goes
away aborts its request in the engine (aiohttp's handler cancellation), freeing its blocks.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from aiohttp import web

from .chat_template import ChatPrompt
from .engine import FINISHED, Engine, Request, SimClock
from .kv_events import KVEventPublisher
from .metrics import render
from .profiles import Profile
from .tokenizer import TemplateError, Tokenizer

FAULT_MODES = ("crash", "hang", "error_rate", "slow", "metrics_fail", "metrics_stale", "restart", "kv_drop",
               "kv_overrun", "none")

# Separates a response id from the index of the instance that served it.
SERVED_BY = "-sim"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _compact(obj: Any) -> str:
    # Starlette's JSONResponse (vLLM's) writes compact JSON.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_compact(obj).encode(), status=status, content_type="application/json")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.param = param


def error_response(message: str, status: int, type_: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return json_response(body, status=status)


def _int_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BadRequest(f"'{name}' must be a positive integer", param=name)
        return v
    return None


class SimInstance:
    """A vLLM server on host:port. Fault control: `await inst.set_fault(mode, value)`."""

    def __init__(self, index: int, *, host: str, port: int, clock: SimClock, profile: Profile,
                 models: list[str], tokenizer: Tokenizer, chat: ChatPrompt, seed: int = 0,
                 per_token_delay: float | None = None, default_max_tokens: int = 128,
                 eos_probability: float = 0.0, enable_prefix_caching: bool = True,
                 kv_events_port: int | None = None, kv_events_replay_port: int | None = None,
                 kv_events_buffer_steps: int = 10_000) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.models = models
        self.tokenizer = tokenizer
        self.chat = chat
        self.profile = profile
        self.engine = Engine(profile, clock, per_token_delay=per_token_delay, seed=seed, index=index,
                             default_max_tokens=default_max_tokens, eos_probability=eos_probability,
                             enable_prefix_caching=enable_prefix_caching)
        self.engine.output_vocab = tokenizer.output_ids()
        # vLLM's --kv-events-config publisher (PUB, and the ROUTER replay socket when given a port).
        self.kv_events: KVEventPublisher | None = None
        if kv_events_port is not None:
            self.kv_events = KVEventPublisher(host, kv_events_port, kv_events_replay_port, kv_events_buffer_steps)
            self.engine.enable_kv_events(self.kv_events)
        self._rng = random.Random(f"{seed}:{index}:faults")  # str seeds are hashed stably (sha512)
        self._id_rng = random.Random(f"{seed}:{index}:ids")
        self.created = time.time()
        self._pieces: dict[int, str] = {}
        # fault state
        self.error_rate = 0.0
        self.metrics_fail = False
        self.stale_metrics: str | None = None
        self.crashed = False
        self._unhang = asyncio.Event()
        self._unhang.set()
        self._restart_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application()
        self.app.add_routes([
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/completions", self._completions),
            web.get("/v1/models", self._models),
            web.get("/health", self._health),
            web.get("/version", self._version),
            web.get("/metrics", self._metrics),
            web.post("/reset_prefix_cache", self._reset_prefix_cache),
            web.post("/sim/fault", self._fault),
            web.get("/sim/state", self._state),
        ])
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        # handler_cancellation: a disconnected client cancels its handler, which aborts the
        # request in the engine, as vLLM does for streamed and non-streamed requests alike.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()
        if self.kv_events is not None:
            try:
                await self.kv_events.start()
            except BaseException:
                await self._runner.cleanup()
                raise
        self.engine.start()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            # Port 0 asked the OS for a free port; keep it so a restart comes back on the same one.
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
        self._unhang.set()
        await self.engine.stop()
        if self.kv_events is not None:
            await self.kv_events.stop()
        # End every open stream now (as a stopped server does) rather than waiting for them.
        self.engine.reset()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for t in list(self._tasks):
            t.cancel()

    # -- faults ----------------------------------------------------------------------------

    async def set_fault(self, mode: str, value: float | None = None) -> None:
        """crash [value: seconds until it comes back, default never]; restart [value: seconds
        down, default 0]; hang; error_rate (value in [0, 1]); slow (value: factor on step time);
        metrics_fail; metrics_stale; kv_drop [value: batches, default 1] (KV event batches not sent,
        kept for replay); kv_overrun [value: batches, default 1] (not sent and lost from the replay
        buffer); none (clears all, brings a crashed instance back). A crash or restart stops the KV
        event publisher; the restarted one counts from sequence 0 with an empty replay buffer."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {', '.join(FAULT_MODES)}")
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise ValueError("'value' must be a non-negative number")
        if mode == "crash":
            await self._crash(value)
        elif mode == "restart":
            await self._crash(value if value is not None else 0.0)
        elif mode == "hang":
            self._unhang.clear()
            self.engine.pause()
        elif mode == "error_rate":
            if value is None or value > 1:
                raise ValueError("error_rate needs 'value' in [0, 1]")
            self.error_rate = float(value)
        elif mode == "slow":
            if value is None or value <= 0:
                raise ValueError("slow needs 'value' > 0 (a factor on step time)")
            self.engine.slow = float(value)
        elif mode in ("kv_drop", "kv_overrun"):
            if self.kv_events is None:
                raise ValueError(f"{mode} needs KV events on (kvroute sim --kv-events-port)")
            n = 1 if value is None else int(value)
            if mode == "kv_drop":
                self.kv_events.drop_next = n
            else:
                self.kv_events.overrun_next = n
        elif mode == "metrics_fail":
            self.metrics_fail = True
        elif mode == "metrics_stale":
            self.stale_metrics = self._render_metrics()
        elif mode == "none":
            if self.crashed:
                await self._come_back()
            else:
                self._clear_faults()

    def _clear_faults(self) -> None:
        self.error_rate = 0.0
        self.engine.slow = 1.0
        self.metrics_fail = False
        self.stale_metrics = None
        self._unhang.set()
        self.engine.resume()
        if self.kv_events is not None:
            self.kv_events.drop_next = self.kv_events.overrun_next = 0

    async def _crash(self, down_for: float | None) -> None:
        """Stop listening and drop every open connection (clients see a reset), lose all state."""
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        if not self.crashed:
            self.crashed = True
            if self._site is not None:
                await self._site.stop()
                self._site = None
            assert self._runner is not None
            server = self._runner.server
            if server is not None:
                for handler in server.connections:
                    if handler.transport is not None:
                        handler.transport.abort()
            if self.kv_events is not None:
                await self.kv_events.stop()
            self.engine.reset()
            self.engine.pause()
        if down_for is not None:
            loop = asyncio.get_running_loop()
            # The coroutine is made when the timer fires: a cancelled timer leaves none un-awaited.
            self._restart_handle = loop.call_later(down_for, lambda: self._spawn(self._come_back()))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _come_back(self) -> None:
        """A fresh process on the same port: empty cache, counters from zero, faults cleared."""
        if self._restart_handle is not None:
            self._restart_handle.cancel()  # brought back by hand before its timer
            self._restart_handle = None
        if not self.crashed:
            return
        self.engine.reset()
        self._clear_faults()
        self.created = time.time()
        await self._listen()
        if self.kv_events is not None:
            await self.kv_events.start()
        self.crashed = False

    def state(self) -> dict[str, Any]:
        s = self.engine.state()
        s.update({
            "url": self.url,
            "index": self.index,
            "profile": self.profile.name,
            "num_gpu_blocks": self.engine.num_gpu_blocks,
            "block_size": self.engine.block_size,
            "faults": {
                "crashed": self.crashed,
                "hang": not self._unhang.is_set(),
                "error_rate": self.error_rate,
                "slow": self.engine.slow,
                "metrics_fail": self.metrics_fail,
                "metrics_stale": self.stale_metrics is not None,
            },
            "kv_events": self.kv_events.state() if self.kv_events is not None else None,
        })
        return s

    # -- HTTP: control ---------------------------------------------------------------------

    async def _fault(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            mode = body.get("mode")
            value = body.get("value")
            if mode not in FAULT_MODES:
                raise ValueError(f"'mode' must be one of {', '.join(FAULT_MODES)}")
        except (ValueError, json.JSONDecodeError) as e:
            return error_response(str(e), 400, "BadRequestError")
        if mode in ("crash", "restart"):
            # Answer first: the crash drops this very connection.
            resp = json_response({"ok": True, "mode": mode, "value": value})
            await resp.prepare(request)
            await resp.write_eof()
            self._spawn(self._apply_fault(mode, value))
            return resp
        try:
            await self.set_fault(mode, value)
        except ValueError as e:
            return error_response(str(e), 400, "BadRequestError")
        return json_response({"ok": True, "mode": mode, "value": value})

    async def _apply_fault(self, mode: str, value: float | None) -> None:
        await asyncio.sleep(0)
        await self.set_fault(mode, value)

    async def _reset_prefix_cache(self, request: web.Request) -> web.StreamResponse:
        # vLLM answers 200 either way and logs when blocks in use refuse the reset.
        await self._unhang.wait()
        if self.engine.kv.reset_prefix_cache():
            self.engine.flush_kv_events()
        return web.Response(status=200)

    async def _state(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.state())

    # -- HTTP: vLLM surface ----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        await self._unhang.wait()
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        await self._unhang.wait()
        return json_response({"version": "0.32.0"})

    def _render_metrics(self) -> str:
        return render(self.engine, self.models[0], self.created)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        await self._unhang.wait()
        if self.metrics_fail:
            return web.Response(status=500, text="Internal Server Error")
        text = self.stale_metrics if self.stale_metrics is not None else self._render_metrics()
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._unhang.wait()
        created = int(self.created)
        data = []
        for name in self.models:
            data.append({
                "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": name,
                "parent": None, "max_model_len": self.profile.max_model_len,
                "permission": [{
                    "id": f"modelperm-{self._id_rng.getrandbits(128):032x}", "object": "model_permission",
                    "created": created, "allow_create_engine": False, "allow_sampling": True,
                    "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                    "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False,
                }],
            })
        return json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            if "messages" not in body:
                raise BadRequest("'messages' is required", param="messages")
            try:
                return self.chat.prompt_ids(body["messages"])
            except TemplateError as e:
                raise BadRequest(str(e), param=e.param) from None
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str) and prompt:
            return self.tokenizer.encode_prompt(prompt, self.profile.chat_template)
        if (isinstance(prompt, list) and prompt
                and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)):
            return list(prompt)  # token ids, used as given (vLLM adds nothing to them)
        raise BadRequest("'prompt' must be a non-empty string or list of token ids "
                         "(batches of more than one prompt are not simulated)", param="prompt")

    def _parse(self, body: dict[str, Any], chat: bool) -> tuple[str, list[int], int | None, bool, bool, bool]:
        model = body.get("model")
        if model is None:
            model = self.models[0]
        if model not in self.models:
            raise BadRequest(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not stream:
                raise BadRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
            if not isinstance(opts, dict):
                raise BadRequest("'stream_options' must be an object", param="stream_options")
            include_usage = bool(opts.get("include_usage", False))
        ignore_eos = body.get("ignore_eos", False)  # vLLM's extension to the OpenAI API
        if not isinstance(ignore_eos, bool):
            raise BadRequest("'ignore_eos' must be a boolean", param="ignore_eos")
        n = body.get("n", 1)
        if n != 1:
            raise BadRequest("only n=1 is simulated", param="n")
        max_tokens = _int_field(body, "max_completion_tokens", "max_tokens") if chat else _int_field(body, "max_tokens")
        ids = self._prompt_ids(body, chat)
        err = self.engine.max_prompt_error(len(ids), max_tokens)
        if err:
            raise BadRequest(err, param="max_tokens" if max_tokens else "messages" if chat else "prompt")
        return model, ids, max_tokens, stream, include_usage, ignore_eos

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        await self._unhang.wait()
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return error_response("simulated internal error", 500, "InternalServerError")
        try:
            body = await self._read_body(request)
            model, ids, max_tokens, stream, include_usage, ignore_eos = self._parse(body, chat)
        except BadRequest as e:
            return error_response(str(e), e.status, e.type, e.param)
        prefix = "chatcmpl-" if chat else "cmpl-"
        rid = request.headers.get("X-Request-Id") or f"{self._id_rng.getrandbits(128):032x}"
        # The instance's index ends every response id: whichever gateway stood in front, a
        # benchmark reads from the stream where each request was served (bench: replayed placements).
        req = self.engine.add_request(ids, max_tokens, req_id=f"{prefix}{rid}{SERVED_BY}{self.index}", stream=stream, ignore_eos=ignore_eos)
        try:
            if stream:
                return await self._stream(request, req, model, chat, include_usage)
            while req.status != FINISHED:
                await req.event.wait()
                req.event.clear()
            if req.finish_reason == "abort":
                # The engine restarted under us (a crash drops the connection before this).
                return error_response("request aborted by the engine", 500, "InternalServerError")
            return json_response(self._full_response(req, model, chat))
        finally:
            if req.status != FINISHED:
                self.engine.abort(req)

    def _usage(self, req: Request) -> dict[str, Any]:
        return {
            "prompt_tokens": req.num_prompt,
            "total_tokens": req.num_prompt + req.num_out,
            "completion_tokens": req.num_out,
            "prompt_tokens_details": {"cached_tokens": max(0, req.cached_tokens)},
        }

    def _text(self, ids: list[int]) -> str:
        d = self.tokenizer.decode_one
        return "".join(d(i) for i in ids)

    def _full_response(self, req: Request, model: str, chat: bool) -> dict[str, Any]:
        text = self._text(req.output_ids)
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                            "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
                "logprobs": None, "finish_reason": req.finish_reason, "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason,
                      "stop_reason": None, "prompt_logprobs": None}
            obj = "text_completion"
        return {"id": req.id, "object": obj, "created": created, "model": model, "choices": [choice],
                "service_tier": None, "system_fingerprint": None, "usage": self._usage(req),
                "prompt_logprobs": None, "kv_transfer_params": None}

    def _piece(self, token_id: int) -> str:
        """A token's text, JSON-escaped without quotes (escaping is per character, so pieces
        concatenate into a valid JSON string)."""
        p = self._pieces.get(token_id)
        if p is None:
            p = self._pieces[token_id] = _dumps(self.tokenizer.decode_one(token_id))[1:-1]
        return p

    async def _stream(self, request: web.Request, req: Request, model: str, chat: bool,
                      include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)  # sends the headers now (StreamResponse does not buffer them)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = f'data: {{"id":"{req.id}","object":"{obj}","created":{created},"model":{_dumps(model)},"choices":'
        if chat:
            # vLLM opens a chat stream with the assistant role and empty content.
            await resp.write((head + '[{"index":0,"delta":{"role":"assistant","content":""},'
                              '"logprobs":null,"finish_reason":null}]}\n\n').encode())
        transport = request.transport
        if transport is None:
            raise asyncio.CancelledError  # the client is already gone
        sink = _SSESink(self, transport, head, chat, include_usage)
        req.sink = sink
        sink(req)  # whatever the engine produced while the headers went out
        while req.status != FINISHED:
            await req.event.wait()
            req.event.clear()
        if sink.aborted:
            # Like a dead server: the connection ends inside the response. Returning alone would let
            # aiohttp finish it with a clean last chunk, a stream that looks whole without [DONE].
            transport.close()
        else:
            await resp.write_eof()
        return resp


class _SSESink:
    """Writes a streamed request's SSE chunks into its socket straight from the engine's step.

    Per token this is the hot path of a large fleet: no task wake-up, no aiohttp write call, only
    one chunked-encoding frame per request per step. When the client reads slowly (the socket's
    write buffer is full) tokens accumulate and go out later as one chunk, as vLLM's output
    collector merges them."""

    __slots__ = ("inst", "transport", "head", "chat", "include_usage", "sent", "done", "aborted")

    BACKLOG = 1 << 18

    def __init__(self, inst: SimInstance, transport: asyncio.BaseTransport, head: str, chat: bool,
                 include_usage: bool) -> None:
        self.inst = inst
        self.transport = transport
        self.head = head
        self.chat = chat
        self.include_usage = include_usage
        self.sent = 0
        self.done = False
        self.aborted = False

    def __call__(self, req: Request) -> None:
        if self.done:
            return
        t = self.transport
        finished = req.status == FINISHED
        if t.is_closing() or (finished and req.finish_reason == "abort"):
            # Dropped by a restart or crash: end without a finish chunk, like a dead server.
            self.done = self.aborted = finished or t.is_closing()
            return
        if not finished and t.get_write_buffer_size() > self.BACKLOG:  # type: ignore[attr-defined]
            return
        n = req.num_out
        if n == self.sent and not finished:
            return
        piece = self.inst._piece
        if n == self.sent + 1:
            text = piece(req.tokens[req.num_prompt + self.sent])
        else:
            base = req.num_prompt
            text = "".join([piece(i) for i in req.tokens[base + self.sent : base + n]])
        self.sent = n
        head = self.head
        if self.chat:
            data = f'{head}[{{"index":0,"delta":{{"content":"{text}"}},"logprobs":null,"finish_reason":'
        else:
            data = f'{head}[{{"index":0,"text":"{text}","logprobs":null,"finish_reason":'
        if finished:
            self.done = True
            data += f'"{req.finish_reason}","stop_reason":null}}]}}\n\n'
            if self.include_usage:
                data += f'{head}[],"usage":{_compact(self.inst._usage(req))}}}\n\n'
            data += "data: [DONE]\n\n"
        else:
            data += "null}]}\n\n"
        b = data.encode()
        t.write(b"%x\r\n%b\r\n" % (len(b), b))  # type: ignore[attr-defined]
