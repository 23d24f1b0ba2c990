"""The built-in calibration texts: what layer selection and post-processing are fitted on by default.

1000 short texts of three kinds (image captions, banking questions, Python documentation), so
the fits see neither one domain nor any evaluation set; sources in ``data/calibration/README.md``.
"""

from __future__ import annotations

from importlib import resources

CALIBRATION_FILES = ("image_captions.txt", "banking_queries.txt", "python_reference.txt")


def builtin_calibration_texts() -> list[str]:
    """The 1000 texts shipped with the package (see ``data/calibration/README.md`` for sources)."""
    folder = resources.files("kv_embeddings_integrations") / "data" / "calibration"
    texts: list[str] = []
    for name in CALIBRATION_FILES:
        texts += [line for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts
