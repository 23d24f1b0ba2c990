"""Prompt templates and the embedding methods built on them.

A template is a plain string with one or more ``{text}`` placeholders, filled by substitution
(not ``str.format``), so texts and templates may contain braces.
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDER = "{text}"
PROMPT_TYPES = ("document", "query")
POOLINGS = ("mean_last", "mean", "last")

# method.md, step 1: the compression prompts (exact punctuation of the paper unconfirmed).
DOCUMENT_PROMPT = '"Context: {text}" Compress the Context in one word:'
QUERY_PROMPT = '"Query: {text}" Compress the Query in one word:'
# Jiang et al. 2023 (PromptEOL).
PROMPTEOL_PROMPT = 'This sentence : "{text}" means in one word:"'
# Springer et al. 2024 (Echo embeddings): only the second copy is pooled.
ECHO_PROMPT = "Rewrite the sentence: {text}, rewritten sentence: {text}"
RAW = PLACEHOLDER


@dataclass(frozen=True)
class MethodSpec:
    """How a method prompts and pools; every method runs through the same batching and pooling."""

    templates: dict[str, str]
    reroute: bool
    pooling: str
    mean_scope: str = "all"


METHODS: dict[str, MethodSpec] = {
    "kv": MethodSpec({"document": DOCUMENT_PROMPT, "query": QUERY_PROMPT}, reroute=True, pooling="mean_last"),
    "prompt": MethodSpec({"document": DOCUMENT_PROMPT, "query": QUERY_PROMPT}, reroute=False, pooling="mean_last"),
    "prompteol": MethodSpec({"document": PROMPTEOL_PROMPT, "query": PROMPTEOL_PROMPT}, reroute=False, pooling="last"),
    "echo": MethodSpec(
        {"document": ECHO_PROMPT, "query": ECHO_PROMPT}, reroute=False, pooling="mean", mean_scope="text"
    ),
    "mean": MethodSpec({"document": RAW, "query": RAW}, reroute=False, pooling="mean"),
    "last": MethodSpec({"document": RAW, "query": RAW}, reroute=False, pooling="last"),
}


def check_template(template: object) -> str:
    if not isinstance(template, str) or PLACEHOLDER not in template:
        raise ValueError(f"a prompt template must be a string containing {PLACEHOLDER!r}, got {template!r}")
    return template


def render(template: str, text: str) -> tuple[str, list[tuple[int, int]]]:
    """Fill every ``{text}`` in ``template``; return the string and the character span of each copy."""
    pieces = template.split(PLACEHOLDER)
    out: list[str] = [pieces[0]]
    spans: list[tuple[int, int]] = []
    pos = len(pieces[0])
    for piece in pieces[1:]:
        spans.append((pos, pos + len(text)))
        out.append(text)
        out.append(piece)
        pos += len(text) + len(piece)
    return "".join(out), spans
