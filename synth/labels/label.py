"""Model-based quality scoring (Qwen2: "Qwen models judge data quality"): teacher labels, a fastText classifier, tiers.

Qwen2 filtered its pretraining data with heuristics plus model-based quality scores, and found the threshold matters
(a relaxed threshold gave 12T tokens instead of 7T and was not better, except for the 0.5B model). Rating every
document with an LLM costs too much, so, as FineWeb-Edu did, the teacher rates a sample and a fast classifier scores
everything:

1. ``label``: a seeded sample of ``sample_size`` curated documents (500 by default), stratified by language and
   domain (bottom-k of a hash of the id per (language, domain) stratum; labels spread over languages, then over
   each language's domains, in proportion to their size ** (1 / ``temperature``), 1 by default: proportional,
   every stratum getting one first; source code included), each cut to its first ``excerpt_tokens`` Qwen2 tokens so
   every rating costs the same, is rated by the teacher with an additive 0-5 rubric of educational/informational
   value (FineWeb-Edu style) written in the document's own language (``RUBRICS``; English plus "The document is
   in <Language>" for other languages). The rating is read from the teacher's next-token distribution over the
   digits "0".."5" (``GenerationRequest(choices=...)``, a chunk of requests per call, which the transformers
   backend scores in batches): ``label`` = most probable digit, ``score`` = expected value.
   A rating whose digits got less than ``min_choice_mass`` of the probability is rejected (``off_format``); the
   default 0.0 keeps everything (the tiny random test model puts ~1e-5 on digits), a real teacher should use
   ~0.5. The ``heldout_share`` of the sampled documents with the smallest hash of the id are the ``heldout`` split
   (``heldout_ids``). Rows: ``LABELS_SCHEMA``.
2. ``train``: fastText supervised on the ``train`` split, one class per score 0..5 (the teacher's ``label``, or its
   rounded expected score with ``target="rounded_score"``); predicted score = expected value over all class
   probabilities (``k=-1``). Text is normalised the same way for training and scoring (``normalize_text``:
   truncated, lowercased, punctuation and CJK characters split off, newlines to spaces). ``model.bin`` and
   ``metrics.json`` (agreement with the teacher on the held-out split: exact and within-1 accuracy, Pearson and
   Spearman correlation of the scores (``scipy.stats``) with a 95% Fisher-z confidence interval of Spearman's rho,
   binary precision/recall/F1/accuracy at the strict and relaxed thresholds, counts; the sha256 of ``model.bin``)
   are written atomically, metrics last: ``metrics.json`` commits the model. A classifier is worth using only when
   that interval lies above zero: with a few dozen labels it often does not.
3. ``score``: a Beam stage (``QualityScorer``, ``pipelines.beam_stage.run_shard_stage``) adds ``quality_score``
   to every document once (``SCORED_SCHEMA``, in ``scored_dir``; score histograms in 0.5 bins, overall and per
   language, in its ``_SUCCESS.json``). Then a second, cheap Beam pass reads each scored shard once and writes
   every tier from it: ``tiers_dir/strict`` (score >= 3.0) and ``tiers_dir/relaxed`` (>= 2.0), plain
   ``DOCUMENT_SCHEMA`` stage folders that ``pipelines.mixing`` indexes like any curated stage. Two passes, not one,
   because the threshold is the knob Qwen2 found matters: moving it re-tiers from the stored scores in seconds and
   never re-runs the classifier. Both passes resume committed shards; the classifier's sha256 is part of both
   configs, so a new classifier re-scores and re-tiers everything.

    python -m synth.quality label --docs data/curated/dedup --out data/quality/labels --sample-size 500
    python -m synth.quality label --docs data/curated/dedup --out data/quality/labels --backend openai \\
        --model Qwen/Qwen2-72B-Instruct --base-url http://127.0.0.1:8000/v1 --min-choice-mass 0.5
    python -m synth.quality train --labels data/quality/labels --out data/quality/classifier
    python -m synth.quality score --docs data/curated/dedup --classifier data/quality/classifier \\
        --scored data/quality/scored --tiers data/quality/tiers --strict 3.0 --relaxed 2.0
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import heapq
import json
import math
import os
import posixpath
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import regex

from pipelines.beam_stage import (
    ArgumentParser,
    DocumentProcessor,
    bounded,
    finish_stage,
    parse_stage_args,
    print_summary,
    run_pipeline,
    run_shard_stage,
)
from pipelines.readers import DEFAULT_MAX_DOC_BYTES, read_documents
from pipelines.schema import DOCUMENT_COLUMNS, DOCUMENT_FIELDS
from pipelines.shards import (
    SUCCESS_FILE,
    ShardStats,
    commit_shard,
    committed_stats,
    done_marker,
    expand_inputs,
    filesystem,
    input_fingerprint,
    iter_parquet_rows,
    join,
    list_shards,
    merge_stats,
    open_stage,
    read_json,
    remove_stale_shards,
    shard_key,
    shard_writers,
    write_json_atomic,
)
from pipelines.tokenizer import tokenizer_identity
from pipelines.wheels import sha256_file
from synth.generate import GenerationRequest, Generator
from synth.records import chunk_counters, record_id, rejected, run_chunked_stage
from synth.seeds import language_name

METHOD = "quality_label"
RUBRIC_VERSION = "edu-additive-v1"
"""Version of the rubric prompts: part of every request's cache key and of the label stage's config."""
SCORE_CHOICES = ("0", "1", "2", "3", "4", "5")
SPLITS = ("train", "heldout")
STRICT_THRESHOLD = 3.0
RELAXED_THRESHOLD = 2.0
HIST_BIN_WIDTH = 0.5
HIST_BINS = 10  # [0, 0.5), [0.5, 1), ..., [4.5, 5]
NORMALIZE_VERSION = "lower-punct-cjk-v1"
MODEL_FILE = "model.bin"
METRICS_FILE = "metrics.json"
SCORE_STAGE = "quality_score"
TIER_STAGE = "quality_tier"

# Labels of the teacher (``label`` stage output).
#
# | column           | type          | meaning                                                               |
# |------------------|---------------|-----------------------------------------------------------------------|
# | id               | string        | the curated document's id                                             |
# | lang, domain, source | string    | copied from the document                                              |
# | text             | string        | the excerpt the teacher rated (first ``excerpt_tokens`` Qwen2 tokens)  |
# | text_chars       | int32         | characters of the whole document                                      |
# | score            | float32       | expected rating: sum of k * P(k) over k = 0..5                         |
# | label            | int8          | the most probable rating                                              |
# | probs            | list<float32> | P("0") .. P("5"), renormalised over the six digits                     |
# | choice_mass      | float32       | the teacher's total probability on the six digits before renormalising |
# | split            | string        | ``train`` or ``heldout`` (``heldout_ids``: smallest id hashes)        |
# | model, backend   | string        | the teacher and the backend that served it                            |
# | template_version | string        | ``RUBRIC_VERSION``                                                     |
LABELS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("lang", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text", pa.string()),
        pa.field("text_chars", pa.int32()),
        pa.field("score", pa.float32()),
        pa.field("label", pa.int8()),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("choice_mass", pa.float32()),
        pa.field("split", pa.string()),
        pa.field("model", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("template_version", pa.string()),
    ]
)
# Scored documents (``score`` stage output): DOCUMENT_SCHEMA plus the classifier's expected score in [0, 5].
SCORED_SCHEMA = pa.schema(DOCUMENT_FIELDS + [pa.field("quality_score", pa.float32())])


# ------------------------------------------------------------------------------------------------------- rubrics

# FineWeb-Edu's additive rubric (Penedo et al. 2024), shortened, widened from "school" to "educational or
# informational value" and answered with one digit. Each: the task with the five criteria, the label in front of
# the document, and the answer instruction.
RUBRICS: dict[str, dict[str, str]] = {
    "en": {
        "task": (
            "Rate the educational and informational value of the document below on an additive scale from 0 to 5. "
            "Start at 0 and add one point for each criterion the document meets:\n"
            "1. It gives some basic information on a topic, even if mixed with ads or irrelevant content.\n"
            "2. It covers elements useful for learning, but superficially or in a disorganised way.\n"
            "3. It is coherent and introduces key concepts a learner could use, though it may be incomplete.\n"
            "4. It is clearly written, well organised and highly useful for learning, with little irrelevant "
            "content.\n"
            "5. It is outstanding: detailed, accurate and easy to follow, like an excellent textbook or tutorial.\n"
            "Junk, spam, navigation menus, lists of links and incoherent text get 0."
        ),
        "document": "Document:",
        "answer": "Answer with a single digit from 0 to 5 and nothing else.",
    },
    "zh": {
        "task": (
            "请按 0 到 5 分的累加标准，评估下面文档的教育和信息价值。从 0 分开始，每满足一条标准加 1 分：\n"
            "1. 提供了某个主题的一些基本信息，即使夹杂广告或无关内容。\n"
            "2. 涉及对学习有用的内容，但比较肤浅或缺乏条理。\n"
            "3. 内容连贯，介绍了学习者可以使用的关键概念，尽管可能不够完整。\n"
            "4. 写得清楚、组织良好，对学习非常有用，几乎没有无关内容。\n"
            "5. 非常出色：详细、准确、易于理解，如同优秀的教材或教程。\n"
            "垃圾内容、垃圾广告、导航菜单、链接列表和不连贯的文字得 0 分。"
        ),
        "document": "文档：",
        "answer": "只回答一个 0 到 5 的数字，不要输出其他内容。",
    },
    "de": {
        "task": (
            "Bewerte den Bildungs- und Informationswert des folgenden Dokuments auf einer additiven Skala von 0 bis 5. "
            "Beginne bei 0 und vergib für jedes erfüllte Kriterium einen Punkt:\n"
            "1. Es liefert grundlegende Informationen zu einem Thema, auch wenn Werbung oder Irrelevantes dabei ist.\n"
            "2. Es behandelt Inhalte, die beim Lernen nützlich sind, aber oberflächlich oder ungeordnet.\n"
            "3. Es ist zusammenhängend und führt wichtige Begriffe ein, die ein Lernender nutzen kann, auch wenn "
            "es unvollständig sein mag.\n"
            "4. Es ist klar geschrieben, gut gegliedert und für das Lernen sehr nützlich, mit wenig Irrelevantem.\n"
            "5. Es ist herausragend: ausführlich, korrekt und leicht verständlich, wie ein ausgezeichnetes Lehrbuch "
            "oder Tutorial.\n"
            "Müll, Spam, Navigationsmenüs, Linklisten und unzusammenhängender Text erhalten 0."
        ),
        "document": "Dokument:",
        "answer": "Antworte nur mit einer einzigen Ziffer von 0 bis 5.",
    },
    "fr": {
        "task": (
            "Évalue la valeur éducative et informative du document ci-dessous sur une échelle additive de 0 à 5. "
            "Pars de 0 et ajoute un point pour chaque critère rempli :\n"
            "1. Il donne quelques informations de base sur un sujet, même mêlées à de la publicité ou à du contenu "
            "hors sujet.\n"
            "2. Il aborde des éléments utiles pour apprendre, mais de façon superficielle ou désorganisée.\n"
            "3. Il est cohérent et présente des notions clés qu'un apprenant peut utiliser, même s'il est "
            "incomplet.\n"
            "4. Il est clairement rédigé, bien organisé et très utile pour apprendre, avec peu de contenu hors "
            "sujet.\n"
            "5. Il est exceptionnel : détaillé, exact et facile à suivre, comme un excellent manuel ou tutoriel.\n"
            "Les contenus sans valeur, le spam, les menus de navigation, les listes de liens et les textes "
            "incohérents obtiennent 0."
        ),
        "document": "Document :",
        "answer": "Réponds uniquement par un seul chiffre de 0 à 5.",
    },
    "es": {
        "task": (
            "Evalúa el valor educativo e informativo del documento siguiente en una escala aditiva de 0 a 5. "
            "Empieza en 0 y suma un punto por cada criterio que cumpla:\n"
            "1. Ofrece alguna información básica sobre un tema, aunque esté mezclada con publicidad o contenido "
            "irrelevante.\n"
            "2. Trata elementos útiles para aprender, pero de forma superficial o desordenada.\n"
            "3. Es coherente e introduce conceptos clave que un estudiante podría usar, aunque sea incompleto.\n"
            "4. Está escrito con claridad, bien organizado y es muy útil para aprender, con poco contenido "
            "irrelevante.\n"
            "5. Es excepcional: detallado, correcto y fácil de seguir, como un excelente libro de texto o tutorial.\n"
            "La basura, el spam, los menús de navegación, las listas de enlaces y el texto incoherente reciben 0."
        ),
        "document": "Documento:",
        "answer": "Responde solo con un único dígito del 0 al 5.",
    },
    "ja": {
        "task": (
            "以下の文書の教育的・情報的価値を、0〜5 の加点方式で評価してください。"
            "0 点から始め、満たす基準ごとに 1 点を加えます。\n"
            "1. 広告や無関係な内容が混じっていても、あるテーマについて基本的な情報を提供している。\n"
            "2. 学習に役立つ要素を扱っているが、表面的またはまとまりがない。\n"
            "3. 一貫しており、学習者が活用できる重要な概念を紹介している。ただし不完全な場合もある。\n"
            "4. 明確に書かれ、よく整理されており、学習に非常に役立つ。無関係な内容はほとんどない。\n"
            "5. 非常に優れている：詳しく、正確で、分かりやすく、優れた教科書やチュートリアルのようである。\n"
            "ごみ、スパム、ナビゲーションメニュー、リンクの羅列、支離滅裂な文章は 0 点です。"
        ),
        "document": "文書：",
        "answer": "0 から 5 の数字を 1 つだけ答えてください。それ以外は出力しないでください。",
    },
    "ru": {
        "task": (
            "Оцени образовательную и информационную ценность документа ниже по накопительной шкале от 0 до 5. "
            "Начни с 0 и добавляй один балл за каждый выполненный критерий:\n"
            "1. Документ даёт базовую информацию по какой-либо теме, даже вперемешку с рекламой или посторонним "
            "содержимым.\n"
            "2. Он затрагивает полезные для обучения сведения, но поверхностно или бессистемно.\n"
            "3. Он связный и вводит ключевые понятия, которые может использовать учащийся, хотя может быть "
            "неполным.\n"
            "4. Он ясно написан, хорошо организован и очень полезен для обучения, постороннего содержимого мало.\n"
            "5. Он превосходен: подробный, точный и понятный, как отличный учебник или руководство.\n"
            "Мусор, спам, меню навигации, списки ссылок и бессвязный текст получают 0."
        ),
        "document": "Документ:",
        "answer": "Ответь только одной цифрой от 0 до 5.",
    },
    "pt": {
        "task": (
            "Avalie o valor educativo e informativo do documento abaixo numa escala aditiva de 0 a 5. "
            "Comece em 0 e some um ponto por cada critério cumprido:\n"
            "1. Dá alguma informação básica sobre um tema, mesmo que misturada com publicidade ou conteúdo "
            "irrelevante.\n"
            "2. Aborda elementos úteis para aprender, mas de forma superficial ou desorganizada.\n"
            "3. É coerente e apresenta conceitos-chave que um estudante poderia usar, ainda que incompleto.\n"
            "4. Está escrito com clareza, bem organizado e é muito útil para aprender, com pouco conteúdo "
            "irrelevante.\n"
            "5. É excelente: detalhado, correto e fácil de acompanhar, como um ótimo livro didático ou tutorial.\n"
            "Lixo, spam, menus de navegação, listas de links e texto incoerente recebem 0."
        ),
        "document": "Documento:",
        "answer": "Responda apenas com um único dígito de 0 a 5.",
    },
    "it": {
        "task": (
            "Valuta il valore educativo e informativo del documento qui sotto su una scala additiva da 0 a 5. "
            "Parti da 0 e aggiungi un punto per ogni criterio soddisfatto:\n"
            "1. Fornisce alcune informazioni di base su un argomento, anche se mescolate a pubblicità o contenuti "
            "irrilevanti.\n"
            "2. Tratta elementi utili per imparare, ma in modo superficiale o disordinato.\n"
            "3. È coerente e introduce concetti chiave che uno studente potrebbe usare, anche se incompleto.\n"
            "4. È scritto con chiarezza, ben organizzato e molto utile per imparare, con pochi contenuti "
            "irrilevanti.\n"
            "5. È eccezionale: dettagliato, corretto e facile da seguire, come un ottimo libro di testo o tutorial.\n"
            "Contenuti spazzatura, spam, menu di navigazione, elenchi di link e testo incoerente ricevono 0."
        ),
        "document": "Documento:",
        "answer": "Rispondi solo con una singola cifra da 0 a 5.",
    },
}
CODE_NOTE = "The document is source code: rate its value for learning to program."


def base_language(lang: str | None) -> str | None:
    """ISO 639-1 part of a language tag: ``de-DE``, ``zh_CN``, ``pt-br`` -> ``de``, ``zh``, ``pt``."""
    return lang.replace("_", "-").split("-")[0].lower() or None if lang else None


def rubric_messages(text: str, lang: str | None, domain: str | None = None) -> list[dict[str, str]]:
    """The rating prompt for one document: the rubric in the document's language (English plus a note on the
    language, or on source code, when there is no translation), then the document, then the answer format."""
    lang = base_language(lang)
    rubric = RUBRICS.get(lang or "", RUBRICS["en"])
    parts = [rubric["task"]]
    if domain == "code" or lang == "code":
        parts.append(CODE_NOTE)
    elif lang and lang not in RUBRICS:
        parts.append(f"The document is in {language_name(lang)}.")
    parts.append(f"{rubric['document']}\n<<<\n{text}\n>>>")
    parts.append(rubric["answer"])
    return [{"role": "user", "content": "\n\n".join(parts)}]


# -------------------------------------------------------------------------------------------------------- labels


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(doc_id: str, heldout_share: float) -> str:
    """``heldout`` for a fixed ``heldout_share`` of ids (by hash, independent of the sample seed), else ``train``."""
    return "heldout" if _unit("quality-split", doc_id) < heldout_share else "train"


def heldout_ids(doc_ids: Sequence[str], heldout_share: float) -> set[str]:
    """The ``round(heldout_share * n)`` ids of ``doc_ids`` with the smallest split hash (the one ``split_of``
    thresholds): exactly the asked share, where a threshold on the hash gives a binomial count (80 labels at 0.3
    held out 14 instead of 24 on the demo crawl, and the agreement interval widened accordingly)."""
    ranked = sorted(set(doc_ids), key=lambda doc_id: (_unit("quality-split", doc_id), doc_id))
    return set(ranked[: round(heldout_share * len(ranked))])


@dataclass(frozen=True)
class LabelConfig:
    sample_size: int = 500
    """Documents the teacher rates, stratified by language and domain (FineWeb-Edu rated 450k with a 70B model).
    500 leaves ~100 held-out labels at the default ``heldout_share``: enough for a confidence interval of the
    classifier's agreement that excludes zero unless the agreement is weak. The CPU demo rates fewer (its asset
    config)."""
    seed: int = 0
    """Sampling seed: which documents are rated."""
    temperature: float = 1.0
    """How the labels are spread over (language, domain) strata: in proportion to stratum size ** (1 / temperature),
    every stratum getting one first when ``sample_size`` allows. 1: proportional, so the held-out labels measure
    agreement on the mix of documents the tiers are cut from (equal shares per language put most labels on small
    languages, and on the demo crawl left its junk, 35% of the documents but all in one language, with 3 labels of
    40); larger values move labels to small languages and domains, as mixing's language temperature does."""
    excerpt_tokens: int = 256
    """The teacher sees the first this many Qwen2 tokens of each document (cut at a token boundary), so every
    rating costs about the same whatever the script: 800 characters are ~160 tokens of English but ~640 of
    Greek. The rubric around the excerpt adds 220-300 tokens."""
    max_doc_chars: int | None = None
    """Optional: also cut each document to this many characters before the token cut (None: tokens only)."""
    min_choice_mass: float = 0.0
    """Reject (``off_format``) ratings whose digits got less probability than this. 0.0 keeps everything (the tiny
    random test model puts almost nothing on digits); use ~0.5 with a real teacher."""
    heldout_share: float = 0.2
    """Share of the labels kept out of classifier training, to measure agreement with the teacher."""
    chunk_size: int = 32
    """Documents per committed chunk (the unit of resumption); each chunk goes to the teacher as one call, which
    the transformers backend runs as batches of its ``batch_size``."""

    def __post_init__(self) -> None:
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {self.sample_size}")
        if self.excerpt_tokens < 1:
            raise ValueError(f"excerpt_tokens must be >= 1, got {self.excerpt_tokens}")
        if not self.temperature >= 1.0:
            raise ValueError(f"temperature must be >= 1 (1: proportional to stratum size), got {self.temperature}")
        if self.max_doc_chars is not None and self.max_doc_chars < 1:
            raise ValueError(f"max_doc_chars must be >= 1 (or None), got {self.max_doc_chars}")
        if not 0.0 <= self.min_choice_mass <= 1.0:
            raise ValueError(f"min_choice_mass must be in [0, 1], got {self.min_choice_mass}")
        if not 0.0 <= self.heldout_share < 1.0:
            raise ValueError(f"heldout_share must be in [0, 1), got {self.heldout_share}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


SAMPLE_COLUMNS = ["id", "text", "lang", "domain", "source"]


def iter_documents(inputs: str | Sequence[str], columns: Sequence[str] = SAMPLE_COLUMNS) -> Iterator[dict]:
    """Stream documents (only ``columns``) from a stage folder, Parquet shards or any format ``read_documents``
    reads; unreadable records are skipped."""

    for path in expand_inputs(inputs):
        if path.endswith(".parquet"):
            for row in iter_parquet_rows(path, columns):
                if row.get("id") is not None and row.get("text"):
                    yield row
        else:
            for kind, row in read_documents(path, DEFAULT_MAX_DOC_BYTES):
                if kind == "doc" and row.get("text"):
                    yield {c: row.get(c) for c in columns}


def balanced_quotas(available: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over languages as evenly as their ``available`` counts allow (water-filling): each gets an
    equal share; what a small language cannot fill goes to the others."""
    quotas = dict.fromkeys(available, 0)
    remaining = min(total, sum(available.values()))
    open_ = sorted((lang for lang, n in available.items() if n > 0), key=lambda k: (-available[k], k))
    while remaining > 0 and open_:
        share = max(1, remaining // len(open_))
        for lang in list(open_):
            take = min(share, available[lang] - quotas[lang], remaining)
            quotas[lang] += take
            remaining -= take
            if quotas[lang] >= available[lang]:
                open_.remove(lang)
            if remaining == 0:
                break
    return {lang: n for lang, n in quotas.items() if n}


def allocate(sizes: Mapping[Any, int], caps: Mapping[Any, int], total: int, temperature: float = 1.0) -> dict[Any, int]:
    """Split ``total`` over keys in proportion to ``sizes[key] ** (1 / temperature)`` (1: proportional; larger:
    flatter; ``math.inf``: equal shares), no key above ``caps[key]``; every key with room gets one first when
    ``total`` allows, the rest goes by shares (largest remainders last), and what a full key cannot take goes to the
    others."""
    open_ = sorted(k for k in sizes if caps.get(k, 0) > 0)
    quotas = dict.fromkeys(open_, 0)
    remaining = min(total, sum(caps[k] for k in open_))
    if remaining >= len(open_):
        quotas = dict.fromkeys(open_, 1)
        remaining -= len(open_)

    def weight(key: Any) -> float:
        return 1.0 if math.isinf(temperature) else max(sizes[key], 1) ** (1.0 / temperature)

    while remaining > 0:
        open_ = [k for k in open_ if quotas[k] < caps[k]]
        total_weight = sum(weight(k) for k in open_)
        shares = {k: remaining * weight(k) / total_weight for k in open_}
        give = {k: min(int(shares[k]), caps[k] - quotas[k]) for k in open_}
        if not any(give.values()):  # every share below one: the largest remainders get one each
            for k in sorted(open_, key=lambda k: (-shares[k], k))[:remaining]:
                give[k] = 1
        for k, n in give.items():
            quotas[k] += n
            remaining -= n
    return {k: n for k, n in quotas.items() if n}


def stratified_quotas(
    sizes: Mapping[tuple[str, str], int],
    caps: Mapping[tuple[str, str], int],
    total: int,
    temperature: float = 1.0,
) -> dict[tuple[str, str], int]:
    """Split ``total`` over (language, domain) strata of ``sizes`` documents, at most ``caps`` each: first over
    languages, then each language's share over its domains, both by ``allocate`` at ``temperature``."""
    by_lang: dict[str, dict[str, tuple[int, int]]] = {}
    for (lang, domain), n in sizes.items():
        by_lang.setdefault(lang, {})[domain] = (n, caps.get((lang, domain), 0))
    lang_quotas = allocate(
        {lang: sum(n for n, _ in d.values()) for lang, d in by_lang.items()},
        {lang: sum(c for _, c in d.values()) for lang, d in by_lang.items()},
        total,
        temperature,
    )
    return {
        (lang, domain): n
        for lang, quota in lang_quotas.items()
        for domain, n in allocate(
            {d: n for d, (n, _) in by_lang[lang].items()},
            {d: c for d, (_, c) in by_lang[lang].items()},
            quota,
            temperature,
        ).items()
    }


EXCERPT_CHARS_PER_TOKEN = 16
"""Documents are cut to ``excerpt_tokens`` x this many characters before tokenizing (no Qwen2 token is longer on
average over a whole excerpt), so a huge document costs no more to cut than a short one."""


def excerpts(texts: Sequence[str], tokens: int, max_chars: int | None = None) -> list[str]:
    """Each text cut to its first ``tokens`` Qwen2 tokens (and ``max_chars`` characters, if given): at the end of
    the character span of the last token kept, so no character is split."""
    from pipelines.tokenizer import load_tokenizer

    limit = tokens * EXCERPT_CHARS_PER_TOKEN if max_chars is None else min(max_chars, tokens * EXCERPT_CHARS_PER_TOKEN)
    cut = [text[:limit] for text in texts]
    encodings = load_tokenizer().encode_batch(cut, add_special_tokens=False) if cut else []
    return [
        text[: enc.offsets[tokens - 1][1]] if len(enc.offsets) > tokens else text for text, enc in zip(cut, encodings)
    ]


def _stratum(doc: Mapping[str, Any]) -> tuple[str, str]:
    return doc.get("lang") or "unknown", doc.get("domain") or "unknown"


def sample_documents(
    inputs: str | Sequence[str],
    sample_size: int,
    seed: int = 0,
    max_doc_chars: int | None = None,
    excerpt_tokens: int | None = None,
    temperature: float = 1.0,
) -> tuple[list[dict], dict]:
    """A deterministic sample stratified by language and domain: per (language, domain) stratum the documents with
    the smallest hash of (seed, id), as many as ``stratified_quotas`` gives the stratum at ``temperature``.
    Two streaming passes: the first keeps only (hash, id, position) per candidate, so memory is bounded by strata x
    ``sample_size`` small tuples whatever the documents' size; the second collects the chosen documents, cut to
    ``excerpt_tokens`` Qwen2 tokens and/or ``max_doc_chars`` characters (neither: whole). Returns (documents in
    hash order, sampling counters)."""
    heaps: dict[tuple[str, str], list] = {}
    seen: Counter = Counter()
    for n, doc in enumerate(iter_documents(inputs, ["id", "text", "lang", "domain"])):
        stratum = _stratum(doc)
        seen[stratum] += 1
        key = _unit("quality-sample", seed, doc["id"])
        heap = heaps.setdefault(stratum, [])
        item = (-key, str(doc["id"]), n)
        if len(heap) < sample_size:
            heapq.heappush(heap, item)
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, item)
    quotas = stratified_quotas(seen, {stratum: len(h) for stratum, h in heaps.items()}, sample_size, temperature)
    chosen: dict[int, tuple[float, str]] = {}
    for stratum, quota in quotas.items():
        for neg_key, doc_id, n in sorted(heaps[stratum], key=lambda item: (-item[0], item[1]))[:quota]:
            chosen[n] = (-neg_key, doc_id)
    picked: list[tuple[float, dict]] = []
    for n, doc in enumerate(iter_documents(inputs)):
        if n not in chosen:
            continue
        key, doc_id = chosen[n]
        if str(doc["id"]) != doc_id:
            raise ValueError(f"{inputs} changed while it was sampled (document {n} is now {doc['id']!r}): rerun")
        text = doc["text"]
        slim = {
            "id": doc_id,
            "lang": doc.get("lang"),
            "domain": doc.get("domain"),
            "source": doc.get("source"),
            "text": text if max_doc_chars is None else text[:max_doc_chars],
            "text_chars": len(text),
        }
        picked.append((key, slim))
        if len(picked) == len(chosen):
            break
    if excerpt_tokens is not None:
        for (_, doc), text in zip(picked, excerpts([d["text"] for _, d in picked], excerpt_tokens, max_doc_chars)):
            doc["text"] = text
    picked.sort(key=lambda pair: (pair[0], pair[1]["id"]))
    seen_by_lang: Counter = Counter()
    for (lang, _), n in seen.items():
        seen_by_lang[lang] += n
    by_lang: Counter = Counter()
    by_domain: Counter = Counter()
    for (lang, domain), quota in quotas.items():
        by_lang[lang] += quota
        by_domain[domain] += quota
    stats = {
        "documents_seen": sum(seen.values()),
        "seen_by_lang": dict(sorted(seen_by_lang.items())),
        "sample_by_lang": dict(sorted(by_lang.items())),
        "sample_by_domain": dict(sorted(by_domain.items())),
        "sample_by_stratum": {f"{lang}/{domain}": n for (lang, domain), n in sorted(quotas.items())},
    }
    return [doc for _, doc in picked], stats


def expected_score(probs: Sequence[float], classes: Sequence[int | str] = SCORE_CHOICES) -> float:
    """sum of k * P(k), with P renormalised (0 when there is no mass)."""
    mass = float(sum(probs))
    if mass <= 0:
        return 0.0
    return float(sum(float(p) * int(c) for p, c in zip(probs, classes)) / mass)


def label_documents(
    generator: Generator,
    docs_dir: str,
    out_dir: str,
    config: LabelConfig = LabelConfig(),
    log: Callable[[str], None] | None = None,
) -> dict:
    """Rate a seeded sample of the documents under ``docs_dir`` with ``generator`` (the teacher) into ``out_dir``
    (``LABELS_SCHEMA`` rows, ``off_format`` rejections in ``excluded/``); returns the stage summary."""
    items, sampling = sample_documents(
        docs_dir, config.sample_size, config.seed, config.max_doc_chars, config.excerpt_tokens, config.temperature
    )
    if not items:
        raise ValueError(f"no documents with text under {docs_dir}")
    held = heldout_ids([doc["id"] for doc in items], config.heldout_share)
    items = [{**doc, "split": "heldout" if doc["id"] in held else "train"} for doc in items]

    run = {"teacher_requests": 0, "teacher_seconds": 0.0}  # this run only: not in the stage's summary or markers

    def process(chunk: list[Mapping[str, Any]]):
        requests = [
            GenerationRequest(
                rubric_messages(doc["text"], doc.get("lang"), doc.get("domain")),
                choices=SCORE_CHOICES,
                template_version=RUBRIC_VERSION,
            )
            for doc in chunk
        ]
        rows, rejected_rows = [], []
        labels: Counter = Counter()
        splits: Counter = Counter()
        languages: Counter = Counter()
        domains: Counter = Counter()
        started = time.perf_counter()
        results = generator.generate(requests)  # the whole chunk in one call: the backend batches it
        answered = sum(not r.cached for r in results)
        if answered:
            run["teacher_requests"] += answered
            run["teacher_seconds"] += time.perf_counter() - started
        for doc, result in zip(chunk, results):
            mass = float(result.choice_mass or 0.0)
            if result.choice_probs is None or mass < config.min_choice_mass:
                detail = {"choice_mass": mass, "min_choice_mass": config.min_choice_mass, "answer": result.texts[0]}
                rejected_rows.append(
                    rejected(METHOD, doc["id"], "off_format", detail, doc["text"], id=record_id(METHOD, doc["id"]))
                )
                continue
            probs = [float(p) for p in result.choice_probs]
            label = max(range(len(probs)), key=lambda k: probs[k])
            split = doc["split"]
            rows.append(
                {
                    **{k: doc[k] for k in ("id", "lang", "domain", "source", "text", "text_chars")},
                    "score": expected_score(probs),
                    "label": int(SCORE_CHOICES[label]),
                    "probs": probs,
                    "choice_mass": mass,
                    "split": split,
                    "model": result.model_id,
                    "backend": result.backend,
                    "template_version": result.template_version,
                }
            )
            labels[SCORE_CHOICES[label]] += 1
            splits[split] += 1
            languages[doc.get("lang") or "unknown"] += 1
            domains[doc.get("domain") or "unknown"] += 1
        stats = chunk_counters(len(chunk), len(chunk), len(rows), rejected_rows)
        stats.update(labels=dict(labels), splits=dict(splits), languages=dict(languages), domains=dict(domains))
        stats["score_sum"] = round(sum(r["score"] for r in rows), 6)
        stats["prompt_tokens"] = sum(r.prompt_tokens for r in results)
        return rows, rejected_rows, stats

    stage_config = {
        "method": METHOD,
        "rubric_version": RUBRIC_VERSION,
        "model": generator.model_id,
        "config": dataclasses.asdict(config),
        "excerpt_tokenizer": tokenizer_identity(),  # another tokenizer cuts other excerpts
    }
    extra = {
        "docs_dir": docs_dir,
        "model": generator.model_id,
        "backend": generator.backend,
        "rubric_version": RUBRIC_VERSION,
        "min_choice_mass": config.min_choice_mass,
        "excerpt_tokens": config.excerpt_tokens,
        **sampling,
    }
    summary = run_chunked_stage(
        out_dir, stage_config, items, process, LABELS_SCHEMA, chunk_size=config.chunk_size, extra=extra, log=log
    )
    # How fast this run's teacher rated (None when the cache answered everything): returned, not written into the
    # stage's summary, which says only what the stage produced, so a resumed run's output equals an uninterrupted one's.
    asked, seconds = run["teacher_requests"], run["teacher_seconds"]
    summary.update(run, labels_per_minute=round(60 * asked / seconds, 2) if asked and seconds else None)
    summary["teacher_seconds"] = round(seconds, 2)
    samples = summary.get("samples", 0)
    summary["mean_prompt_tokens"] = round(summary.get("prompt_tokens", 0) / samples, 1) if samples else None
    return summary


def read_labels(labels_dir: str) -> list[dict]:
    """The rows of a finished label stage (small by construction: ``sample_size`` rows)."""
    import pyarrow.parquet as pq

    if read_json(join(labels_dir, SUCCESS_FILE)) is None:
        raise ValueError(f"{labels_dir} is not a finished label stage (no {SUCCESS_FILE}): run `label` first")
    rows = []
    for path in list_shards(labels_dir):
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            rows += pq.read_table(f, schema=LABELS_SCHEMA).to_pylist()
    return rows


# ---------------------------------------------------------------------------------------------------- classifier

_SPLIT_OFF = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]|[^\w\s]")
_SPACES = regex.compile(r"\s+")


