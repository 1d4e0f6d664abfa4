"""Model-based quality labels (Qwen2: "Qwen models judge data quality"): teacher labels, a fastText classifier, tiers.

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
   A rating whose digits got less than ``min_choice_mass`` (0.5) of the probability is rejected (``off_format``);
   0 keeps everything (the tiny random test model puts ~1e-5 on digits). The ``heldout_share`` of the sampled
   documents with the smallest hash of the id are the ``heldout`` split (``heldout_ids``). Rows: ``LABELS_SCHEMA``.
2. ``train``: fastText supervised on the ``train`` split. By default (``target="score_bins"``) the teacher's
   expected score is cut into ``bins`` classes of equal size on the training labels, and a class stands for its rows'
   mean teacher score (``class_values`` in ``metrics.json``): a small teacher's digit distribution is flat, so its
   most probable digit is mostly noise (on the demo's 300 labels, held-out Spearman's rho 0.69 with score bins
   against 0.12 with ``label``). ``target="label"`` (the teacher's digit) and ``"rounded_score"`` train one class per
   score 0..5. Predicted score = expected value of the class scores over all class probabilities (``k=-1``).
   Text is normalised the same way for training and scoring (``normalize_text``: truncated, lowercased,
   punctuation and CJK characters split off, newlines to spaces). ``model.bin`` and
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

Modules: ``rubric`` (the 0-5 scale and its prompts), ``label`` (sampling + teacher labels), ``classifier``
(fastText training + agreement with the teacher), ``tiers`` (scoring + tiers), ``__main__`` (the command line).
The settings of the three commands are ``synth.settings``' ``LabelSettings``, ``ClassifierSettings`` and
``TierSettings``. Kept import-free so the Dagster code location can import the package without pyarrow or torch.

    python -m synth.labels label --docs data/curated/dedup --out data/quality/labels --sample-size 500
    python -m synth.labels label --docs data/curated/dedup --out data/quality/labels --backend openai \\
        --model Qwen/Qwen2-72B-Instruct --base-url http://127.0.0.1:8000/v1 --chunk-size 256
    python -m synth.labels train --labels data/quality/labels --out data/quality/classifier
    python -m synth.labels score --docs data/curated/dedup --classifier data/quality/classifier \\
        --scored data/quality/scored --tiers data/quality/tiers --strict-threshold 3.0 --relaxed-threshold 2.0
"""
