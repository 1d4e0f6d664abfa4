"""Fixture corpus made by the tests themselves (no ../shared): real sentences in several languages, written
as WARC and JSONL, with near-duplicates, exact duplicates, junk, source code and malformed records."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is never reachable from tests

SESSION_DIR_PREFIX = "session-"  # folders of session-scoped fixtures: they live until the session ends


@pytest.fixture(scope="module", autouse=True)
def _remove_module_folders(request, tmp_path_factory):
    """Delete the folders a test module's own fixtures made, once its tests have passed.

    The training fixtures write checkpoints of ~150 MB (the tiny models carry the real 151k-token vocabulary), and
    kept to the end of the session they added up to 18 GB, which filled CI's disk. Each test's own ``tmp_path`` goes
    when it passes (``tmp_path_retention_policy = "failed"`` in pyproject.toml); this does the same for the module's
    folders. A module with a failure keeps everything for inspection."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures = request.session.testsfailed
    yield
    if request.session.testsfailed != failures:
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(SESSION_DIR_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


EN = [
    "The package manager keeps track of every file that belongs to an installed program.",
    "When you upgrade the system, it compares the versions and downloads only what has changed.",
    "Most users never need to edit the configuration files by hand, because the defaults are sensible.",
    "If something goes wrong during an upgrade, the logs in the system journal usually explain why.",
    "A backup of the home directory should be made before any major change to the machine.",
    "The installer asks a few questions about the keyboard layout, the time zone and the disk partitions.",
    "Security updates are published as soon as a fix is available and should be applied quickly.",
    "Each release is supported for several years, which gives administrators time to plan migrations.",
    "Documentation is available in many languages and is maintained by a community of volunteers.",
    "The kernel detects most hardware automatically and loads the right drivers at boot time.",
    "Network settings can be changed with a graphical tool or with a short text file.",
    "Printing works out of the box for many printers, although some need an extra driver package.",
    "A mirror close to you makes downloads faster and reduces the load on the main servers.",
    "The bug tracking system is public, so anyone can report a problem or follow its progress.",
    "Software that is not free is kept in a separate area of the archive and is clearly labelled.",
    "Old packages that are no longer needed can be removed to free some space on the disk.",
    "The command line gives precise control, but the desktop tools cover the common tasks as well.",
    "A good habit is to read the release notes before moving to a new version of the system.",
    "Users can be given administrative rights for a single command without sharing the root password.",
    "The firewall is off by default on a desktop, yet it takes only a minute to enable it.",
    "Virtual machines are a safe way to try a new release without touching the real installation.",
    "Translations of the manual pages are shipped in separate packages for each language.",
    "The search function of the package tools finds programs by name and by description.",
    "When a disk starts to fail, the monitoring service warns the administrator by mail.",
]
DE = [
    "Die Paketverwaltung merkt sich jede Datei, die zu einem installierten Programm gehört.",
    "Bei einer Aktualisierung werden nur die Pakete heruntergeladen, die sich wirklich geändert haben.",
    "Die meisten Benutzer müssen die Konfigurationsdateien nie von Hand bearbeiten.",
    "Wenn bei der Aktualisierung etwas schiefgeht, erklären die Protokolle im Journal meistens den Grund.",
    "Vor jeder größeren Änderung sollte eine Sicherung des Heimatverzeichnisses angelegt werden.",
    "Das Installationsprogramm fragt nach der Tastaturbelegung, der Zeitzone und der Aufteilung der Festplatte.",
    "Sicherheitsaktualisierungen werden veröffentlicht, sobald eine Korrektur verfügbar ist.",
    "Jede Veröffentlichung wird mehrere Jahre lang unterstützt, damit Administratoren Zeit für die Planung haben.",
    "Die Dokumentation gibt es in vielen Sprachen, und sie wird von Freiwilligen gepflegt.",
    "Der Kernel erkennt die meiste Hardware selbst und lädt beim Start die passenden Treiber.",
    "Die Netzwerkeinstellungen lassen sich mit einem grafischen Werkzeug oder einer kurzen Textdatei ändern.",
    "Ein Spiegelserver in der Nähe macht das Herunterladen schneller und entlastet die Hauptserver.",
]
ZH = [
    "软件包管理器会记录每一个已安装程序所包含的文件。",
    "升级系统时，它会比较版本，只下载发生变化的部分。",
    "大多数用户从来不需要手动编辑配置文件，因为默认设置已经很合理。",
    "如果升级过程中出现问题，系统日志通常会说明原因。",
    "在对机器做重大修改之前，应该先备份个人目录。",
    "安装程序会询问键盘布局、时区以及磁盘分区等几个问题。",
    "安全更新在修复可用后会立即发布，应当尽快安装。",
    "每个版本都会得到数年的支持，管理员因此有时间规划迁移。",
    "文档有多种语言的版本，由志愿者社区负责维护。",
    "内核能够自动识别大部分硬件，并在启动时加载合适的驱动程序。",
    "网络设置既可以用图形工具修改，也可以通过一个简短的文本文件修改。",
    "离你较近的镜像服务器可以加快下载速度，并减轻主服务器的负担。",
]
PYTHON_CODE = '''"""Small helpers for reading configuration files."""

import json
from pathlib import Path


def load_config(path: str) -> dict:
    """Read a JSON configuration file and return it as a dictionary."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def config_paths(root: str) -> list[Path]:
    return sorted(Path(root).glob("*.json"))
'''


def paragraph_doc(sentences: list[str], seed: int, n: int = 12, per_line: int = 2) -> str:
    """A document of ``n`` sentences drawn from ``sentences``, ``per_line`` sentences per line."""
    rng = random.Random(seed)
    picked = rng.sample(sentences, min(n, len(sentences)))
    joiner = "" if "。" in sentences[0] else " "
    return "\n".join(joiner.join(picked[i : i + per_line]) for i in range(0, len(picked), per_line))


def html_page(title: str, body: str) -> bytes:
    paragraphs = "".join(f"<p>{line}</p>\n" for line in body.split("\n"))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><nav><a href='/'>Home</a> | <a href='/about'>About</a></nav><main><article><h1>{title}</h1>\n"
        f"{paragraphs}</article></main><footer>Copyright the authors.</footer></body></html>"
    ).encode()