def normalize_text(text: str, max_chars: int) -> str:
    """The classifier's view of a text (training and scoring alike): the first ``max_chars`` characters,
    lowercased, punctuation and CJK/Thai characters split off as tokens, all whitespace one space."""
    text = text[:max_chars].lower().replace("__label__", " ")
    text = _SPLIT_OFF.sub(lambda m: f" {m.group(0)} ", text)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class ClassifierConfig:
    max_chars: int = 2000
    """Characters of a document the classifier reads (as the teacher saw them)."""
    epoch: int = 25
    lr: float = 0.5
    dim: int = 32
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 100_000
    """Hash buckets for word n-grams: model size ~ (words + bucket) x dim x 4 bytes (~13 MB at the defaults)."""
    minn: int = 0
    maxn: int = 0
    seed: int = 0
    threads: int = 1
    """fastText threads; 1 makes training reproducible bit for bit."""
    target: str = "label"
    """Training class: the teacher's ``label`` (most probable digit) or ``rounded_score`` (its rounded expected
    score, steadier when the teacher's distribution is flat)."""
    strict_threshold: float = STRICT_THRESHOLD
    relaxed_threshold: float = RELAXED_THRESHOLD
    confidence: float = 0.95
    """Level of the confidence interval of Spearman's rho between the classifier's and the teacher's scores on the
    held-out labels (``metrics.json``: ``heldout.spearman_ci``)."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.target not in ("label", "rounded_score"):
            raise ValueError(f"target must be 'label' or 'rounded_score', got {self.target!r}")
        if self.max_chars < 1 or self.epoch < 1 or self.dim < 1 or self.threads < 1 or self.bucket < 1:
            raise ValueError("max_chars, epoch, dim, threads and bucket must be >= 1")


def _target(row: Mapping[str, Any], target: str) -> int:
    if target == "label":
        return int(row["label"])
    return int(min(5, max(0, math.floor(float(row["score"]) + 0.5))))


def _load_fasttext(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the "load_model does not return" warning
    return fasttext.load_model(path)


def predict_scores(model, texts: Sequence[str], max_chars: int) -> list[tuple[float, int]]:
    """(expected score over all classes, most probable class) of each text, one batched fastText call."""
    if not texts:
        return []
    labels, probs = model.predict([normalize_text(t, max_chars) for t in texts], k=-1, threshold=0.0)
    out = []
    for names, values in zip(labels, probs):
        classes = [int(n.removeprefix("__label__")) for n in names]
        values = [float(v) for v in values]
        best = classes[max(range(len(values)), key=lambda k: values[k])] if values else 0
        out.append((min(5.0, max(0.0, expected_score(values, classes))), best))
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


def train_classifier(labels_dir: str, out_dir: str, config: ClassifierConfig = ClassifierConfig()) -> dict:
    """Train the fastText quality classifier on the ``train`` split of a label stage; write ``model.bin`` and
    ``metrics.json`` (agreement with the teacher on the ``heldout`` split) into ``out_dir``; return the metrics."""
    started = time.time()
    rows = read_labels(labels_dir)
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: _unit("order", config.seed, r["id"]))
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
    tmp = os.path.join(out_dir, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(f"{tmp}.txt", "w", encoding="utf-8") as f:
            for row in train:
                f.write(
                    f"__label__{_target(row, config.target)} {normalize_text(row['text'] or '', config.max_chars)}\n"
                )
        model = _train_fasttext(
            input=f"{tmp}.txt",
            lr=config.lr,
            epoch=config.epoch,
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
    thresholds = {"strict": config.strict_threshold, "relaxed": config.relaxed_threshold}

    def evaluate(split_rows: list[dict]) -> dict | None:
        if not split_rows:
            return None
        predicted = predict_scores(model, [r["text"] or "" for r in split_rows], config.max_chars)
        return agreement(
            [float(r["score"]) for r in split_rows],
            [_target(r, config.target) for r in split_rows],
            [p[0] for p in predicted],
            [p[1] for p in predicted],
            thresholds,
            config.confidence,
        )

    labels_summary = read_json(join(labels_dir, SUCCESS_FILE)) or {}
    metrics = {
        "model_sha256": sha256_file(model_path),
        "model_bytes": os.path.getsize(model_path),
        "config": dataclasses.asdict(config),
        "normalize": NORMALIZE_VERSION,
        "labels_dir": labels_dir,
        "teacher": labels_summary.get("model"),
        "rubric_version": labels_summary.get("rubric_version"),
        "counts": {
            "labels": len(rows),
            "train": len(train),
            "heldout": len(heldout),
            "train_classes": dict(sorted(Counter(str(_target(r, config.target)) for r in train).items())),
            "heldout_classes": dict(sorted(Counter(str(_target(r, config.target)) for r in heldout).items())),
        },
        "classes": sorted(int(label.removeprefix("__label__")) for label in model.labels),
        "heldout": evaluate(heldout),
        "train": evaluate(train),
        "seconds": round(time.time() - started, 2),
    }
    write_json_atomic(metrics_path, metrics)  # last: it commits model.bin
    return metrics


def classifier_fingerprint(classifier_dir: str) -> str:
    """sha256 of a committed classifier's ``model.bin`` (checked against its ``metrics.json``)."""
    metrics = read_json(os.path.join(classifier_dir, METRICS_FILE))
    model_path = os.path.join(classifier_dir, MODEL_FILE)
    if metrics is None or not os.path.exists(model_path):
        raise ValueError(f"{classifier_dir} holds no trained classifier ({METRICS_FILE} + {MODEL_FILE}): run `train`")
    sha = sha256_file(model_path)
    if sha != metrics.get("model_sha256"):
        raise ValueError(f"{model_path} does not match its {METRICS_FILE} (a training run was cut short): retrain")
    return sha


