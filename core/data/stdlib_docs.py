"""Question/answer and code material mined from the running Python's standard library.

Every Python installation carries docstrings and signatures; reading them (no network, no files
outside the interpreter) gives the sample corpus real English and real code. Modules are visited
in sorted order and attributes by sorted name, so the result is the same on every run of the
same Python build. The scan runs in a fresh interpreter (``python -I``) because libraries loaded
in the caller may monkeypatch stdlib functions (torch, for one, replaces ``inspect.getfile``).

This file only imports the standard library so it can run as a script.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass

# Pure-library modules present on every CPython build; import failures are skipped.
STDLIB_MODULES: tuple[str, ...] = tuple(
    sorted(
        """abc argparse array ast base64 binascii bisect bz2 calendar cmath codecs collections
        collections.abc colorsys configparser contextlib copy csv dataclasses datetime decimal
        difflib dis email.utils enum filecmp fnmatch fractions functools getopt gettext glob
        graphlib gzip hashlib heapq hmac html html.parser http.client http.cookies inspect io
        ipaddress itertools json keyword linecache locale logging lzma math mimetypes numbers
        operator os pathlib pickle pkgutil platform plistlib pprint queue quopri random re reprlib
        sched secrets selectors shelve shlex shutil smtplib socket sqlite3 statistics string
        struct subprocess tarfile tempfile textwrap threading time timeit tokenize traceback types
        typing unicodedata urllib.parse urllib.request uuid warnings weakref xml.dom.minidom
        xml.etree.ElementTree zipfile zlib zoneinfo""".split()
    )
)

MAX_SUMMARY_CHARS = 400
MAX_SIGNATURE_CHARS = 240
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass(frozen=True)
class DocEntry:
    """One documented public callable: its dotted name, kind, one-paragraph summary, signature."""

    name: str
    kind: str  # "function" | "class" | "method"
    summary: str
    signature: str | None


def summarize(doc: str) -> str | None:
    """First real paragraph of a docstring, one line, at most MAX_SUMMARY_CHARS (whole sentences)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    for para in paragraphs:
        text = " ".join(para.split())
        if _SIGNATURE_LINE.match(text) or len(text) < 25:
            continue  # old-style "name(args) -> type" header line, or too short to teach anything
        if len(text) > MAX_SUMMARY_CHARS:
            ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= MAX_SUMMARY_CHARS]
            if not ends:
                return None
            text = text[: ends[-1]]
        return text
    return None


# Defaults that hold this installation's paths (``platform.architecture(executable=...)``) are
# written symbolically, so the sample corpus — and every tokenizer and model trained on it — is
# the same on every machine and in every checkout.
_MACHINE_VALUES = (("sys.executable", sys.executable), ("sys.prefix", sys.prefix),
                   ("sys.base_prefix", sys.base_prefix))


def _signature(name: str, obj: object) -> str | None:
    try:
        sig = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    for symbol, value in _MACHINE_VALUES:
        if value:
            sig = sig.replace(repr(value), symbol)
    # Reprs with addresses change between runs; very long ones are not good samples.
    if " at 0x" in sig or len(sig) > MAX_SIGNATURE_CHARS:
        return None
    return f"{name}{sig}"


def _is_callable_kind(obj: object) -> bool:
    return inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)


def _own(obj: object, modname: str) -> bool:
    owner = getattr(obj, "__module__", None)
    return isinstance(owner, str) and (owner == modname or owner.startswith(modname + "."))


def collect_doc_entries(modules: tuple[str, ...] = STDLIB_MODULES) -> list[DocEntry]:
    """Documented public functions, classes and methods of ``modules``, deduplicated by summary."""
    entries: list[DocEntry] = []
    seen_objects: set[int] = set()
    seen_summaries: set[str] = set()

    def add(name: str, kind: str, obj: object) -> None:
        doc = getattr(obj, "__doc__", None)
        if not isinstance(doc, str):
            return
        summary = summarize(doc)
        if summary is None or summary in seen_summaries:
            return
        seen_summaries.add(summary)
        entries.append(DocEntry(name, kind, summary, _signature(name, obj)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in modules:
            try:
                module = importlib.import_module(modname)
            except Exception:  # noqa: BLE001 - a module missing from this build is simply skipped
                continue
            namespace = vars(module)
            for attr in sorted(namespace):
                obj = namespace[attr]
                if attr.startswith("_") or not _is_callable_kind(obj) or not _own(obj, modname):
                    continue
                if id(obj) in seen_objects:
                    continue
                seen_objects.add(id(obj))
                full = f"{modname}.{attr}"
                if inspect.isclass(obj):
                    add(full, "class", obj)
                    members = vars(obj)
                    for meth in sorted(members):
                        fn = members[meth]
                        if meth.startswith("_"):
                            continue
                        if inspect.isfunction(fn) or inspect.ismethoddescriptor(fn):
                            add(f"{full}.{meth}", "method", fn)
                else:
                    add(full, "function", obj)
    return entries


def collect_doc_entries_isolated(timeout: float = 120.0) -> list[DocEntry]:
    """:func:`collect_doc_entries` in a clean ``python -I`` child, immune to monkeypatching by
    modules the caller has loaded; falls back to the in-process scan if no child can run."""
    try:
        proc = subprocess.run(
            [sys.executable, "-I", __file__],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        rows = json.loads(proc.stdout.decode("utf-8"))
        return [DocEntry(**row) for row in rows]
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return collect_doc_entries()


if __name__ == "__main__":
    sys.stdout.buffer.write(
        json.dumps([asdict(e) for e in collect_doc_entries()], ensure_ascii=False).encode("utf-8")
    )
