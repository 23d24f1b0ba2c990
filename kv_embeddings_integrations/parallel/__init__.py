"""Front ends that spread one job over many replicas: a data-parallel process pool
(:mod:`.pool`), Ray Data (:mod:`.ray_data`, the ``ray`` extra) and resumable chunked runs
(:mod:`.checkpoint`). Each builds on the core's public API only.
"""