# ---------------------------------------------------------------------------------------------------- score/tier


def histogram_bin(score: float) -> int:
    return min(HIST_BINS - 1, max(0, int(score / HIST_BIN_WIDTH)))


HIST_EDGES = [round(k * HIST_BIN_WIDTH, 2) for k in range(HIST_BINS + 1)]


class QualityScorer(DocumentProcessor):
    """Adds ``quality_score`` (the classifier's expected score, 0-5) to every document; drops nothing."""

    stage = SCORE_STAGE
    data_schema = SCORED_SCHEMA

    def __init__(self, classifier_dir: str):
        self.classifier_dir = classifier_dir
        self.fingerprint = classifier_fingerprint(classifier_dir)
        metrics = read_json(os.path.join(classifier_dir, METRICS_FILE)) or {}
        self.max_chars = int(metrics["config"]["max_chars"])
        self.normalize = metrics.get("normalize")
        self._model = None

    def config(self) -> dict:
        return {
            "classifier_sha256": self.fingerprint,
            "normalize": self.normalize,
            "max_chars": self.max_chars,
            "hist_bin_width": HIST_BIN_WIDTH,
        }

    def setup(self) -> None:
        if self._model is None:
            path = os.path.join(self.classifier_dir, MODEL_FILE)
            if sha256_file(path) != self.fingerprint:
                raise RuntimeError(f"{path} changed while the stage ran: rerun to score with the new classifier")
            self._model = _load_fasttext(path)

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        self.setup()
        for doc, (score, _) in zip(docs, predict_scores(self._model, [d["text"] for d in docs], self.max_chars)):
            doc["quality_score"] = score
            yield doc, None

    def new_summary(self) -> dict:
        return {"score_histogram": [0] * HIST_BINS, "score_histogram_by_lang": {}, "score_sum": 0.0}

    def summarize(self, doc: dict, summary: dict) -> None:
        k = histogram_bin(doc["quality_score"])
        summary["score_histogram"][k] += 1
        by_lang = summary["score_histogram_by_lang"].setdefault(doc.get("lang") or "unknown", [0] * HIST_BINS)
        by_lang[k] += 1
        summary["score_sum"] += doc["quality_score"]

    def __getstate__(self) -> dict:  # the fastText model does not pickle: each worker loads it in setup()
        return {**self.__dict__, "_model": None}


