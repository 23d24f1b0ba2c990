"""Resumable embedding runs: finished chunks are kept on disk, so a crash loses no finished work.

``kv-embed embed --output vectors.npy`` writes each chunk of texts, as soon as it is embedded, to
``vectors.npy.partial/chunk-000000.npy``, ... (each written to a temporary file, then renamed, so a
chunk file is whole or absent). ``manifest.json`` there records what the run is (the texts'
hash and count, the options, the layers): ``--resume`` continues only the same run and embeds the
missing chunks. When every chunk is done they are joined into the output (again via a temporary
file and a rename) and the folder is removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cache import texts_digest, write_atomically
from ..core.config import check_positive_int

MANIFEST = "manifest.json"


class CheckpointError(Exception):
    """The run cannot start or resume as asked (the message says why and what to do)."""


class ChunkedRun:
    """The chunks of one embedding run over ``texts``, kept in ``<output>.partial``.

    Args:
        output: the final ``.npy`` file.
        texts: every text of the run, in order.
        chunk_size: texts per chunk file.
        identity: what else makes the run what it is (model, options, layers...), JSON-serialisable;
            a resumed run must match it.
        resume: continue the run found in the folder; without it, a folder left by an earlier
            run is an error (its work would otherwise be silently discarded or mixed).
        dtype: the vectors' dtype, in the chunks and the output (``float32``; ``int8`` / ``uint8``
            and so on for quantized vectors).
    """

    def __init__(
        self,
        output: Path,
        texts: Sequence[str],
        chunk_size: int,
        identity: dict[str, Any],
        resume: bool,
        dtype: np.dtype | type[np.generic] = np.float32,
    ) -> None:
        check_positive_int("chunk size", chunk_size)
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.texts = texts
        self.chunk_size = chunk_size
        self.dtype = np.dtype(dtype)
        self.manifest = {
            "texts": len(texts),
            "sha256": texts_digest(texts),
            "chunk_size": chunk_size,
            **identity,
        }
        if self.folder.exists():
            if not resume:
                raise CheckpointError(
                    f"{self.folder} holds an earlier run's finished chunks: add --resume to continue it, "
                    "or delete that folder to start over"
                )
            self._check_manifest()
        else:
            self.folder.mkdir()
            write_atomically(self.folder / MANIFEST, lambda f: f.write(json.dumps(self.manifest).encode()))

    def _check_manifest(self) -> None:
        try:
            found = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot resume: {self.folder / MANIFEST} is unreadable ({error})") from None
        differ = sorted(k for k in set(found) | set(self.manifest) if found.get(k) != self.manifest.get(k))
        if differ:
            raise CheckpointError(
                f"cannot resume: the run in {self.folder} differs in {', '.join(differ)} "
                "(other texts or options); delete that folder to start over"
            )

    @property
    def chunks(self) -> int:
        return -(-len(self.texts) // self.chunk_size)

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.npy"

    def _done(self, index: int) -> bool:
        path = self._path(index)
        if not path.exists():
            return False
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False).shape[0] == len(self.texts_of(index))
        except (OSError, ValueError):
            return False  # a damaged file: embedded again

    def pending(self) -> list[int]:
        """Indices of the chunks still to embed."""
        return [i for i in range(self.chunks) if not self._done(i)]

    def texts_of(self, index: int) -> Sequence[str]:
        return self.texts[index * self.chunk_size : (index + 1) * self.chunk_size]

    def save(self, index: int, vectors: np.ndarray) -> None:
        """Keep one finished chunk (whole or not at all)."""
        write_atomically(self._path(index), lambda f: np.save(f, np.asarray(vectors, dtype=self.dtype)))

    def finish(self) -> tuple[int, int]:
        """Join the chunks into the output file (streamed: one chunk in memory at a time), remove
        the folder; returns the output's shape."""
        first = np.load(self._path(0), mmap_mode="r", allow_pickle=False)
        shape = (len(self.texts), first.shape[1])

        def join(f) -> None:
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
            np.lib.format.write_array_header_1_0(f, {**header, "shape": shape})
            for index in range(self.chunks):
                f.write(np.ascontiguousarray(np.load(self._path(index), allow_pickle=False), self.dtype).tobytes())

        write_atomically(self.output, join)
        shutil.rmtree(self.folder)
        return shape
