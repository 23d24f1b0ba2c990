"""Prompt families (templates and the pooling their papers use) and the methods built on them.

A template is a plain string with one or more ``{text}`` placeholders, filled by substitution
(not ``str.format``), so texts and templates may contain braces.

A *family* is a prompt and how its paper reads an embedding out of it; a *method* is a named
preset: a family, whether re-routing is on, and optionally Token Prepending. Re-routing and Token
Prepending compose with any family through
[`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] (``prompt_family``,
``reroute``, ``token_prepending``).
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDER = "{text}"
PROMPT_TYPES = ("document", "query")
# Other providers' names for the two prompt types, so a client written for one of them works
# unchanged. Symmetric tasks (classification, clustering, matching) take the document prompt, as a
# symmetric task does here.
INPUT_TYPES: dict[str, str] = {
    "document": "document",
    "query": "query",
    # Cohere (embed v3+, ``input_type``)
    "search_document": "document",
    "search_query": "query",
    "classification": "document",
    "clustering": "document",
    # NVIDIA NIM / NeMo Retriever (``input_type``)
    "passage": "document",
    # Jina embeddings v3 (``task``)
    "retrieval.passage": "document",
    "retrieval.query": "query",
    "text-matching": "document",
    "separation": "document",
}


# method.md, step 1: the compression prompts (exact punctuation of the paper unconfirmed).
DOCUMENT_PROMPT = '"Context: {text}" Compress the Context in one word:'
QUERY_PROMPT = '"Query: {text}" Compress the Query in one word:'
# Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models" (PromptEOL).
PROMPTEOL_PROMPT = 'This sentence : "{text}" means in one word:"'
# Zhang et al. 2024, "Simple Techniques for Enhancing Sentence Embeddings in Generative Language
# Models" (github.com/ZBWpro/PretCoTandKE, settings.py): Pretended Chain-of-Thought and Knowledge
# Enhancement, spaces before the commas as there.
PCOT_PROMPT = 'After thinking step by step , this sentence : "{text}" means in one word:"'
KE_PROMPT = (
    "The essence of a sentence is often captured by its main subjects and actions, while descriptive terms "
    "provide additional but less central details. With this in mind , this sentence : "
    '"{text}" means in one word:"'
)
# Lei et al. 2024, "Meta-Task Prompting Elicits Embeddings from Large Language Models" (MetaEOL,
# github.com/Yibin-Lei/MetaEOL, evaluation.py): eight meta-task prompts, last-token states averaged.
_META = "In this task, you're "
METAEOL_PROMPTS = (
    _META + "presented with a text excerpt. Your task is to categorize the excerpt into a broad category such "
    "as 'Education', 'Technology', 'Health', 'Business', 'Environment', 'Politics', or 'Culture'. These "
    "categories help in organizing content for better accessibility and targeting. For this task, this "
    'sentence : "{text}" should be classified under one general category in one word:"',
    _META + "given a statement and you need to determine whether it's presenting an 'Opinion' or a 'Fact'. "
    "This distinction is vital for information verification, educational purposes, and content analysis. "
    'For this task, this sentence : "{text}" discriminates between opinion and fact in one word:"',
    _META + "given a review from an online platform. Your task is to generate a rating for the product based "
    "on the review on a scale of 1-5, where 1 means 'extremely negative' and 5 means 'extremely positive'. "
    'For this task, this sentence : "{text}" reflects the sentiment in one word:"',
    _META + "reading a personal diary entry. Your task is to identify the predominant emotion expressed, such "
    'as joy, sadness, anger, fear, or love. For this task, this sentence : "{text}" conveys the emotion in '
    'one word:"',
    _META + "presented with two sentences. Your task is to assess whether the sentences convey the same "
    "meaning. Use 'identical', 'similar', 'different', or 'unrelated' to describe the relationship. To "
    'enhance the performance of this task, this sentence : "{text}" means in one word:"',
    _META + "given a sentence and a phrase. Your task is to determine if the phrase can be a contextual "
    "synonym within the given sentence. Options include 'yes', 'no', or 'partially'. To enhance the "
    'performance of this task, this sentence : "{text}" means in one word:"',
    _META + "examining a news article. Your task is to extract the most critical fact from the article. For "
    'this task, this sentence : "{text}" encapsulates the key fact in one word:"',
    _META + "reviewing a scientific abstract. Your task is to identify the main entities (e.g., proteins, "
    "diseases) and their relations (e.g., causes, treats). For this task, this sentence : "
    '"{text}" highlights the primary entity or relation in one word:"',
)
# Springer et al. 2024 (Echo embeddings): only the second copy is pooled.
ECHO_PROMPT = "Rewrite the sentence: {text}, rewritten sentence: {text}"
RAW = PLACEHOLDER


@dataclass(frozen=True)
class PromptFamily:
    """A prompt and how its paper reads the embedding: templates per prompt type, pooling, layer.

    Attributes:
        templates: the templates for each prompt type; more than one (MetaEOL) means each text
            is embedded once per template and the pooled vectors are averaged.
        pooling: ``"mean_last"``, ``"mean"`` or ``"last"``.
        mean_scope: tokens mean pooling averages: ``"all"`` (prompt included) or ``"text"``.
        output_layer: the decoder layer whose output is pooled, ``-1`` the last (after the final
            norm, the model's ``last_hidden_state``); ``-2`` the one before it (no final norm), ...
    """

    templates: dict[str, tuple[str, ...]]
    pooling: str
    mean_scope: str = "all"
    output_layer: int = -1


def _same(*templates: str) -> dict[str, tuple[str, ...]]:
    return {"document": templates, "query": templates}


FAMILIES: dict[str, PromptFamily] = {
    "compress": PromptFamily({"document": (DOCUMENT_PROMPT,), "query": (QUERY_PROMPT,)}, "mean_last"),
    "prompteol": PromptFamily(_same(PROMPTEOL_PROMPT), "last"),
    # Both pool the second-to-last layer's last token in their code (hidden_states[-2]).
    "pcot": PromptFamily(_same(PCOT_PROMPT), "last", output_layer=-2),
    "ke": PromptFamily(_same(KE_PROMPT), "last", output_layer=-2),
    "metaeol": PromptFamily(_same(*METAEOL_PROMPTS), "last"),
    "echo": PromptFamily(_same(ECHO_PROMPT), "mean", mean_scope="text"),
    "none": PromptFamily(_same(RAW), "last"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A named preset: a prompt family, re-routing on or off, Token Prepending on or off, and the
    pooling when it differs from the family's."""

    family: str
    reroute: bool
    pooling: str | None = None
    token_prepending: bool = False

    @property
    def prompt_family(self) -> PromptFamily:
        return FAMILIES[self.family]

    @property
    def templates(self) -> dict[str, str]:
        """The first template of each prompt type (the one layer selection measures)."""
        return {kind: templates[0] for kind, templates in self.prompt_family.templates.items()}


METHODS: dict[str, MethodSpec] = {
    # KV-Embedding as the paper describes it (method.md).
    "kv": MethodSpec("compress", reroute=True),
    "prompt": MethodSpec("compress", reroute=False),
    "prompteol": MethodSpec("prompteol", reroute=False),
    "pcot": MethodSpec("pcot", reroute=False),
    "ke": MethodSpec("ke", reroute=False),
    "metaeol": MethodSpec("metaeol", reroute=False),
    "echo": MethodSpec("echo", reroute=False),
    "mean": MethodSpec("none", reroute=False, pooling="mean"),
    "last": MethodSpec("none", reroute=False, pooling="last"),
    # Token Prepending (Fu et al. 2024) on PromptEOL, as its paper's main setting.
    "tp": MethodSpec("prompteol", reroute=False, token_prepending=True),
    # KV re-routing on the other families.
    "kv_prompteol": MethodSpec("prompteol", reroute=True),
    "kv_pcot": MethodSpec("pcot", reroute=True),
    "kv_ke": MethodSpec("ke", reroute=True),
    "kv_metaeol": MethodSpec("metaeol", reroute=True),
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


def prompt_names(prompts: dict[str, str] | None) -> tuple[str, ...]:
    """Every prompt name a configuration with these ``prompts`` takes: its own names (other than the
    two sides), then the two sides and the providers' names for them (``INPUT_TYPES``)."""
    return tuple(name for name in (prompts or {}) if name not in PROMPT_TYPES) + tuple(INPUT_TYPES)


def check_prompt_name(name: object, prompts: dict[str, str] | None, field: str = "prompt name") -> str:
    """``name`` if a configuration with these ``prompts`` knows it, else a ``ValueError`` listing the known ones."""
    known = prompt_names(prompts)
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown {field} {name!r}; known: {', '.join(repr(k) for k in known)}")
    return name


def requested_prompt(prompt_type: str, prompt_name: str | None) -> str:
    """The prompt name a call asks for: ``prompt_name`` (sentence-transformers' spelling) when
    given, else ``prompt_type``; both given and different is a ``ValueError``."""
    if prompt_name is None:
        return prompt_type
    if prompt_type not in ("document", prompt_name):
        raise ValueError(
            f"give prompt_type or prompt_name, not both (prompt_type={prompt_type!r}, prompt_name={prompt_name!r})"
        )
    return prompt_name