@dataclass(frozen=True)
class TierConfig:
    strict_threshold: float = STRICT_THRESHOLD
    relaxed_threshold: float = RELAXED_THRESHOLD

    def __post_init__(self) -> None:
        for name, value in self.tiers().items():
            if not 0.0 <= value <= 5.0:
                raise ValueError(f"{name}_threshold must be in [0, 5], got {value}")
        if self.relaxed_threshold > self.strict_threshold:
            raise ValueError(
                f"relaxed_threshold ({self.relaxed_threshold}) must not exceed strict ({self.strict_threshold})"
            )

    def tiers(self) -> dict[str, float]:
        """Tier name -> minimum score."""
        return {"strict": self.strict_threshold, "relaxed": self.relaxed_threshold}


def quality_flags(doc: Mapping[str, Any]) -> list[str]:
    """The web-chain rules a document fails although its quality profile kept it (``metadata.quality_flags``,
    written by ``pipelines.quality``): empty for a document the web chain keeps too."""
    meta = doc.get("metadata")
    if not meta or "quality_flags" not in meta:
        return []
    try:
        flags = json.loads(meta).get("quality_flags")
    except (ValueError, AttributeError):
        return []
    return [str(flag) for flag in flags] if isinstance(flags, list) else []


def _count_flagged(counts: dict, flags: list[str], kept: bool) -> None:
    counts["flagged_in"] += 1
    if kept:  # saved by the classifier: a heuristic would have dropped it, the score puts it in the tier
        counts["flagged_out"] += 1
        for flag in flags:
            counts["flagged_out_by_rule"][flag] = counts["flagged_out_by_rule"].get(flag, 0) + 1


