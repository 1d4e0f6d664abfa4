"""The command line of the quality labels: ``label`` (teacher ratings), ``train`` (fastText classifier), ``score``
(scores + tiers; extra flags go to Beam). See ``synth.labels``."""

from __future__ import annotations

import argparse
import json
import sys

import synth.labels
from pipelines.beam_stage import (
    ArgumentParser,
    bounded,
    parse_stage_args,
    print_summary,
)
from synth.labels.classifier import ClassifierConfig, train_classifier
from synth.labels.label import LabelConfig, label_documents
from synth.labels.rubric import RELAXED_THRESHOLD, STRICT_THRESHOLD
from synth.labels.tiers import TierConfig, score_and_tier
from synth.llm.base import GenerationError, TeacherUnavailable
from synth.llm.generate import make_generator

# ---------------------------------------------------------------------------------------------------------- CLI


def _cmd_label(args: argparse.Namespace) -> dict:
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
    parser = ArgumentParser(description=synth.labels.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
