"""The fastText quality classifier: trained on the teacher's labels, checked against the held-out ones (exact and
within-1 accuracy, MAE, Pearson and Spearman from ``scipy.stats`` with a Fisher-z interval of rho, keep/drop
agreement at the tier thresholds), committed by ``metrics.json`` (``python -m synth.labels train``).

The classifier folder may be an fsspec URI (``s3://bucket/...``): fastText reads and writes only local files, so
training runs in a local temporary folder and uploads ``model.bin`` then ``metrics.json`` (the commit, last);
scoring downloads ``model.bin`` once into a local cache named by its sha256 (``local_model``).

Own code where a library would do: ``_zero_filled_mallocs`` sets glibc's ``M_PERTURB`` because the fastText build
installed here (fasttext-numpy2-wheel 0.9.2) leaves its input matrix uninitialised, and no fastText option fixes it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import hashlib
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import regex

from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from pipelines.shards import (
    SUCCESS_FILE,
    filesystem,
    join,
    read_json,
    write_json_atomic,
)
from pipelines.wheels import sha256_file
from synth.labels.label import read_labels, unit_hash
from synth.settings import ClassifierSettings

NORMALIZE_VERSION = "lower-punct-cjk-v1"
MODEL_FILE = "model.bin"
METRICS_FILE = "metrics.json"


# ---------------------------------------------------------------------------------------------------- classifier

_SPLIT_OFF = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]|[^\w\s]")
_SPACES = regex.compile(r"\s+")


def normalize_text(text: str, max_chars: int) -> str:
    """The classifier's view of a text (training and scoring alike): the first ``max_chars`` characters,
    lowercased, punctuation and CJK/Thai characters split off as tokens, all whitespace one space."""
    text = text[:max_chars].lower().replace("__label__", " ")
    text = _SPLIT_OFF.sub(lambda m: f" {m.group(0)} ", text)
    return _SPACES.sub(" ", text).strip()


def score_bin_edges(scores: Sequence[float], bins: int) -> list[float]:
    """The inner quantile edges that cut the teacher's expected scores into ``bins`` classes of about equal size."""
    ordered = sorted(scores)
    if not ordered:
        return []
    return [ordered[min(len(ordered) - 1, (len(ordered) * k) // bins)] for k in range(1, bins)]


def _target(row: Mapping[str, Any], target: str, edges: Sequence[float] = ()) -> int:
    if target == "label":
        return int(row["label"])
    if target == "score_bins":
        return bisect.bisect_right(edges, float(row["score"]))
    return int(min(5, max(0, math.floor(float(row["score"]) + 0.5))))


def class_values(metrics: Mapping[str, Any]) -> dict[int, float]:
    """Score each class stands for (a ``score_bins`` class: its training rows' mean teacher score; a digit: itself)."""
    return {int(k): float(v) for k, v in (metrics.get("class_values") or {}).items()}


def _load_fasttext(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the "load_model does not return" warning
    return fasttext.load_model(path)


def predict_scores(
    model, texts: Sequence[str], max_chars: int, values: Mapping[int, float] | None = None
) -> list[tuple[float, int]]:
    """(expected score over all classes, most probable class) of each text, one batched fastText call; class ``c``
    stands for the score ``values[c]`` (``class_values``; the digit itself when absent)."""
    if not texts:
        return []
    values = values or {}
    labels, probs = model.predict([normalize_text(t, max_chars) for t in texts], k=-1, threshold=0.0)
    out = []
    for names, p in zip(labels, probs):
        classes = [int(n.removeprefix("__label__")) for n in names]
        p = [float(v) for v in p]
        best = classes[max(range(len(p)), key=lambda k: p[k])] if p else 0
        score = sum(q * values.get(c, c) for q, c in zip(p, classes)) / sum(p) if sum(p) > 0 else 0.0
        out.append((min(5.0, max(0.0, score)), best))
    return out


M_PERTURB = -6  # glibc mallopt parameter


@contextlib.contextmanager
def _zero_filled_mallocs() -> Iterator[None]:
    """While active, glibc's malloc returns zero-filled memory (``mallopt(M_PERTURB, 0xff)``: chunks are filled
    with ``0xff ^ 0xff`` when handed out). The fastText build installed here (fasttext-numpy2-wheel 0.9.2) does not
    zero the input matrix before its partial uniform initialisation, so rows reused from freed heap memory start
    as garbage (1e36, NaN): training then fails with "Encountered NaN", or worse, n-gram rows that training never
    touches keep garbage that wrecks later predictions. Stock fastText zero-fills; this restores that. A no-op
    where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is not None:
        mallopt(M_PERTURB, 0xFF)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(M_PERTURB, 0)


def _train_fasttext(**kwargs: Any):
    """``fasttext.train_supervised`` with zero-filled allocations, checked: a model whose input matrix holds
    non-finite or absurd values (uninitialised memory, divergence) is refused instead of saved."""
    import fasttext
    import numpy as np

    try:
        with _zero_filled_mallocs():
            model = fasttext.train_supervised(**kwargs)
    except RuntimeError as exc:
        raise ValueError(f"fastText training diverged ({exc}); try a lower lr than {kwargs.get('lr')}") from exc
    weights = model.get_input_matrix()
    if not np.isfinite(weights).all() or float(np.abs(weights).max(initial=0.0)) > 1e4:
        raise RuntimeError(
            "fastText produced a model with garbage weights (uninitialised memory in this fasttext build); "
            "install a fastText build that zero-fills its matrices"
        )
    return model


MIN_CI_PAIRS = 10
"""Fewest held-out labels for a confidence interval of Spearman's rho: with fewer, the normal approximation behind
the Fisher-z interval is poor, so no interval is given (and the classifier's check fails, saying why)."""


def _varies(values: Sequence[float]) -> bool:
    return len(set(values)) > 1


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r (``scipy.stats.pearsonr``); None when there are fewer than 2 pairs or a side is constant."""
    from scipy import stats

    if len(x) < 2 or not _varies(x) or not _varies(y):
        return None
    return round(float(stats.pearsonr(x, y).statistic), 6)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (``scipy.stats.spearmanr``, ties get their average rank); None as for ``pearson``."""
    from scipy import stats

    if len(x) < 2 or not _varies(x) or not _varies(y):
        return None
    return round(float(stats.spearmanr(x, y).statistic), 6)


def spearman_interval(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict:
    """Spearman's rho with a ``confidence`` interval: Fisher's z = atanh(rho) is about normal with variance
    (1 + rho**2 / 2) / (n - 3) for Spearman's rho (Bonett & Wright 2000, Psychometrika 65:23), so the interval is
    tanh(z -+ q * sd), q the normal quantile. ``low``/``high`` are None, and ``problem`` says why, when there are
    fewer than ``MIN_CI_PAIRS`` pairs or a side is constant (then rho says nothing)."""
    from scipy import stats

    n = len(x)
    out: dict[str, Any] = {"n": n, "confidence": confidence, "method": "fisher-z, Bonett-Wright variance"}
    out.update(rho=None, low=None, high=None, p_value=None, problem=None)
    if n < MIN_CI_PAIRS:
        out["problem"] = f"{n} labels: at least {MIN_CI_PAIRS} are needed for a confidence interval"
        return out
    if not _varies(x) or not _varies(y):
        side = "the teacher's" if not _varies(x) else "the classifier's"
        out["problem"] = f"{side} scores are all equal on the {n} labels: no rank correlation"
        return out
    result = stats.spearmanr(x, y)
    rho = float(result.statistic)
    z = math.atanh(max(-0.999999, min(0.999999, rho)))
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt((1 + rho * rho / 2) / (n - 3))
    out.update(
        rho=round(rho, 6),
        low=round(math.tanh(z - half), 6),
        high=round(math.tanh(z + half), 6),
        p_value=float(f"{float(result.pvalue):.6g}"),
    )
    return out


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def binary_agreement(teacher: Sequence[float], predicted: Sequence[float], threshold: float) -> dict:
    """Keep/drop agreement at ``threshold`` with the teacher's decision as the truth."""
    tp = sum(t >= threshold and p >= threshold for t, p in zip(teacher, predicted))
    fp = sum(t < threshold <= p for t, p in zip(teacher, predicted))
    fn = sum(p < threshold <= t for t, p in zip(teacher, predicted))
    tn = len(teacher) - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = round(2 * precision * recall / (precision + recall), 6) if precision and recall else None
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _ratio(tp + tn, len(teacher)),
        "teacher_keeps": tp + fn,
        "classifier_keeps": tp + fp,
    }


def agreement(
    teacher_scores: Sequence[float],
    teacher_labels: Sequence[int],
    predicted_scores: Sequence[float],
    predicted_labels: Sequence[int],
    thresholds: Mapping[str, float],
    confidence: float = 0.95,
) -> dict:
    """How well the classifier reproduces the teacher: labels, score correlation (with a ``confidence`` interval of
    Spearman's rho), tier decisions."""
    n = len(teacher_scores)
    return {
        "n": n,
        "exact_accuracy": _ratio(sum(a == b for a, b in zip(teacher_labels, predicted_labels)), n),
        "within1_accuracy": _ratio(sum(abs(a - b) <= 1 for a, b in zip(teacher_labels, predicted_labels)), n),
        "mae": round(sum(abs(a - b) for a, b in zip(teacher_scores, predicted_scores)) / n, 6) if n else None,
        "pearson": pearson(teacher_scores, predicted_scores),
        "spearman": spearman(teacher_scores, predicted_scores),
        "spearman_ci": spearman_interval(teacher_scores, predicted_scores, confidence),
        "binary": {name: binary_agreement(teacher_scores, predicted_scores, t) for name, t in thresholds.items()},
    }


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store (or any fsspec filesystem other than the local disk)."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def train_classifier(labels_dir: str, out_dir: str, config: ClassifierSettings | None = None) -> dict:
    """Train the fastText quality classifier on the ``train`` split of a label stage; write ``model.bin`` and
    ``metrics.json`` (agreement with the teacher on the ``heldout`` split) into ``out_dir``; return the metrics.

    An object-store ``out_dir`` is trained in a local temporary folder; its old ``metrics.json`` is removed first
    (the old model is uncommitted), then ``model.bin`` is uploaded and ``metrics.json`` written last, as locally."""
    if not is_remote(out_dir):
        return _train_local(labels_dir, out_dir, config)
    fs, path = filesystem(out_dir)
    fs.makedirs(path, exist_ok=True)
    if fs.exists(f"{path}/{METRICS_FILE}"):
        fs.rm(f"{path}/{METRICS_FILE}")  # uncommit the old model before replacing it
    for entry in fs.ls(path, detail=False) if fs.exists(path) else ():  # a killed upload's leftover
        if os.path.basename(entry.rstrip("/")).startswith(".tmp-"):
            fs.rm(entry)
    with tempfile.TemporaryDirectory(prefix="classifier-") as local:
        metrics = _train_local(labels_dir, local, config)
        tmp = f"{path}/.tmp-{uuid.uuid4().hex}.bin"
        fs.put_file(os.path.join(local, MODEL_FILE), tmp)
        fs.mv(tmp, f"{path}/{MODEL_FILE}")
    write_json_atomic(join(out_dir, METRICS_FILE), metrics)  # last: it commits model.bin
    return metrics


def _train_local(labels_dir: str, out_dir: str, config: ClassifierSettings | None = None) -> dict:
    config = config or ClassifierSettings()
    started = time.time()
    rows = read_labels(labels_dir)
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: unit_hash("order", config.seed, r["id"]))
    heldout = sorted((r for r in rows if r["split"] == "heldout"), key=lambda r: r["id"])
    if not train:
        raise ValueError(f"{labels_dir} has no labels in the train split ({len(rows)} rows in all)")
    os.makedirs(out_dir, exist_ok=True)
    metrics_path, model_path = os.path.join(out_dir, METRICS_FILE), os.path.join(out_dir, MODEL_FILE)
    if os.path.exists(metrics_path):
        os.remove(metrics_path)  # uncommit the old model before replacing it
    for name in os.listdir(out_dir):  # a killed run's training text or half-saved model
        if name.startswith(".tmp-"):
            os.remove(os.path.join(out_dir, name))
    edges = score_bin_edges([float(r["score"]) for r in train], config.bins) if config.target == "score_bins" else []

    def target(row: Mapping[str, Any]) -> int:
        return _target(row, config.target, edges)

    by_class: dict[int, list[float]] = {}
    for row in train:
        by_class.setdefault(target(row), []).append(float(row["score"]))
    values = {c: round(sum(v) / len(v), 6) for c, v in sorted(by_class.items())} if edges else {}
    tmp = os.path.join(out_dir, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(f"{tmp}.txt", "w", encoding="utf-8") as f:
            for row in train:
                f.write(f"__label__{target(row)} {normalize_text(row['text'] or '', config.max_chars)}\n")
        model = _train_fasttext(
            input=f"{tmp}.txt",
            lr=config.lr,
            epoch=config.epochs,
            dim=config.dim,
            wordNgrams=config.word_ngrams,
            minCount=config.min_count,
            bucket=config.bucket,
            minn=config.minn,
            maxn=config.maxn,
            seed=config.seed,
            thread=config.threads,
            loss="softmax",
            verbose=0,
        )
        model.save_model(f"{tmp}.bin")
        os.replace(f"{tmp}.bin", model_path)
    finally:
        for suffix in (".txt", ".bin"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp + suffix)
    thresholds = config.tiers()

    def evaluate(split_rows: list[dict]) -> dict | None:
        if not split_rows:
            return None
        predicted = predict_scores(model, [r["text"] or "" for r in split_rows], config.max_chars, values)
        return agreement(
            [float(r["score"]) for r in split_rows],
            [target(r) for r in split_rows],
            [p[0] for p in predicted],
            [p[1] for p in predicted],
            thresholds,
            config.confidence,
        )

    labels_summary = read_json(join(labels_dir, SUCCESS_FILE)) or {}
    metrics = {
        "model_sha256": sha256_file(model_path),
        "model_bytes": os.path.getsize(model_path),
        "config": config.model_dump(),
        "normalize": NORMALIZE_VERSION,
        "labels_dir": labels_dir,
        "teacher": labels_summary.get("model"),
        "rubric_version": labels_summary.get("rubric_version"),
        "counts": {
            "labels": len(rows),
            "train": len(train),
            "heldout": len(heldout),
            "train_classes": dict(sorted(Counter(str(target(r)) for r in train).items())),
            "heldout_classes": dict(sorted(Counter(str(target(r)) for r in heldout).items())),
        },
        "score_bin_edges": edges,
        "class_values": {str(c): v for c, v in values.items()},
        "classes": sorted(int(label.removeprefix("__label__")) for label in model.labels),
        "heldout": evaluate(heldout),
        "train": evaluate(train),
        "seconds": round(time.time() - started, 2),
    }
    write_json_atomic(metrics_path, metrics)  # last: it commits model.bin
    return metrics


def _sha256_uri(uri: str) -> str:
    if not is_remote(uri):
        return sha256_file(uri)
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classifier_fingerprint(classifier_dir: str) -> str:
    """sha256 of a committed classifier's ``model.bin`` (checked against its ``metrics.json``)."""
    metrics = read_json(join(classifier_dir, METRICS_FILE))
    model_path = join(classifier_dir, MODEL_FILE)
    fs, path = filesystem(model_path)
    if metrics is None or not fs.exists(path):
        raise ValueError(f"{classifier_dir} holds no trained classifier ({METRICS_FILE} + {MODEL_FILE}): run `train`")
    sha = _sha256_uri(model_path)
    if sha != metrics.get("model_sha256"):
        raise ValueError(f"{model_path} does not match its {METRICS_FILE} (a training run was cut short): retrain")
    return sha


def model_cache_dir() -> str:
    """Where ``local_model`` keeps downloaded classifiers: ``$QWEN2_CACHE/classifiers`` (default
    ``~/.cache/qwen2-recipe/classifiers``)."""
    root = os.environ.get("QWEN2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qwen2-recipe")
    return os.path.join(root, "classifiers")


def local_model(classifier_dir: str, sha256: str) -> str:
    """A local file holding the classifier's ``model.bin`` whose sha256 is ``sha256`` (fastText loads only local
    files): the file itself in a local folder, else a copy downloaded once into ``model_cache_dir()`` under
    ``<sha256>.bin``. Raises ``RuntimeError`` when the model no longer has that sha256 (it was retrained)."""
    model_uri = join(classifier_dir, MODEL_FILE)
    if not is_remote(classifier_dir):
        if sha256_file(model_uri) != sha256:
            raise RuntimeError(f"{model_uri} changed while the stage ran: rerun to score with the new classifier")
        return model_uri
    cached = os.path.join(model_cache_dir(), f"{sha256}.bin")
    if os.path.exists(cached):
        return cached  # named by its content: written only once verified (below)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    fs, path = filesystem(model_uri)
    tmp = f"{cached}.tmp-{uuid.uuid4().hex}"
    try:
        fs.get_file(path, tmp)
        if sha256_file(tmp) != sha256:
            raise RuntimeError(f"{model_uri} changed while the stage ran: rerun to score with the new classifier")
        os.replace(tmp, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return cached


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.labels train``: the run options, then the settings of ``ClassifierSettings``."""
    import json
    import sys

    parser = ArgumentParser(prog="python -m synth.labels train", description=__doc__)
    parser.add_argument("--labels", required=True, help="finished label stage folder")
    parser.add_argument("--out", required=True, help="classifier folder (model.bin + metrics.json)")
    args, settings = parse_settings(settings_parser(ClassifierSettings, parser=parser), argv)
    try:
        summary = train_classifier(args.labels, args.out, settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