def flagged_sample(scored_files: Sequence[str], threshold: float, size: int = 10) -> list[dict]:
    """Up to ``size`` flagged documents of the scored shards with both verdicts (the web chain's failed rules, the
    classifier's score and tier decision), those the tier keeps first; reads four columns of a few shards."""
    import pyarrow.parquet as pq

    saved: list[dict] = []
    rejected_: list[dict] = []
    for path in sorted(scored_files):
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            table = pq.read_table(f, columns=["id", "lang", "metadata", "quality_score"])
        for row in table.to_pylist():
            flags = quality_flags(row)
            if not flags:
                continue
            score = row["quality_score"]
            kept = score is not None and score >= threshold
            entry = {
                "id": row["id"],
                "lang": row["lang"],
                "profile": json.loads(row["metadata"]).get("quality_profile"),
                "web_chain": ", ".join(flags),
                "score": None if score is None else round(float(score), 3),
                "tier": "kept" if kept else "dropped",
            }
            (saved if kept else rejected_).append(entry)
        if len(saved) >= size:
            break
    return (saved + rejected_)[:size]


def tier_shard(path: str, tiers: Mapping[str, tuple[str, float]], count=None) -> dict[str, dict]:
    """Read one scored shard once and write its documents with score >= threshold into every tier folder
    (``tiers``: name -> (folder, threshold)), as DOCUMENT_SCHEMA shards; tiers already committed for this very
    shard are skipped. Returns each tier's counters."""
    import pyarrow.parquet as pq

    count = count or (lambda name, n=1: None)
    key, fingerprint = shard_key(path), input_fingerprint(path)
    done = {name: committed_stats(folder, key, fingerprint) for name, (folder, _) in tiers.items()}
    todo = {name: spec for name, spec in tiers.items() if done[name] is None}
    if not todo:
        count("shards_resumed")
        return done
    stats = {name: ShardStats() for name in todo}
    flagged = {name: {"flagged_in": 0, "flagged_out": 0, "flagged_out_by_rule": {}} for name in todo}
    bytes_in = 0
    with contextlib.ExitStack() as stack:
        writers = {name: stack.enter_context(shard_writers(folder, key)) for name, (folder, _) in todo.items()}
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=[*DOCUMENT_COLUMNS, "quality_score"]):
                for row in batch.to_pylist():
                    score = row.pop("quality_score")
                    bytes_in += len(row["text"].encode("utf-8"))
                    flags = quality_flags(row)
                    for name, (_, threshold) in todo.items():
                        stats[name].docs_in += 1
                        kept = score is not None and score >= threshold
                        if kept:
                            writers[name]["data"].write(row)
                            stats[name].keep(row)
                        else:
                            stats[name].drop("below_threshold")
                        if flags:
                            _count_flagged(flagged[name], flags, kept)
    for name, (folder, _) in todo.items():
        done[name] = {**stats[name].to_dict(), "bytes_in": bytes_in, **flagged[name]}
        commit_shard(folder, key, path, fingerprint, done[name])
        count(f"{name}_docs_out", stats[name].docs_out)
    count("shards_processed")
    return done


