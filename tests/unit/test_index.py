"""Fast tests of building, measuring, saving, loading and searching FAISS item indexes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import faiss
import numpy as np
import pytest

from index import (
    build_and_measure,
    build_index,
    index_bytes,
    measure_recall,
    plan_index,
    read_index,
    search,
)
from index.config import IndexType
from index.load import BLAS_FROM_QUERIES
from tests.conftest import config_section
from training.data.io import atomic_write_bytes

ALL_TYPES = [t for t in get_args(IndexType) if t != "auto"]  # auto: build_and_measure decides


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread() -> Iterator[None]:
    """One OpenMP thread: on small, busy machines (CI) faiss threads oversubscribe the CPUs and
    make k-means many times slower."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def random_catalog() -> tuple[np.ndarray, np.ndarray]:
    """5,000 random unit items and 500 independent random unit queries, dim 64."""
    return unit_vectors(5000, 64, seed=0), unit_vectors(500, 64, seed=1)


# --- identity vectors: query e_i must find item i with score 1 ---


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_identity_vectors_find_themselves(index_type: str) -> None:
    eye = np.eye(64, dtype=np.float32)
    index = build_index(eye, config_section("index", type=index_type, nlist=4, nprobe=4))
    if index_type == "ivf":
        assert index.nprobe == index.nlist
    scores, ids = search(index, eye, k=5)
    assert ids[:, 0].tolist() == list(range(64))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)


def test_identity_vectors_ivfpq_ranks_self_first() -> None:
    eye = np.eye(64, dtype=np.float32)
    index = build_index(eye, config_section("index", type="ivfpq", nlist=4, nprobe=4))
    _, ids = search(index, eye, k=5)
    assert ids[:, 0].tolist() == list(range(64))


# --- search: exclusion, clamping, padding ---


def test_exclude_removes_ids_and_keeps_order() -> None:
    items = unit_vectors(50, 16)
    index = build_index(items, config_section("index", type="flat"))
    queries = unit_vectors(3, 16, seed=7)
    full_scores, full_ids = search(index, queries, k=10)
    banned = [set(full_ids[0, [0, 2, 5]].tolist()), set(), {int(full_ids[2, 9]), 10_000}]
    scores, ids = search(index, queries, k=5, exclude=banned)
    for row, excluded in enumerate(banned):
        allowed = [i for i in full_ids[row].tolist() if i not in excluded][:5]
        assert ids[row].tolist() == allowed
        assert not excluded & set(ids[row].tolist())
        assert np.all(np.diff(scores[row]) <= 0)
    np.testing.assert_array_equal(ids[1], full_ids[1, :5])
    np.testing.assert_allclose(scores[1], full_scores[1, :5])


def test_k_larger_than_catalog_is_clamped() -> None:
    items = unit_vectors(7, 8)
    scores, ids = search(build_index(items, config_section("index", type="flat")), items, k=100)
    assert scores.shape == ids.shape == (7, 7)
    assert sorted(ids[0].tolist()) == list(range(7))
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_padding_when_exclusions_leave_fewer_than_k() -> None:
    items = unit_vectors(5, 8)
    index = build_index(items, config_section("index", type="flat"))
    scores, ids = search(index, items[:2], k=5, exclude=[{0, 1, 2}, set()])
    assert sorted(ids[0, :2].tolist()) == [3, 4]
    assert ids[0, 2:].tolist() == [-1, -1, -1]
    assert np.all(np.isneginf(scores[0, 2:]))
    assert sorted(ids[1].tolist()) == list(range(5))


def test_search_accepts_float64_and_non_contiguous_queries() -> None:
    items = unit_vectors(20, 8)
    index = build_index(items, config_section("index", type="flat"))
    queries = np.asfortranarray(items[:4].astype(np.float64))
    _, ids = search(index, queries, k=1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3]


