"""The mechanisms of KV-Embedding (arXiv 2601.01046), each in its own module.

- :mod:`.rerouting`: the final token's key/value states as a prefix inside selected layers' attention.
- :mod:`.token_prepending`: Token Prepending (Fu et al. 2024), the earlier training-free method, as a baseline.
- :mod:`.layer_selection`: the layers to re-route, chosen by intrinsic dimension (TwoNN).
- :mod:`.postprocessing`: label-free centering (and whitening) fitted on calibration texts.
"""