def _tier_dofn(tiers: Mapping[str, tuple[str, float]]):
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class TierShard(beam.DoFn):
        def setup(self):
            self._counters = {}

        def _count(self, name: str, n: int = 1) -> None:
            if name not in self._counters:
                self._counters[name] = Metrics.counter(TIER_STAGE, name)
            self._counters[name].inc(n)

        def process(self, path: str):
            yield tier_shard(path, tiers, self._count)

    return TierShard()


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def write_tiers(
    scored_dir: str,
    tiers_dir: str,
    config: TierConfig = TierConfig(),
    *,
    workers: int | None = None,
    beam_args: Sequence[str] | None = None,
) -> dict[str, dict]:
    """The tier pass: one Beam pass over the finished scored stage writes every tier folder
    (``tiers_dir/<name>``); returns each tier's summary (also its ``_SUCCESS.json``)."""
    import apache_beam as beam

    scored_summary = read_json(join(scored_dir, SUCCESS_FILE))
    scored_config = read_json(join(scored_dir, "_config.json"))
    if scored_summary is None or scored_config is None:
        raise ValueError(f"{scored_dir} is not a finished scored stage: run `score` first")
    files = list_shards(scored_dir)
    keys = sorted(shard_key(f) for f in files)
    classifier_sha = scored_config.get("processor", {}).get("classifier_sha256")
    with contextlib.ExitStack() as stack:  # every tier folder checked, locked and prepared
        tiers, resumed = {}, {}
        for name, threshold in config.tiers().items():
            folder = join(tiers_dir, name)
            tier_config = {"stage": TIER_STAGE, "tier": name, "threshold": threshold, "scored": scored_config}
            resumed[name] = stack.enter_context(open_stage(folder, tier_config, [scored_dir]))
            if resumed[name]:
                remove_stale_shards(folder, set(keys))
            tiers[name] = (folder, threshold)
        started = time.time()
        beam_counters = run_pipeline(
            lambda p: (
                p
                | "ScoredShards" >> beam.Create(files)
                | "Spread" >> beam.Reshuffle()
                | "Tier" >> beam.ParDo(_tier_dofn(tiers))
            ),
            beam_args,
            workers,
        )
        seconds = time.time() - started
        scored_langs = scored_summary.get("languages", {})
        summaries = {}
        for name, (folder, threshold) in tiers.items():
            merged = merge_stats(read_json(done_marker(folder, key))["stats"] for key in keys)
            tier_langs = merged.get("languages", {})
            extra = {
                "tier": name,
                "threshold": threshold,
                "scored_dir": scored_dir,
                "classifier_sha256": classifier_sha,
                "share_docs": _share(merged.get("docs_out", 0), merged.get("docs_in", 0)),
                "share_bytes": _share(merged.get("bytes_out", 0), merged.get("bytes_in", 0)),
                "language_share": {
                    lang: _share(tier_langs.get(lang, 0), n) for lang, n in sorted(scored_langs.items())
                },
                # documents a heuristic would have dropped (their quality profile kept them) that the score keeps
                "flagged_docs": merged.get("flagged_in", 0),
                "flagged_kept": merged.get("flagged_out", 0),
                "flagged_kept_share": _share(merged.get("flagged_out", 0), merged.get("flagged_in", 0)),
                "flagged_kept_by_rule": merged.get("flagged_out_by_rule", {}),
                "flagged_sample": flagged_sample(files, threshold),
            }
            summaries[name] = finish_stage(folder, TIER_STAGE, keys, beam_counters, seconds, resumed[name], extra)
        return summaries


