"""The design GameRec replaced, as the serving benchmark's peer: FastAPI + uvicorn, one model per
worker process, the user tower and the FAISS search run per request (no batching, no hop).

    GAMEREC_MODEL_TAG=gamerec:latest uvicorn benchmarks.peer_fastapi:app --workers 2

It loads the same stored model and answers `POST /recommend` with the same validation and the
same response as `service.py`, so that the benchmark compares serving designs, not features.
"""

from __future__ import annotations

import os

import faiss
import torch
from fastapi import FastAPI

from training.config import load_service_config
from training.recommender import Recommender
from training.serving import Catalog, RecommendRequest, RecommendResponse, shape_response

SETTINGS = load_service_config()
torch.set_num_threads(SETTINGS.torch_threads)
faiss.omp_set_num_threads(SETTINGS.faiss_threads)
RECOMMENDER = Recommender.from_store(os.environ.get("GAMEREC_MODEL_TAG", SETTINGS.model_tag))
CATALOG = Catalog(RECOMMENDER.artifacts)

app = FastAPI(title="GameRec peer: FastAPI, per-request inference")


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready", "model": RECOMMENDER.artifacts.tag}


@app.post("/recommend")
def recommend(request: RecommendRequest) -> RecommendResponse:
    user = RECOMMENDER.encode([request.record()])[0]
    excluded = CATALOG.positions(request.exclude_games)
    if request.only_genres:
        excluded |= CATALOG.outside_genres(request.only_genres)
    cold_start = len(user.games) == 0
    if cold_start:
        ranked = CATALOG.popular(request.top_k, excluded, request.genres)
    else:
        ranked = RECOMMENDER.top_k([user], request.top_k, [excluded])[0]
    return shape_response(request, user, ranked, cold_start, CATALOG, RECOMMENDER.artifacts.tag)
