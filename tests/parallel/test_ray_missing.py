"""Without the ``ray`` extra: Ray Data's entry point names the install command, in the format of
every other extra."""

from __future__ import annotations

import pytest

from kv_embeddings_integrations.core import extras


def test_ray_missing_gives_the_same_format(monkeypatch):
    import sys

    from kv_embeddings_integrations.parallel import ray_data

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(extras.MissingExtraError, match=r"needs ray:  pip install 'kv-embeddings-integrations\[ray\]'"):
        ray_data.require_ray()
