"""A backend that answers at once: fixed vLLM-shaped chat JSON, or a short fixed SSE stream.

A raw asyncio protocol on uvloop so that it costs as little as possible of the two cores the proxy
and the load generator also use; what is left of a request's latency is the proxy's and the client's.
`python -m bench.overhead.instant_backend --port P`
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httptools
import uvloop

MODEL = "bench-model"
CHAT = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?",
                                         "refusal": None, "tool_calls": []},
                 "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
    "usage": {"prompt_tokens": 18, "total_tokens": 28, "completion_tokens": 10,
              "prompt_tokens_details": None},
}, separators=(",", ":")).encode()
_EVENT = ('data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"'
          + MODEL + '","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\n\n')
STREAM = "".join([
    _EVENT % ('{"role":"assistant","content":""}', "null"),
    *(_EVENT % (json.dumps({"content": word}), "null") for word in ("Hello", "!", " How", " can", " I", " help")),
    _EVENT % ('{"content":"?"}', '"stop"'),
]).encode()
USAGE = ('data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"' + MODEL
         + '","choices":[],"usage":{"prompt_tokens":18,"total_tokens":26,"completion_tokens":8}}\n\n').encode()
DONE = b"data: [DONE]\n\n"
METRICS = (b"vllm:num_requests_running{model_name=\"bench-model\"} 0\n"
           b"vllm:num_requests_waiting{model_name=\"bench-model\"} 0\n"
           b"vllm:kv_cache_usage_perc{model_name=\"bench-model\"} 0\n")
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]}).encode()


def _fixed(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %b\r\ncontent-length: %d\r\n\r\n%b" % (content_type, len(body), body)


def _chunked(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))


ANSWERS = {
    (b"GET", b"/health"): _fixed(b"{}"),
    (b"GET", b"/metrics"): _fixed(METRICS, b"text/plain"),
    (b"GET", b"/v1/models"): _fixed(MODELS),
}
CHAT_ANSWER = _fixed(CHAT)
STREAM_ANSWER = _chunked(STREAM + DONE)
STREAM_USAGE_ANSWER = _chunked(STREAM + USAGE + DONE)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Instant(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        if method == b"POST":
            if b'"stream":true' in self.body or b'"stream": true' in self.body:
                answer = STREAM_USAGE_ANSWER if b'"include_usage":true' in self.body else STREAM_ANSWER
            else:
                answer = CHAT_ANSWER
        else:
            answer = ANSWERS.get((method, self.url), NOT_FOUND)
        self.transport.write(answer)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Instant, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.instant_backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