def tier_subset_problems(strict_dir: str, relaxed_dir: str, limit: int = 20) -> list[str]:
    """Ids in the strict tier that are missing from the relaxed one (up to ``limit``): both tiers are cut from
    the same scored shards, so shard by shard the strict ids must be a subset of the relaxed ids."""
    import pyarrow.parquet as pq

    def ids(path: str) -> set[str]:
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            return set(pq.read_table(f, columns=["id"]).column("id").to_pylist())

    # shards of both tiers are named after the same scored shard (shard_key hashes the folder too: not comparable)
    relaxed = {posixpath.basename(p): p for p in list_shards(relaxed_dir)}
    missing: list[str] = []
    for path in list_shards(strict_dir):
        other = relaxed.get(posixpath.basename(path))
        extra = ids(path) - (ids(other) if other else set())
        missing += sorted(extra)[: limit - len(missing)]
        if len(missing) >= limit:
            break
    return missing


def score_and_tier(
    docs_dir: str,
    classifier_dir: str,
    scored_dir: str,
    tiers_dir: str,
    config: TierConfig = TierConfig(),
    *,
    workers: int | None = None,
    beam_args: Sequence[str] | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> dict:
    """Score every document under ``docs_dir`` once into ``scored_dir``, then write the tiers from the stored
    scores into ``tiers_dir/<tier>``. Returns ``{"scored": summary, "tiers": {name: summary}}``."""
    scorer = QualityScorer(classifier_dir)
    scored = run_shard_stage(scorer, docs_dir, scored_dir, beam_args, workers, max_doc_bytes)
    scored_docs = scored.get("docs_out", 0)
    by_lang = scored.get("score_histogram_by_lang", {})
    scored.update(
        histogram_edges=HIST_EDGES,
        mean_score=round(scored.get("score_sum", 0.0) / scored_docs, 4) if scored_docs else None,
        classifier_sha256=scorer.fingerprint,
    )
    write_json_atomic(join(scored_dir, SUCCESS_FILE), scored)  # the same summary, with the derived fields
    tiers = write_tiers(scored_dir, tiers_dir, config, workers=workers, beam_args=beam_args)
    overview = {
        name: {
            k: s.get(k)
            for k in (
                "threshold",
                "docs_out",
                "bytes_out",
                "share_docs",
                "share_bytes",
                "languages",
                "resumed",
                "flagged_docs",
                "flagged_kept",
            )
        }
        for name, s in tiers.items()
    }
    return {"scored": scored, "tiers": tiers, "overview": overview, "histogram_by_lang": by_lang}


# ---------------------------------------------------------------------------------------------------------- CLI


def _cmd_label(args: argparse.Namespace) -> dict:
    from synth.generate import make_generator

    cache_dir = args.cache_dir or f"{args.out.rstrip('/')}-cache"
    generator = make_generator(
        args.backend, args.model, cache_dir=cache_dir, base_url=args.base_url, batch_size=args.batch_size
    )
    config = LabelConfig(
        sample_size=args.sample_size,
        seed=args.seed,
        temperature=args.temperature,
        excerpt_tokens=args.excerpt_tokens,
        max_doc_chars=args.max_doc_chars,
        min_choice_mass=args.min_choice_mass,
        heldout_share=args.heldout_share,
        chunk_size=args.chunk_size,
    )
    try:
        return label_documents(generator, args.docs, args.out, config)
    finally:
        generator.close()


def _cmd_train(args: argparse.Namespace) -> dict:
    config = ClassifierConfig(
        max_chars=args.max_chars,
        epoch=args.epoch,
        lr=args.lr,
        dim=args.dim,
        word_ngrams=args.word_ngrams,
        seed=args.seed,
        threads=args.threads,
        target=args.target,
        strict_threshold=args.strict,
        relaxed_threshold=args.relaxed,
        confidence=args.confidence,
    )
    return train_classifier(args.labels, args.out, config)


def _cmd_score(args: argparse.Namespace, beam_args: list[str]) -> dict:
    config = TierConfig(strict_threshold=args.strict, relaxed_threshold=args.relaxed)
    return score_and_tier(
        args.docs, args.classifier, args.scored, args.tiers, config, workers=args.workers, beam_args=beam_args
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    label = sub.add_parser("label", help="rate a sample of documents with the teacher")
    label.add_argument("--docs", required=True, help="curated stage folder (DOCUMENT_SCHEMA shards)")
    label.add_argument("--out", required=True, help="label stage folder")
    label.add_argument("--sample-size", type=bounded(int, 1), default=LabelConfig.sample_size)
    label.add_argument("--seed", type=int, default=0)
    label.add_argument(
        "--temperature",
        type=bounded(float, 1.0),
        default=LabelConfig.temperature,
        help="labels per (language, domain) stratum ~ size ** (1 / T): 1 proportional, larger flatter",
    )
    label.add_argument(
        "--excerpt-tokens",
        type=bounded(int, 1),
        default=LabelConfig.excerpt_tokens,
        help="the teacher sees the first N Qwen2 tokens of each document",
    )
    label.add_argument("--max-doc-chars", type=bounded(int, 1), default=None, help="also cut to N characters")
    label.add_argument("--min-choice-mass", type=bounded(float, 0, 1), default=LabelConfig.min_choice_mass)
    label.add_argument("--heldout-share", type=bounded(float, 0, 1), default=LabelConfig.heldout_share)
    label.add_argument("--chunk-size", type=bounded(int, 1), default=LabelConfig.chunk_size)
    label.add_argument("--backend", default="transformers", choices=("transformers", "openai", "vllm"))
    label.add_argument("--model", default=None, help="checkpoint folder or server model name (default: teacher)")
    label.add_argument("--base-url", default=None, help="openai backend: server URL ending in /v1")
    label.add_argument("--batch-size", type=bounded(int, 1), default=8, help="transformers backend batch size")
    label.add_argument("--cache-dir", default=None, help="request cache (default: <out>-cache)")
    train = sub.add_parser("train", help="train the fastText classifier on the labels")
    train.add_argument("--labels", required=True)
    train.add_argument("--out", required=True, help="classifier folder (model.bin + metrics.json)")
    train.add_argument("--max-chars", type=bounded(int, 1), default=ClassifierConfig.max_chars)
    train.add_argument("--epoch", type=bounded(int, 1), default=ClassifierConfig.epoch)
    train.add_argument("--lr", type=bounded(float, 1e-6, 10), default=ClassifierConfig.lr)
    train.add_argument("--dim", type=bounded(int, 1), default=ClassifierConfig.dim)
    train.add_argument("--word-ngrams", type=bounded(int, 1), default=ClassifierConfig.word_ngrams)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=bounded(int, 1), default=1)
    train.add_argument("--target", default="label", choices=("label", "rounded_score"))
    train.add_argument(
        "--confidence",
        type=bounded(float, 0.5, 0.999),
        default=ClassifierConfig.confidence,
        help="level of the confidence interval of Spearman's rho on the held-out labels",
    )
    score = sub.add_parser("score", help="score every document and write the tiers (extra flags go to Beam)")
    score.add_argument("--docs", required=True)
    score.add_argument("--classifier", required=True)
    score.add_argument("--scored", required=True, help="scored stage folder")
    score.add_argument("--tiers", required=True, help="folder of the tier stage folders (strict/, relaxed/)")
    score.add_argument("--workers", type=bounded(int, 1), default=None)
    for p in (train, score):
        p.add_argument(
            "--strict", type=bounded(float, 0, 5), default=STRICT_THRESHOLD, help="strict tier: score >= this"
        )
        p.add_argument(
            "--relaxed", type=bounded(float, 0, 5), default=RELAXED_THRESHOLD, help="relaxed tier: score >= this"
        )
    args, beam_args = parse_stage_args(parser, argv)
    if beam_args and args.command != "score":
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    from synth.generate import GenerationError
    from synth.teacher import TeacherUnavailable

    try:
        if args.command == "label":
            summary = _cmd_label(args)
        elif args.command == "train":
            summary = _cmd_train(args)
        else:
            summary = _cmd_score(args, beam_args)
    except (GenerationError, TeacherUnavailable, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "score":
        print_summary({"scored": {k: v for k, v in summary["scored"].items() if k != "beam_counters"}})
        print(json.dumps({"tiers": summary["overview"]}, indent=1, ensure_ascii=False))
    else:
        print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "LABELS_SCHEMA",
    "RUBRICS",
    "RUBRIC_VERSION",
    "SCORED_SCHEMA",
    "SCORE_CHOICES",
    "ClassifierConfig",
    "LabelConfig",
    "QualityScorer",
    "TierConfig",
    "agreement",
    "balanced_quotas",
    "base_language",
    "classifier_fingerprint",
    "excerpts",
    "expected_score",
    "heldout_ids",
    "iter_documents",
    "label_documents",
    "normalize_text",
    "predict_scores",
    "read_labels",
    "rubric_messages",
    "sample_documents",
    "score_and_tier",
    "spearman_interval",
    "split_of",
    "stratified_quotas",
    "train_classifier",
    "write_tiers",
]
