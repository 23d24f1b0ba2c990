"""Loaders for the standard evaluation formats: STS pairs, BEIR retrieval folders, classification tables.

Every loader reads from a path the user gives and fails with a message naming the file and line.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.jsonl import iter_jsonl

# Sentences in STS files can be long and contain quotes; read fields verbatim.
csv.field_size_limit(1 << 24)


class DataFormatError(ValueError):
    """An evaluation file is missing or not in the format its loader expects."""


@dataclass
class STSTask:
    """Sentence pairs with gold similarity scores (higher = more similar)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    kind: str = field(default="sts", init=False)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class RetrievalTask:
    """A BEIR-style corpus, queries and graded relevance judgements (qrels)."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    kind: str = field(default="retrieval", init=False)


@dataclass
class ClassificationTask:
    """Labelled texts, split into train (to fit the classifier) and test (to score it)."""

    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    kind: str = field(default="classification", init=False)


# Every kind of task the runner scores (one evaluator each, under ``evaluation/tasks/``).
Task = STSTask | RetrievalTask | ClassificationTask


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataFormatError(f"{what} not found: {path}")
    return path


def _float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataFormatError(f"{where}: gold score {value!r} is not a number") from None


def _read_stsb(path: Path) -> tuple[list[str], list[str], list[float]]:
    # STS-B: tab-separated, gold score in field 4, sentences in 5 and 6; some lines carry extra
    # trailing fields, and quotes are literal text (no CSV quoting).
    first, second, gold = [], [], []
    with path.open(encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 7:
                raise DataFormatError(f"{path}:{number}: expected >= 7 tab-separated fields (STS-B), got {len(row)}")
            gold.append(_float(row[4], f"{path}:{number}"))
            first.append(row[5])
            second.append(row[6])
    return first, second, gold


def _read_sick(path: Path) -> tuple[list[str], list[str], list[float]]:
    first, second, gold = [], [], []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence_A", "sentence_B", "relatedness_score"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(f"{path}: SICK header lacks {sorted(missing)}")
        for number, row in enumerate(reader, 2):
            first.append(row["sentence_A"])
            second.append(row["sentence_B"])
            gold.append(_float(row["relatedness_score"], f"{path}:{number}"))
    return first, second, gold


def _read_semeval(input_path: Path) -> tuple[list[str], list[str], list[float]]:
    # SemEval STS 2012-2016: STS.input.<set>.txt holds the pairs, STS.gs.<set>.txt the scores, line by
    # line; a blank gold line means the pair was not scored and is skipped.
    gold_path = input_path.with_name(input_path.name.replace("STS.input.", "STS.gs.", 1))
    _require(gold_path, "gold-score file for " + input_path.name)
    pairs = input_path.read_text(encoding="utf-8").splitlines()
    golds = gold_path.read_text(encoding="utf-8").splitlines()
    if len(pairs) != len(golds):
        raise DataFormatError(f"{input_path} has {len(pairs)} lines but {gold_path} has {len(golds)}")
    first, second, gold = [], [], []
    for number, (pair, score) in enumerate(zip(pairs, golds, strict=True), 1):
        if not score.strip():
            continue
        fields = pair.split("\t")
        if len(fields) < 2:
            raise DataFormatError(f"{input_path}:{number}: expected two tab-separated sentences")
        first.append(fields[0])
        second.append(fields[1])
        gold.append(_float(score.strip(), f"{gold_path}:{number}"))
    return first, second, gold


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as f:
        return f.readline()


def _sts_reader(path: Path):
    if path.name.startswith("STS.input."):
        return _read_semeval
    return _read_sick if "sentence_A" in _first_line(path) else _read_stsb


def load_sts(path: str | Path, name: str | None = None) -> STSTask:
    """Load STS pairs from one file or a folder of files of one kind.

    Formats, told apart by name and header: STS-B (``sts-test.csv``: tab-separated, score then the
    two sentences in fields 4-6), SICK (``SICK_*.txt`` with a
    ``sentence_A sentence_B relatedness_score`` header), SemEval (``STS.input.<set>.txt`` with
    scores in ``STS.gs.<set>.txt``; unscored pairs are skipped). A folder loads all its SICK or
    ``STS.input.*`` files together (MTEB's SICK-R uses all 9927 pairs of train, trial and test).

    Args:
        path: a file, or a folder of SICK / SemEval files.
        name: the task's name in reports (default: the file or folder name).
    """
    path = _require(Path(path), "STS data")
    if path.is_dir():
        files = sorted(path.glob("STS.input.*.txt")) or sorted(
            p for p in path.glob("*.txt") if _first_line(p).startswith("pair_ID")
        )
        if not files:
            raise DataFormatError(
                f"{path}: no SemEval (STS.input.*.txt) or SICK files in this folder; give an STS-B file directly"
            )
    else:
        files = [path]
    first, second, gold = [], [], []
    for file in files:
        a, b, g = _sts_reader(file)(file)
        first += a
        second += b
        gold += g
    if not gold:
        raise DataFormatError(f"{path}: no scored sentence pairs")
    return STSTask(name or path.stem, first, second, gold)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, record in iter_jsonl(_require(path, "file"), DataFormatError):
        if not isinstance(record, dict) or "_id" not in record:
            raise DataFormatError(f"{path}:{number}: expected an object with an '_id'")
        records.append(record)
    return records


def load_retrieval(path: str | Path, split: str = "test", name: str | None = None) -> RetrievalTask:
    """Load a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Documents are ``title + " " + text`` (as BEIR and MTEB join them). Only queries judged in the
    split are kept.

    Args:
        path: the folder.
        split: which ``qrels/<split>.tsv`` to use (SciFact's public queries are ``train`` and ``test``).
        name: the task's name in reports (default: the folder name).
    """
    path = _require(Path(path), "retrieval folder")
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
        raise DataFormatError(f"{qrels_path} not found; splits here: {found or 'none'} (choose one with split=)")
    corpus = {}
    for record in _read_jsonl(path / "corpus.jsonl"):
        title, text = record.get("title") or "", record.get("text") or ""
        corpus[str(record["_id"])] = f"{title} {text}".strip() if title else text
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (number == 1 and not re.fullmatch(r"-?\d+", row[-1].strip())):
                continue  # header line
            if len(row) < 3:
                raise DataFormatError(f"{qrels_path}:{number}: expected query-id, corpus-id, score")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    all_queries = {str(r["_id"]): r.get("text") or "" for r in _read_jsonl(path / "queries.jsonl")}
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataFormatError(
            f"{qrels_path}: {len(missing)} judged queries missing from queries.jsonl, e.g. {missing[0]}"
        )
    unknown = {d for judged in qrels.values() for d in judged if d not in corpus}
    if unknown:
        raise DataFormatError(f"{qrels_path}: {len(unknown)} judged documents missing from corpus.jsonl")
    queries = {q: all_queries[q] for q in qrels}
    return RetrievalTask(name or path.name, corpus, queries, qrels)


def _column(path: Path, columns: list[str], role: str, column: str | None) -> str:
    if column is None or column not in columns:
        raise DataFormatError(f"{path}: no {role} column {column!r}; columns are {columns} (name it)")
    return column


def _read_table(path: Path, text_column: str | None, label_column: str | None) -> tuple[list[str], list[str], str, str]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        text_column = text_column or "text"
        if label_column is None:
            others = [c for c in columns if c != text_column]
            label_column = "label" if "label" in columns else (others[0] if len(others) == 1 else None)
        text_column = _column(path, columns, "text", text_column)
        label_column = _column(path, columns, "label", label_column)
        texts: list[str] = []
        labels: list[str] = []
        for number, row in enumerate(reader, 2):
            if row[text_column] is None or row[label_column] is None:
                raise DataFormatError(f"{path}:{number}: missing fields")
            texts.append(row[text_column])
            labels.append(row[label_column])
    return texts, labels, text_column, label_column


def load_classification(
    path: str | Path, text_column: str | None = None, label_column: str | None = None, name: str | None = None
) -> ClassificationTask:
    """Load ``train`` and ``test`` tables (``.csv`` or ``.tsv``, with a header) from a folder.

    Args:
        path: the folder holding ``train.csv``/``train.tsv`` and ``test.csv``/``test.tsv``.
        text_column: the column with the text (default ``text``).
        label_column: the column with the label (default ``label``, or the only other column).
        name: the task's name in reports (default: the folder name).
    """
    path = _require(Path(path), "classification folder")
    tables = {}
    for split in ("train", "test"):
        candidates = [path / f"{split}.csv", path / f"{split}.tsv"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataFormatError(f"{path}: no {split}.csv or {split}.tsv")
        tables[split] = _read_table(found, text_column, label_column)
    unseen = set(tables["test"][1]) - set(tables["train"][1])
    if unseen:
        raise DataFormatError(f"{path}: test labels never seen in train: {sorted(unseen)[:5]}")
    return ClassificationTask(name or path.name, tables["train"][0], tables["train"][1], *tables["test"][:2])


def subsample(task: Task, size: int, seed: int = 0) -> Task:
    """A fixed random part of ``task`` for quick sweeps (the same for every method and run).

    STS: ``size`` pairs. Classification: ``size`` test texts (the train split is kept: the
    classifier's draws come from it). Retrieval: every query, and a corpus of ``size`` documents
    that keeps every judged one (the rest drawn at random), so scores stay comparable between
    methods but run higher than on the full corpus. A task already that small is returned as is.
    """
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size}")
    rng = random.Random(seed)
    if isinstance(task, STSTask):
        if len(task) <= size:
            return task
        keep = sorted(rng.sample(range(len(task)), size))
        pick = lambda values: [values[i] for i in keep]  # noqa: E731
        return STSTask(f"{task.name} ({size} pairs)", pick(task.sentences1), pick(task.sentences2), pick(task.scores))
    if isinstance(task, ClassificationTask):
        if len(task.test_texts) <= size:
            return task
        keep = sorted(rng.sample(range(len(task.test_texts)), size))
        return ClassificationTask(
            f"{task.name} ({size} test texts)",
            task.train_texts,
            task.train_labels,
            [task.test_texts[i] for i in keep],
            [task.test_labels[i] for i in keep],
        )
    if isinstance(task, RetrievalTask):
        if len(task.corpus) <= size:
            return task
        judged = {d for docs in task.qrels.values() for d in docs}
        others = sorted(set(task.corpus) - judged)
        extra = rng.sample(others, max(0, min(len(others), size - len(judged))))
        kept = judged | set(extra)
        corpus = {d: text for d, text in task.corpus.items() if d in kept}
        return RetrievalTask(f"{task.name} ({len(corpus)} docs)", corpus, task.queries, task.qrels)
    raise TypeError(f"unknown task type {type(task).__name__}")