def test_batched_search_equals_one_query_at_a_time(
    random_catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    """A batch takes FAISS's BLAS kernel and a single query its SIMD kernel (index/load.py):
    both are exact, so the same top 10 comes back, with scores equal up to rounding."""
    items, queries = random_catalog
    index = build_index(items, config_section("index", type="flat"))
    batch = queries[:64]
    assert len(batch) >= BLAS_FROM_QUERIES
    scores, ids = search(index, batch, k=10)
    for row, query in enumerate(batch):
        one_scores, one_ids = search(index, query[None], k=10)
        np.testing.assert_array_equal(one_ids[0], ids[row])
        np.testing.assert_allclose(one_scores[0], scores[row], rtol=1e-5)
    np.testing.assert_allclose(scores[:, 0], np.max(batch @ items.T, axis=1), rtol=1e-5)


def test_search_rejects_bad_arguments() -> None:
    items = unit_vectors(20, 8)
    index = build_index(items, config_section("index", type="flat"))
    with pytest.raises(ValueError, match="dim"):
        search(index, unit_vectors(2, 4), k=3)
    with pytest.raises(ValueError, match="exclude"):
        search(index, items[:2], k=3, exclude=[set()])
    with pytest.raises(ValueError, match="k must be"):
        search(index, items[:2], k=0)


# --- recall is measured, not assumed ---


def test_recall_on_random_vectors(random_catalog: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = random_catalog
    recall = {
        t: measure_recall(build_index(items, config_section("index", type=t)), items, queries)
        for t in ALL_TYPES
    }
    assert recall["flat"] == 1.0
    assert recall["hnsw"] >= 0.9
    assert 0.5 < recall["ivf"] <= 1.0
    assert 0.2 < recall["ivfpq"] <= 1.0
    # Codes re-ranked exactly lose next to nothing against IVF over the vectors, same lists.
    assert recall["ivfsq"] >= recall["ivf"] - 0.02
    assert recall["ivf_fastscan"] >= recall["ivf"] - 0.02


def test_recall_counts_misses() -> None:
    items = unit_vectors(100, 8)
    wrong = faiss.IndexFlatIP(8)
    wrong.add(-items)  # ranks every query's true neighbours last
    assert measure_recall(wrong, items, items[:10], k=5) == 0.0
    assert measure_recall(wrong, items, items[:10], k=1000) == 1.0  # k clamps to 100 items


def test_build_and_measure_reports_effective_params(
    random_catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = random_catalog
    cfg = config_section("index", type="ivf", nlist=0, nprobe=8)
    index, report = build_and_measure(items, cfg, queries, seed=3)
    assert report.type == "ivf" and (report.n_items, report.dim) == (5000, 64)
    assert report.params == {"nlist": 5000 // 39, "nprobe": 8}
    assert index.nlist == 5000 // 39 and index.nprobe == 8
    assert report.recall_at_10 == measure_recall(index, items, queries)
    assert report.build_seconds > 0


def test_build_and_measure_samples_queries_when_none_given() -> None:
    items = unit_vectors(300, 16)
    _, report = build_and_measure(items, config_section("index", type="hnsw", recall_queries=50))
    assert 0.9 <= report.recall_at_10 <= 1.0


def test_ivf_build_is_deterministic_for_a_seed(
    random_catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    items, _ = random_catalog
    cfg = config_section("index", type="ivfpq", nlist=16, pq_m=8, pq_bits=5)
    first = faiss.serialize_index(build_index(items[:2000], cfg, seed=5))
    second = faiss.serialize_index(build_index(items[:2000], cfg, seed=5))
    np.testing.assert_array_equal(first, second)


def test_pq_m_must_divide_dim() -> None:
    with pytest.raises(ValueError, match="pq_m=12 must divide"):
        build_index(unit_vectors(100, 64), config_section("index", type="ivfpq", pq_m=12))


def test_plan_clamps_to_catalog_size() -> None:
    plan = plan_index(
        100, 64, config_section("index", type="ivfpq", nlist=50, nprobe=16, pq_bits=8)
    )
    assert plan == {"type": "ivfpq", "nlist": 2, "nprobe": 2, "pq_m": 16, "pq_bits": 6}
    assert plan_index(1_000_000, 64, config_section("index", type="ivf"))["nlist"] == 2000


# --- tiny catalogs ---


@pytest.mark.parametrize("n_items", [1, 2, 10])
@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_tiny_catalogs_build_and_search(index_type: str, n_items: int) -> None:
    items = unit_vectors(n_items, 64)
    index, report = build_and_measure(items, config_section("index", type=index_type), items)
    assert index.ntotal == n_items
    assert 0.0 <= report.recall_at_10 <= 1.0
    scores, ids = search(index, items, k=10, exclude=[{0}] * n_items)
    assert ids.shape == (n_items, n_items)
    assert 0 not in ids[:, : n_items - 1]
    assert ids[:, -1].tolist() == [-1] * n_items


def test_empty_catalog_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_index(np.zeros((0, 8), dtype=np.float32), config_section("index"))


# --- saving and loading ---


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_write_read_round_trip(
    tmp_path: Path, index_type: str, random_catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    items, queries = random_catalog
    index = build_index(items[:2000], config_section("index", type=index_type, pq_bits=5))
    path = tmp_path / "nested" / f"{index_type}.faiss"
    path.parent.mkdir()
    atomic_write_bytes(path, index_bytes(index))
    loaded = read_index(path)
    for before, after in zip(search(index, queries, 10), search(loaded, queries, 10), strict=True):
        np.testing.assert_array_equal(before, after)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_read_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.faiss"
    with pytest.raises(ValueError, match="absent.faiss"):
        read_index(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_read_corrupt_file_names_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.faiss"
    ivf = build_index(unit_vectors(100, 16), config_section("index", type="ivf"))
    atomic_write_bytes(path, index_bytes(ivf))
    data = path.read_bytes()
    path.write_bytes(b"not an index at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match="broken.faiss"):
        read_index(path)


def test_failed_write_leaves_existing_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "items.faiss"
    flat = config_section("index", type="flat")
    atomic_write_bytes(path, index_bytes(build_index(unit_vectors(50, 16), flat)))
    original = path.read_bytes()

    def crash_before_sync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", crash_before_sync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, index_bytes(build_index(unit_vectors(80, 16), flat)))
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["items.faiss"]
