"""Parquet schemas: the contract between stages.

Every curated shard holds rows of ``DOCUMENT_SCHEMA``. Columns a stage has not
filled yet are null (``lang`` before language ID, ``dup_cluster_size`` before
dedup). Dropped documents go to ``excluded/`` shards with the same columns plus
``drop_stage`` and ``drop_reason``; records that could not be read at all go to
``errors/`` shards of ``ERROR_SCHEMA``.

| column            | type    | meaning                                                       |
|-------------------|---------|---------------------------------------------------------------|
| id                | string  | stable document id (given, or derived from source + offset)  |
| text              | string  | UTF-8 plain text                                              |
| url               | string  | where the document came from (WARC target URI), may be null  |
| source            | string  | input file (basename) or dataset the document was read from  |
| domain            | string  | ``web`` or ``code`` (drives which filters apply)              |
| lang              | string  | ISO 639-1 code from language ID (``code`` for source code)    |
| lang_score        | float32 | fastText lid.176 probability of ``lang``                      |
| date              | string  | crawl/record date if known                                    |
| metadata          | string  | JSON object with any other input fields                       |
| dup_cluster       | string  | id of the duplicate cluster's kept document (after dedup)    |
| dup_cluster_size  | int32   | documents in that cluster (1 = unique)                        |
"""

from __future__ import annotations

import pyarrow as pa

DOCUMENT_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("source", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float32()),
    pa.field("date", pa.string()),
    pa.field("metadata", pa.string()),
    pa.field("dup_cluster", pa.string()),
    pa.field("dup_cluster_size", pa.int32()),
]
DOCUMENT_SCHEMA = pa.schema(DOCUMENT_FIELDS)

EXCLUDED_SCHEMA = pa.schema(
    DOCUMENT_FIELDS + [pa.field("drop_stage", pa.string()), pa.field("drop_reason", pa.string())]
)

ERROR_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("record", pa.string()),  # offset / row / record id inside the file
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("preview", pa.string()),  # first bytes of the bad record, for a person to look at
    ]
)

DOCUMENT_COLUMNS = [f.name for f in DOCUMENT_FIELDS]


def empty_document(**values) -> dict:
    """A row of DOCUMENT_SCHEMA with every column present (unset ones None)."""
    row = dict.fromkeys(DOCUMENT_COLUMNS)
    row.update(values)
    return row


def excluded_row(doc: dict, stage: str, reason: str) -> dict:
    row = {k: doc.get(k) for k in DOCUMENT_COLUMNS}
    row["drop_stage"] = stage
    row["drop_reason"] = reason
    return row


def error_row(source_file: str, record: str, reason: str, detail: str = "", preview: bytes | str = b"") -> dict:
    if isinstance(preview, bytes):
        preview = preview[:200].decode("utf-8", errors="replace")
    return {
        "source_file": source_file,
        "record": str(record),
        "reason": reason,
        "detail": detail[:1000],
        "preview": preview[:200],
    }


# Mixture shards (``pipelines.mixing``): curated documents chosen for a pretraining mix,
# one row per *copy* (a bucket sampled above its natural size repeats documents).
#
# | column   | type   | meaning                                                                   |
# |----------|--------|---------------------------------------------------------------------------|
# | bucket   | string | mixture bucket: ``<domain>/<lang>`` (``web/de``, ``code/code``, ...)      |
# | n_tokens | int32  | Qwen2 tokens of ``text`` (without the ``<|endoftext|>`` separator)        |
# | copy     | int16  | 0 for the first copy of a document in this mix, 1.. for repeats          |
# | heldout  | bool   | in the validation slice (chosen by a hash of the source document's id)   |
#
# A document longer than the index's ``max_doc_tokens`` (the stage-2 context) is cut into
# pieces of at most that many tokens, ids ``<id>#<k>``; the pieces share the source's split.
MIXED_FIELDS: list[pa.Field] = DOCUMENT_FIELDS + [
    pa.field("bucket", pa.string()),
    pa.field("n_tokens", pa.int32()),
    pa.field("copy", pa.int16()),
    pa.field("heldout", pa.bool_()),
]
MIXED_SCHEMA = pa.schema(MIXED_FIELDS)

# Packed training shards (``pipelines.tokenize_shards``): fixed-length token sequences.
# Documents are tokenized with the Qwen2 tokenizer, each followed by ``<|endoftext|>``
# (151643), and concatenated; a document may continue from one sequence into the next.
# ``doc_lengths`` splits a row into its document segments (sum == seq_len), so a trainer
# can restart ``position_ids`` at every segment and mask attention per document.
#
# | column      | type         | meaning                                                          |
# |-------------|--------------|------------------------------------------------------------------|
# | input_ids   | list<int32>  | exactly ``seq_len`` token ids (seq_len is in the stage _config)  |
# | doc_lengths | list<int32>  | lengths of the document segments in order; they sum to seq_len  |
# | seq_index   | int64        | row number inside the shard after the seeded shuffle             |
PACKED_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("doc_lengths", pa.list_(pa.int32()), nullable=False),
        pa.field("seq_index", pa.int64(), nullable=False),
    ]
)

# Synthetic data (``synth/``): SFT conversations and preference pairs, the contract with the SFT and DPO trainers.
# Messages are ChatML turns (``synth.llm.chat``); a conversation starts with an optional system turn, then user and
# assistant alternate, and it ends with an assistant turn. Every row says how it was made:
#
# | column           | type                 | meaning                                                          |
# |------------------|----------------------|------------------------------------------------------------------|
# | id               | string               | stable id: hash of the method and what the row was made from     |
# | messages         | list<struct<role, content>> | (SFT) the conversation                                    |
# | prompt           | list<struct<role, content>> | (preference) the conversation up to the last user turn    |
# | chosen, rejected | list<struct<role, content>> | (preference) one assistant turn each (TRL's conversational form) |
# | chosen_score, rejected_score | float32  | (preference) the judge's expected scores                          |
# | method           | string               | instruction / math_rejection / code_execution / repurpose / ...  |
# | lang             | string               | language of the conversation (ISO 639-1, ``code``)               |
# | source_id        | string               | seed prompt, document or task the row came from                  |
# | model            | string               | teacher model id that generated the final text                   |
# | backend          | string               | transformers / openai / vllm                                     |
# | sampling         | string               | JSON: the sampling parameters of the final generation            |
# | template_version | string               | the method's prompt-template version                             |
# | meta             | string               | JSON: method details (reference answer, tests run, critique ...) |
MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
SYNTH_PROVENANCE_FIELDS: list[pa.Field] = [
    pa.field("method", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("source_id", pa.string()),
    pa.field("model", pa.string()),
    pa.field("backend", pa.string()),
    pa.field("sampling", pa.string()),
    pa.field("template_version", pa.string()),
    pa.field("meta", pa.string()),
]
SFT_SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False)]
    + SYNTH_PROVENANCE_FIELDS
)
PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("chosen", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("rejected", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("chosen_score", pa.float32()),
        pa.field("rejected_score", pa.float32()),
    ]
    + SYNTH_PROVENANCE_FIELDS
)
# What a synthesis method did not keep, and why (``excluded/`` shards of the synthetic stages).
SYNTH_REJECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("method", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("preview", pa.string()),
    ]
)
