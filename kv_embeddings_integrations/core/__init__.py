"""The core: one embedder that loads a frozen causal LM, prompts the text, re-routes key/value states
inside selected layers and pools one vector per text. No framework is imported below this package;
every front end (integrations, parallel, serving, stores, evaluation, cli) builds on it.
"""
