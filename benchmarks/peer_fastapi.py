"""The design GameRec replaced, as the serving benchmark's peer: FastAPI + uvicorn, one model per
worker process, the user tower and the FAISS search run per request (no batching, no hop).

    GAMEREC_MODEL_TAG=gamerec:latest python -m benchmarks.peer_fastapi --port 3001 --workers 2

It loads the same stored model and answers `POST /recommend` with the same validation (the
service's request guard: body size, JSON content type, repeated keys; then the same pydantic
model), the same request path as `service.py` (`serving.orchestration.recommend`) and, when the
service writes one (`access_log`), an access log line per request, so that the benchmark
compares serving designs, not features: only where the user tower and FAISS run differs.

Why a launcher instead of `uvicorn --workers N`: uvicorn's workers get the listening socket
through `socket.fromfd`, whose protocol number is 0, and asyncio only sets TCP_NODELAY on
sockets that say IPPROTO_TCP. Nagle's algorithm then meets the client's delayed ACK and every
keep-alive response waits about 40 ms (measured: p50 48 ms at one client with 2 workers, 7 ms
with 1). Here the parent binds an IPPROTO_TCP socket and forks the workers, which inherit it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

import uvicorn
from fastapi import FastAPI

from serving.guard import RequestGuard
from serving.orchestration import ServedModel, in_this_process, load_recommender, recommend
from serving.recommender import ModelVersions
from serving.schemas import RecommendRequest, RecommendResponse
from serving.settings import service_settings

SETTINGS = service_settings()
SERVED = ServedModel.of(load_recommender(SETTINGS.model_tag, SETTINGS))
# The one version this process serves, whatever tag a query names.
VERSIONS = ModelVersions(lambda _: SERVED.recommender, keep=SETTINGS.model_versions_kept)

app = FastAPI(title="GameRec peer: FastAPI, per-request inference")
app.add_middleware(
    RequestGuard,
    max_bytes=SETTINGS.limits.max_body_bytes,
    admin_token=SETTINGS.admin_token.get_secret_value(),
    body_timeout_s=SETTINGS.connections.body_timeout_s,
)


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready", "model": SERVED.tag}


# The user tower and FAISS in this process, for this request alone (no batching, no hop), in a
# worker thread as FastAPI runs a blocking handler (an inline budget of 0: never on the loop).
RANK_HERE = in_this_process(VERSIONS, SETTINGS.faiss_threads, inline_budget_ms=0)


@app.post("/recommend")
async def recommend_one(request: RecommendRequest) -> RecommendResponse:
    return (await recommend(SERVED, [request], RANK_HERE))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description="the FastAPI peer, N forked uvicorn workers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve this module's app on the inherited socket
            # An access log line per request when the service writes one (`access_log`).
            config = uvicorn.Config(app, access_log=SETTINGS.access_log, log_level="info")
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(c, signal.SIGTERM) for c in children])
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
