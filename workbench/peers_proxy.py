"""A streaming reverse proxy on 127.0.0.1 over several OpenAI-compatible servers, each request
to the one with the fewest in flight (ties rotate): how several llama-cpp-python instances,
which have no parallel slots (see workbench.peers), are served on one URL to the HTTP driver.

    python -m workbench.peers_proxy --port 9000 http://127.0.0.1:9001 http://127.0.0.1:9002

GET requests (/v1/models, the readiness probe) go to the first server.
"""

from __future__ import annotations

import argparse
import itertools

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED = ("content-type", "authorization", "accept")


def make_app(upstreams: list[str]) -> Starlette:
    upstreams = [u.rstrip("/") for u in upstreams]
    in_flight = dict.fromkeys(upstreams, 0)
    turn = itertools.count()
    # one pooled client, no timeout: a request queued in an upstream may wait long for its
    # first byte, and the driver has its own timeout
    client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None,
                                                                 max_keepalive_connections=None))

    def pick() -> str:
        k = next(turn) % len(upstreams)
        return min(upstreams[k:] + upstreams[:k], key=in_flight.__getitem__)

    async def forward(request):
        up = pick() if request.method == "POST" else upstreams[0]
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        in_flight[up] += 1
        try:
            resp = await client.send(client.build_request(
                request.method, up + request.url.path, params=request.query_params,
                content=await request.body(), headers=headers), stream=True)
        except httpx.HTTPError as e:
            in_flight[up] -= 1
            return Response(f"upstream {up}: {type(e).__name__}: {e}", status_code=502)

        async def body():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:  # also when the client goes away mid-stream
                await resp.aclose()
                in_flight[up] -= 1

        return StreamingResponse(body(), status_code=resp.status_code, media_type=resp.headers.get(
            "content-type", "application/octet-stream"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("upstreams", nargs="+", help="base URLs of the servers")
    args = ap.parse_args(argv)
    uvicorn.run(make_app(args.upstreams), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
