"""An on-disk embedding cache, so re-running an evaluation embeds nothing twice.

One SQLite file per namespace (model + weights + method options + prompt type), one row per text
(keyed by its SHA-256), vectors stored as raw float32 bytes: nothing is ever unpickled, and SQLite's
transactions keep the file consistent if a run is killed or two runs share it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """Vectors of texts under one namespace.

    Args:
        directory: where the cache files live (created if missing).
        namespace: JSON-serialisable description of everything that determines the vectors;
            its hash names the file, and it is stored beside it for people to read.
    """

    def __init__(self, directory: str | Path, namespace: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        key = _digest(namespace)[:32]
        self.path = self.directory / f"{key}.sqlite"
        description = self.directory / f"{key}.json"
        if not description.exists():
            temporary = description.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(namespace, indent=2, sort_keys=True, default=str))
            temporary.replace(description)
        self._connection = sqlite3.connect(self.path, timeout=60)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("CREATE TABLE IF NOT EXISTS vectors (text_sha256 TEXT PRIMARY KEY, vector BLOB)")
        # Sparse lexical vectors from the same passes: token ids (int64) and weights (float32).
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS sparse (text_sha256 TEXT PRIMARY KEY, ids BLOB, weights BLOB)"
        )

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of those ``texts`` that have one."""
        keys = {_text_key(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        items = list(keys)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            rows = self._connection.execute(
                f"SELECT text_sha256, vector FROM vectors WHERE text_sha256 IN ({','.join('?' * len(chunk))})", chunk
            )
            for key, blob in rows:
                found[keys[key]] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per text (one transaction)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = [(_text_key(t), v.tobytes()) for t, v in zip(texts, vectors, strict=True)]
        with self._connection:
            self._connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)

    def get_sparse(self, texts: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Cached sparse vectors ``(ids, weights)`` of those ``texts`` that have one."""
        keys = {_text_key(t): t for t in texts}
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        items = list(keys)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            rows = self._connection.execute(
                f"SELECT text_sha256, ids, weights FROM sparse WHERE text_sha256 IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, ids, weights in rows:
                found[keys[key]] = (np.frombuffer(ids, dtype=np.int64), np.frombuffer(weights, dtype=np.float32))
        return found

    def put_sparse(self, texts: Sequence[str], rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Store one sparse vector per text (one transaction)."""
        values = [
            (_text_key(t), np.asarray(i, np.int64).tobytes(), np.asarray(w, np.float32).tobytes())
            for t, (i, w) in zip(texts, rows, strict=True)
        ]
        with self._connection:
            self._connection.executemany("INSERT OR REPLACE INTO sparse VALUES (?, ?, ?)", values)

    def close(self) -> None:
        self._connection.close()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def cached_encode(
    encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], cache: EmbeddingCache | None
) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` in order, embedding each distinct uncached text once.

    Returns the vectors and how many texts were actually embedded.
    """
    unique = list(dict.fromkeys(texts))
    known = cache.get(unique) if cache is not None else {}
    missing = [t for t in unique if t not in known]
    if missing:
        fresh = np.asarray(encode(missing), dtype=np.float32)
        if cache is not None:
            cache.put(missing, fresh)
        known.update(zip(missing, fresh, strict=True))
    return np.stack([known[t] for t in texts]), len(missing)


def cached_encode_sparse(
    encode: Callable[[list[str]], tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]],
    texts: Sequence[str],
    cache: EmbeddingCache | None,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], int]:
    """[`cached_encode`][kv_embeddings_integrations.evaluation.cache.cached_encode] for dense and
    sparse vectors together: a text missing either is embedded again (one pass gives both). Returns
    the vectors, the ``(ids, weights)`` rows and how many texts were embedded."""
    unique = list(dict.fromkeys(texts))
    dense = cache.get(unique) if cache is not None else {}
    sparse = cache.get_sparse(unique) if cache is not None else {}
    missing = [t for t in unique if t not in dense or t not in sparse]
    if missing:
        vectors, rows = encode(missing)
        vectors = np.asarray(vectors, dtype=np.float32)
        if cache is not None:
            cache.put(missing, vectors)
            cache.put_sparse(missing, rows)
        dense.update(zip(missing, vectors, strict=True))
        sparse.update(zip(missing, rows, strict=True))
    return np.stack([dense[t] for t in texts]), [sparse[t] for t in texts], len(missing)