def write_warc(path: Path, pages: list[tuple[str, str, bytes]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, content_type, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            fixed = {  # the same bytes on every run (a random record id moves where a cut file is cut)
                "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url + hashlib.sha1(body).hexdigest())}>",
                "WARC-Date": "2026-01-01T00:00:00Z",
            }
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=headers, warc_headers_dict=fixed
            )
            writer.write_record(record)


def make_crawl(root: Path) -> dict:
    """A small crawl: returns what a correct pipeline must find in it."""
    root.mkdir(parents=True, exist_ok=True)
    en_docs = [paragraph_doc(EN, seed) for seed in range(6)]
    pages = [
        (f"https://docs.example/en/page{i}.html", "text/html; charset=utf-8", html_page(f"Guide {i}", d))
        for i, d in enumerate(en_docs)
    ]
    near_dup = en_docs[0].replace(" the ", " a ", 1)  # one word differs: a near duplicate
    pages.append(("https://mirror.example/en/page0.html", "text/html; charset=utf-8", html_page("Guide 0", near_dup)))
    pages.append(("https://copy.example/en/page1.html", "text/html; charset=utf-8", html_page("Guide 1", en_docs[1])))
    pages.append(
        (
            "https://junk.example/x.html",
            "text/html; charset=utf-8",
            html_page("Buy", "buy now buy now\nbuy now buy now\nbuy now buy now"),
        )
    )
    pages.append(("https://code.example/lib/config.py", "text/x-python; charset=utf-8", PYTHON_CODE.encode()))
    write_warc(root / "site.warc.gz", pages)

    # A WARC cut in the middle of a gzip member: what was read before the cut is kept, the rest quarantined.
    write_warc(root / "cut.warc.gz", pages[2:4])
    data = (root / "cut.warc.gz").read_bytes()
    (root / "cut.warc.gz").write_bytes(data[: len(data) * 3 // 4])

    docs = [{"id": "jl-en", "text": paragraph_doc(EN, 7), "url": "https://forum.example/7"}]
    docs += [{"id": f"jl-de{i}", "text": paragraph_doc(DE[i * 6 : i * 6 + 6], i, n=6, per_line=1)} for i in range(2)]
    docs += [{"id": f"jl-zh{i}", "text": paragraph_doc(ZH[i * 6 : i * 6 + 6], i, n=6)} for i in range(2)]
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in docs] + [
        b'{"id": "jl-bad-utf8", "text": "caf\xe9 au lait"}',
        b'{"id": "jl-no-text"}',
        b"{not json",
    ]
    with gzip.open(root / "extra.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return {
        "en_docs": en_docs,
        "near_dup_url": "https://mirror.example/en/page0.html",
        "exact_dup_url": "https://copy.example/en/page1.html",
        "junk_url": "https://junk.example/x.html",
    }


@pytest.fixture(scope="session")
def crawl_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(SESSION_DIR_PREFIX + "crawl")
    make_crawl(root)
    return root


CODE = "def add(a, b):\n    '''Add two numbers.'''\n    return a + b\n\n\nclass Counter:\n    pass\n"


def make_mix_corpus(root: Path) -> Path:
    """JSONL documents in five mixture buckets (web/en, web/de, web/zh, code, math/en), every fifth one long,
    with ``domain`` and ``lang`` set as a curated stage has them. Returns ``root``."""
    pools = {("web", "en"): EN, ("web", "de"): DE, ("web", "zh"): ZH}
    rows = []
    for (domain, lang), pool in pools.items():
        for i in range(40):
            n = 4 if i % 5 else 40
            rows.append({"id": f"{lang}-{i}", "text": paragraph_doc(pool, seed=i, n=n), "domain": domain, "lang": lang})
    for i in range(15):
        rows.append({"id": f"code-{i}", "text": CODE * (1 + i % 3) + f"# file {i}\n", "domain": "code", "lang": "code"})
    for i in range(10):
        text = f"Problem {i}: compute {i} + {i * 3}. Solution: {i} + {i * 3} = {i * 4}. The answer is {i * 4}."
        rows.append({"id": f"math-{i}", "text": text, "domain": "math", "lang": "en"})
    for part in range(3):
        with open(root / f"part{part}.jsonl", "w") as f:
            for row in rows[part::3]:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> str:
    """A tiny randomly initialised Qwen2 (``qwen2_config("tiny")``) with the real Qwen2 tokenizer, saved once per
    session: the stand-in teacher of every synthesis test (fast, never the real teacher)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.tokenizer import load_hf_tokenizer
    from training.model_configs import qwen2_config

    path = tmp_path_factory.mktemp(SESSION_DIR_PREFIX + "tiny-qwen2")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qwen2_config("tiny")).save_pretrained(path)
    load_hf_tokenizer().save_pretrained(path)
    return str(path)


def materialize_curation(assets, resource, instance=None, dumps=None, **kwargs):
    """``dg.materialize`` of curation assets as ``make demo`` runs them: a ``crawl_dump`` partition for each dump
    (default: every entry of the resource's crawl folder; the tests' crawl has three files, so three dumps), all
    of them in one run (a single-run partition range)."""
    import dagster as dg

    from dagster_project.crawl_partitions import crawl_dumps, partition_range, sync_partitions

    instance = instance or dg.DagsterInstance.ephemeral()
    sync_partitions(instance, crawl_dumps(resource) if dumps is None else dumps)
    first, last = partition_range(instance).split("...")
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return dg.materialize(assets, resources={"curation": resource}, instance=instance, tags=tags, **kwargs)
