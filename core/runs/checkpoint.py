"""Checkpoints: safetensors weights + JSON state, written atomically, verified on load.

A checkpoint is a directory (GUIDE "How a run flows" §5)::

    model.safetensors   weights and persistent buffers; a tied weight is stored once
    config.json         the NeuralNetConfig
    tokenizer.json      the tokenizer (plus tokenizer_config.json when the tokenizer writes one)
    input_vocab.json    entity/relation/task names → ids of the knowledge-graph and task inputs
                        (checkpoints written before issue 17 lack it)
    trainer_state.json  global step, RNG states, data position, controller states, best losses
    optimizer.pt        optimizer (and grad-scaler) state; only ever loaded with weights_only=True
    manifest.json       format version, SHA-256 and size of every file, per-tensor SHA-256,
                        lineage (continual.md §1): version uuid, parents, tokenizer and corpus

Saving writes everything into a hidden temporary directory next to the target, fsyncs, and
renames it into place, so a crash or a full disk never leaves a half-written checkpoint under a
real name and never touches the previous checkpoint. Loading checks that every file is present,
every checksum matches, the config matches what the caller expects, and that ``optimizer.pt``
contains only tensors and plain containers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CheckpointError
from core.fileio import file_sha256

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
INPUT_VOCAB_FILE = "input_vocab.json"
OPTIMIZER_FILE = "optimizer.pt"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE)
CHECKPOINTS_DIR = "checkpoints"
STEP_NAME = re.compile(r"^step_(\d+)$")
ALIASES_KEY = "aeron_aliases"
RELATIONS = ("resumed", "continued", "merged", "upgraded")


def step_checkpoint_name(global_step: int) -> str:
    """The name of a periodic checkpoint: ``step_000200``."""
    return f"step_{global_step:06d}"


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any,
    config: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    parents: Iterable[dict[str, str]] = (),
    corpus: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    input_vocab: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``model`` is an ``nn.Module`` or a state dict; ``config`` a NeuralNetConfig (anything with
    ``to_dict()``) or a dict; ``tokenizer`` an object with ``save(directory)``, a path to a
    ``tokenizer.json`` (or a directory holding one), or the JSON text. ``parents`` are lineage
    links ``{"id": <version>, "relation": resumed|continued|merged|upgraded}``. ``extra`` is
    stored in the manifest (e.g. ``global_step``, ``val_loss``, ``run_id``). ``input_vocab`` (the
    JSON form of ``core.data.extras.InputVocab``) is written as ``input_vocab.json``.

    Raises CheckpointError (nothing under ``path`` changes) when any write fails.
    """
    final = Path(path)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(_os_message(f"cannot create checkpoint directory {parent}", exc)) from exc
    parents = list(parents)
    for link in parents:
        if link.get("relation") not in RELATIONS or not link.get("id"):
            raise CheckpointError(f"lineage parent {link!r} needs an id and a relation in {RELATIONS}")
    needed = _expected_bytes(parent, model, optimizer_state)
    _check_free_space(parent, needed)
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        tensor_hashes = _write_model(tmp / MODEL_FILE, model)
        _write_json(tmp / CONFIG_FILE, _config_dict(config))
        _write_tokenizer(tmp, tokenizer)
        if input_vocab is not None:
            _write_json(tmp / INPUT_VOCAB_FILE, input_vocab)
        _write_json(tmp / TRAINER_STATE_FILE, trainer_state)
        if optimizer_state is not None:
            _write_with(tmp / OPTIMIZER_FILE, lambda p: _torch_save(optimizer_state, p))
        files = {}
        for f in sorted(tmp.iterdir()):
            files[f.name] = {"sha256": file_sha256(f), "size": f.stat().st_size}
        tok_sha = files.get(TOKENIZER_FILE, {}).get("sha256")
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": str(uuid.uuid4()),
            "created": time.time(),
            "name": final.name,
            "parents": parents,
            "tokenizer_sha256": tok_sha,
            "corpus": corpus or {},
            "files": files,
            "tensors": tensor_hashes,
            **(extra or {}),
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
        _fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and _is_disk_full(exc):
            # torch.save reports a full disk as RuntimeError ("unexpected pos ..."), safetensors
            # as its own error: whatever the writer, the user sees one line saying what to do.
            raise CheckpointError(_disk_full_message(parent, needed)) from exc
        if isinstance(exc, OSError):
            raise CheckpointError(
                _os_message(f"could not write checkpoint {final}", exc)
                + "; nothing was overwritten and earlier checkpoints are intact"
            ) from exc
        raise
    return final


def _expected_bytes(parent: Path, model: Any, optimizer_state: dict[str, Any] | None) -> int:
    """About how many bytes the new checkpoint takes: the larger of the newest sibling
    checkpoint's size (from its manifest) and the raw size of the tensors to be written."""
    sizes = [_tensor_bytes(model.state_dict() if hasattr(model, "state_dict") else model),
             _tensor_bytes(optimizer_state)]
    try:
        siblings = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        siblings = []
    newest = max(siblings, key=lambda p: _mtime(p / MANIFEST_FILE), default=None)
    if newest is not None:
        try:
            manifest = json.loads((newest / MANIFEST_FILE).read_text(encoding="utf-8"))
            sizes.append(sum(int(f.get("size", 0)) for f in manifest.get("files", {}).values()))
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    return max(sizes)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside nested dicts/lists (no torch import when there are none)."""
    if obj is None:
        return 0
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    numel, size = getattr(obj, "numel", None), getattr(obj, "element_size", None)
    if callable(numel) and callable(size):
        return int(numel()) * int(size())
    return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _free_bytes(directory: Path) -> int | None:
    try:
        return int(shutil.disk_usage(directory).free)
    except OSError:
        return None


def _check_free_space(directory: Path, needed: int) -> None:
    """Refuse to start a write that cannot fit (size × 1.1 for the JSON and filesystem slack)."""
    free = _free_bytes(directory)
    if free is not None and needed > 0 and free < needed * 1.1:
        raise CheckpointError(_disk_full_message(directory, needed))


def _disk_full_message(directory: Path, needed: int) -> str:
    free = _free_bytes(directory)
    free_txt = f"{_size_text(free)} free" if free is not None else "free space unknown"
    return (f"disk full at {directory}: need ~{_size_text(int(needed * 1.1))}, {free_txt}; "
            "free some space, keep fewer checkpoints (--set keep_last=1) or choose another "
            "--run-dir; nothing was overwritten and earlier checkpoints are intact")


def _size_text(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{max(n, 0) / 2**10:,.1f} KiB"


_DISK_FULL_TEXT = ("no space left", "storagefull", "unexpected pos", "file write failed",
                   "disk quota exceeded")


def _is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a full disk or quota, however the writer said it."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if not isinstance(cur, OSError) and any(t in str(cur).lower() for t in _DISK_FULL_TEXT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def state_dict_for_saving(model: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Contiguous CPU tensors with shared storage stored once, plus ``{alias: stored_name}``."""
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    tensors: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, aliases


def _write_tensor_file(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _write_model(path: Path, model: Any) -> dict[str, str]:
    tensors, aliases = state_dict_for_saving(model)
    metadata = {"format": "pt", ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    _write_with(path, lambda p: _write_tensor_file(p, tensors, metadata))
    return {name: tensor_sha256(t) for name, t in tensors.items()}


def _torch_save(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, str(path))


def _write_with(path: Path, writer: Callable[[Path], None]) -> None:
    writer(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    raise CheckpointError(f"cannot save a model config of type {type(config).__name__}")


def _write_tokenizer(directory: Path, tokenizer: Any) -> None:
    if hasattr(tokenizer, "save"):
        tokenizer.save(directory)
        if not (directory / TOKENIZER_FILE).exists():
            raise CheckpointError(f"the tokenizer did not write {TOKENIZER_FILE} into the checkpoint")
        for name in os.listdir(directory):
            if name.startswith("tokenizer"):
                _write_with(directory / name, lambda p: None)
        return
    if isinstance(tokenizer, (str, os.PathLike)) and _existing_path(tokenizer):
        src = Path(tokenizer)
        if src.is_dir():
            for f in sorted(src.glob("tokenizer*.json")):
                _write_bytes(directory / f.name, f.read_bytes())
            if not (directory / TOKENIZER_FILE).exists():
                raise CheckpointError(f"{src} holds no {TOKENIZER_FILE}")
        else:
            _write_bytes(directory / TOKENIZER_FILE, src.read_bytes())
        return
    if isinstance(tokenizer, (str, bytes)):
        data = tokenizer.encode() if isinstance(tokenizer, str) else tokenizer
        _write_bytes(directory / TOKENIZER_FILE, data)
        return
    raise CheckpointError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")


def _existing_path(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` names an existing file or directory (JSON text is not a path: a long
    one makes ``exists()`` raise "File name too long")."""
    try:
        return Path(value).exists()
    except (OSError, ValueError):
        return False


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is moved aside first, then removed."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse directory fsync; the rename is still atomic
    finally:
        os.close(fd)


def _os_message(prefix: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{prefix}: the disk is full (free some space or choose another --run-dir)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{prefix}: permission denied ({exc.strerror}); choose a writable --run-dir"
    return f"{prefix}: {exc.strerror or exc}"


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def tensor_sha256(tensor: Any) -> str:
    """SHA-256 of a tensor's raw bytes (dtype and shape are checked separately by safetensors)."""
    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and verification
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint. ``config`` is a NeuralNetConfig when ``core.model.config`` is present."""

    path: Path
    model_state: dict[str, Any]
    config: Any
    config_dict: dict[str, Any]
    tokenizer_path: Path
    trainer_state: dict[str, Any]
    optimizer_state_path: Path | None
    manifest: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    _tokenizer: Any = field(default=None, repr=False)
    # The JSON form of the input vocabulary; None for checkpoints written before it existed.
    input_vocab: dict[str, Any] | None = None

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (an ``AeronTokenizer``), loaded on first use."""
        if self._tokenizer is None:
            from core.data.tokenizer import AeronTokenizer

            self._tokenizer = AeronTokenizer.load(self.tokenizer_path)
        return self._tokenizer

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    @property
    def global_step(self) -> int:
        return int(self.trainer_state.get("global_step", self.manifest.get("global_step", 0)))

    def load_optimizer_state(self, device: str = "cpu") -> dict[str, Any] | None:
        if self.optimizer_state is None and self.optimizer_state_path is not None:
            self.optimizer_state = load_optimizer_state(self.optimizer_state_path, device)
        return self.optimizer_state


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of checkpoint ``path``; CheckpointError if it is missing or unreadable."""
    ckpt = Path(path)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a checkpoint directory")
    mf = ckpt / MANIFEST_FILE
    if not mf.exists():
        raise CheckpointError(
            f"{ckpt}: incomplete checkpoint, {MANIFEST_FILE} is missing (the save was interrupted?)"
        )
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{mf}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mf}: not a checkpoint manifest (no 'files' table)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{mf}: checkpoint format {version!r} is newer than this aeron-tui reads "
            f"({FORMAT_VERSION}); upgrade aeron-tui"
        )
    return manifest


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check presence, size and SHA-256 of every file; return the manifest or raise."""
    ckpt = Path(path)
    manifest = read_manifest(ckpt)
    files: dict[str, Any] = manifest["files"]
    for name in files:
        _check_entry_name(ckpt, name)
    for entry in ckpt.iterdir():
        if entry.is_symlink():
            raise CheckpointError(
                f"{entry}: is a symbolic link; a checkpoint holds plain files only, so it was "
                "refused (replace the link with a copy of the file)"
            )
    for name in (*REQUIRED_FILES, *files):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name}: file missing from checkpoint {ckpt.name}")
        if name not in files:
            raise CheckpointError(f"{ckpt / name}: not listed in {MANIFEST_FILE}")
    for name, info in files.items():
        f = ckpt / name
        size = f.stat().st_size
        if size != info.get("size"):
            raise CheckpointError(
                f"{f}: size {size} bytes, manifest says {info.get('size')} (truncated or modified)"
            )
        if file_sha256(f) != info.get("sha256"):
            detail = _tensor_mismatch(f, manifest) if name == MODEL_FILE else ""
            raise CheckpointError(f"{f}: checksum mismatch{detail}; the file is corrupted or modified")
    return manifest


def _check_entry_name(ckpt: Path, name: object) -> None:
    """A manifest entry must be a plain file name inside the checkpoint: no ``..``, no absolute
    path, no sub-path (a crafted manifest must not make us read files elsewhere)."""
    text = name if isinstance(name, str) else ""
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or os.path.isabs(text)):
        raise CheckpointError(
            f"{ckpt / MANIFEST_FILE}: entry {name!r} is not a file of this checkpoint (paths "
            "outside the checkpoint directory are refused); the manifest is damaged or crafted"
        )


def _tensor_mismatch(path: Path, manifest: dict[str, Any]) -> str:
    """Name the tensors whose bytes differ from the manifest, when the file still parses."""
    expected = manifest.get("tensors") or {}
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - the file is corrupt; the file-level message is enough
        return ""
    bad = [n for n, t in tensors.items() if expected.get(n) not in (None, tensor_sha256(t))]
    return f" in tensor {', '.join(sorted(bad)[:3])}" if bad else ""


def load_optimizer_state(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """Load ``optimizer.pt`` with ``weights_only=True``: a pickle that runs code is refused."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a refused file on stderr; the refusal
            # below is the one line the user gets.
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: refused to load the optimizer state: the file is not plain tensors but "
            "holds Python objects that could run code when loaded, so it was not opened; "
            "resume from another checkpoint or start a new run"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: optimizer state is a {type(state).__name__}, not a dict")
    return state


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str = "cpu",
    expect_config: Any = None,
    load_optimizer: bool = True,
) -> LoadedCheckpoint:
    """Verify and load a checkpoint; every problem is a CheckpointError naming the file.

    ``expect_config`` (a NeuralNetConfig or dict) makes a differing model config an error that
    lists the differing fields. ``load_optimizer=False`` skips unpickling ``optimizer.pt``
    (generation and merging do not need it; its checksum is still verified).
    """
    ckpt = Path(path)
    manifest = verify_checkpoint(ckpt)
    try:
        config_dict = json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))
        trainer_state = json.loads((ckpt / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt}: unreadable JSON state ({exc})") from exc
    if expect_config is not None:
        diff = config_differences(config_dict, _config_dict(expect_config))
        if diff:
            raise CheckpointError(
                f"{ckpt / CONFIG_FILE}: the checkpoint's model config differs from this run's: "
                + "; ".join(diff[:6])
                + " — use the checkpoint's profile or start a new run"
            )
    try:
        from safetensors.torch import load_file

        model_state = load_file(str(ckpt / MODEL_FILE), device=device)
        meta = _safetensors_metadata(ckpt / MODEL_FILE)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{ckpt / MODEL_FILE}: cannot read weights ({exc})") from exc
    for alias, stored in json.loads(meta.get(ALIASES_KEY, "{}")).items():
        if stored not in model_state:
            raise CheckpointError(f"{ckpt / MODEL_FILE}: tied tensor {alias} points to missing {stored}")
        model_state[alias] = model_state[stored]
    input_vocab = None
    if INPUT_VOCAB_FILE in manifest["files"]:
        try:
            input_vocab = json.loads((ckpt / INPUT_VOCAB_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{ckpt / INPUT_VOCAB_FILE}: unreadable ({exc})") from exc
    config: Any = config_dict
    try:
        from core.model.config import NeuralNetConfig

        config = NeuralNetConfig.from_dict(config_dict)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - config validation errors
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: invalid model config ({exc})") from exc
    opt_path = ckpt / OPTIMIZER_FILE if OPTIMIZER_FILE in manifest["files"] else None
    loaded = LoadedCheckpoint(
        path=ckpt,
        model_state=model_state,
        config=config,
        config_dict=config_dict,
        tokenizer_path=ckpt / TOKENIZER_FILE,
        trainer_state=trainer_state,
        optimizer_state_path=opt_path,
        manifest=manifest,
        input_vocab=input_vocab,
    )
    if load_optimizer and opt_path is not None:
        loaded.load_optimizer_state(device)
    return loaded


# trainer_state.json fields a resume reads, with the JSON types they must have.
_INT, _NUMBER, _NONE = (int,), (int, float), (type(None),)
TRAINER_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "global_step": _INT,
    "total_steps": _INT,
    "last_eval_step": _INT,
    "nonfinite_skipped": _INT,
    "micro_batch": _INT + _NONE,
    "grad_accum": _INT + _NONE,
    "elapsed_s": _NUMBER,
    "last_val_loss": _NUMBER + _NONE,
    "best": (dict,) + _NONE,
    "data": (dict,) + _NONE,
    "controllers": (dict,) + _NONE,
    "rng": (dict,),
    "scaler": (dict,) + _NONE,
    "scheduler": (dict,) + _NONE,
    "run_config": (dict,) + _NONE,
}


def check_trainer_state(state: Any, path: str | os.PathLike[str]) -> None:
    """CheckpointError naming the file and the field when ``trainer_state.json`` has a field of
    the wrong type (a resume would otherwise fail deep inside with ``invalid literal for int()``)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(state).__name__}")
    names = {int: "an integer", float: "a number", dict: "a table (JSON object)",
             type(None): "null"}
    for name, types in TRAINER_STATE_FIELDS.items():
        if name not in state:
            continue
        value = state[name]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            want = " or ".join(dict.fromkeys(names[t] for t in types if t in names))
            raise CheckpointError(
                f"{path}: field {name!r} should be {want}, got {type(value).__name__} "
                f"{value!r:.60}; the file was edited or damaged — resume from another checkpoint"
            )
    best = state.get("best") or {}
    if not isinstance(best.get("val_loss"), (int, float, type(None))):
        raise CheckpointError(
            f"{path}: field 'best.val_loss' should be a number or null, got "
            f"{type(best['val_loss']).__name__} {best['val_loss']!r:.60}"
        )


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


# Model-config fields that choose how the same weights are run, not what they are: a resume,
# merge or load may differ in them (and checkpoints written before a field existed lack it).
RUNTIME_CONFIG_FIELDS = frozenset({"use_gradient_checkpointing", "attention_backend"})


def config_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable ``field: checkpoint X, this run Y`` for every differing architecture
    field (:data:`RUNTIME_CONFIG_FIELDS` are not compared)."""
    out = []
    for name in sorted((set(saved) | set(expected)) - RUNTIME_CONFIG_FIELDS):
        a, b = saved.get(name, "<absent>"), expected.get(name, "<absent>")
        if a in ("<absent>", None) and b in ("<absent>", None):
            continue  # a field added later with a None default (older checkpoints lack it)
        if a != b:
            out.append(f"{name}: checkpoint {a!r}, this run {b!r}")
    return out


def build_model_from_checkpoint(
    path: str | os.PathLike[str],
    device: str = "cpu",
    drop_unfed: bool = False,
    on_info: Callable[[str], None] | None = None,
) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, config)`` from a checkpoint, in eval mode (generation, merge, export).

    ``drop_unfed`` (generation): a checkpoint written before the data-fed modules existed has
    knowledge-graph / vision / task modules that nothing ever gave an input — they are not built
    and their tensors are ignored, with one line to ``on_info`` (outputs are unchanged: those
    modules are the identity without their input).
    """
    from core.model.model import TransformerNeuralNetBackbone

    loaded = load_checkpoint(path, device="cpu", load_optimizer=False)
    config = loaded.config
    state = densify_low_rank(loaded.model_state)
    drop = unfed_modules(loaded) if drop_unfed else []
    if drop:
        from core.model.modules import MODULE_NAMES, MODULE_PREFIXES

        prefixes = tuple(p for switch in drop for p in MODULE_PREFIXES[switch])
        ignored = {k for k in state if k.startswith(prefixes)}
        count = sum(state[k].numel() for k in ignored)
        state = {k: v for k, v in state.items() if k not in ignored}
        config = config.replace(**dict.fromkeys(drop, False))
        if on_info is not None:
            names = ", ".join(MODULE_NAMES[s] for s in drop)
            on_info(f"{loaded.path}: ignoring the {names} module(s) ({count:,} parameters) of "
                    "this older checkpoint: no data ever gave them an input, so outputs are "
                    "unchanged")
    model = TransformerNeuralNetBackbone(config)
    load_model_state(model, state, loaded.path / MODEL_FILE)
    model.to(device)
    model.eval()
    return model, loaded.tokenizer, config


def unfed_modules(loaded: LoadedCheckpoint) -> list[str]:
    """The data-fed ``enable_*`` switches of a checkpoint written before they were resolved from
    the data (it has no ``input_vocab.json``): nothing could have fed those modules. A continual
    module holding an EWC consolidation is kept (merges and `continue` read it)."""
    from core.model.config import NeuralNetConfig
    from core.model.modules import DATA_FED_MODULES

    config = loaded.config
    if loaded.input_vocab is not None or not isinstance(config, NeuralNetConfig):
        return []
    out = [s for s in DATA_FED_MODULES if getattr(config, s)]
    if "enable_continual" in out and any(".ewc_state." in k for k in loaded.model_state):
        out.remove("enable_continual")
    return out


def read_input_vocab(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON input vocabulary of checkpoint ``path``, or None when it has none."""
    f = Path(path) / INPUT_VOCAB_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{f}: unreadable ({exc})") from exc
    return data if isinstance(data, dict) else None


def densify_low_rank(state: dict[str, Any]) -> dict[str, Any]:
    """Multiply low-rank factor pairs (LONPT's HPF layers: ``X.weight_in`` r×in and
    ``X.weight_out`` out×r) back into dense ``X.weight``, so such checkpoints load as the plain
    model for generation, merging and export."""
    out = dict(state)
    for name in [n for n in state if n.endswith(".weight_in")]:
        prefix = name[: -len(".weight_in")]
        w_out = state.get(f"{prefix}.weight_out")
        if w_out is None or f"{prefix}.weight" in state:
            continue
        w_in = out.pop(name)
        out.pop(f"{prefix}.weight_out")
        out[f"{prefix}.weight"] = (w_out.float() @ w_in.float()).to(w_out.dtype)
    return out


# Tables indexed by a run's input vocabulary: a continued run may have more rows (new names).
GROWABLE_TABLES = (
    "knowledge_graph.entity_embedding.weight",
    "knowledge_graph.relation_embedding.weight",
    "continual_learning.task_embedding.weight",
)


# Added to a trained model, these start at zero so its outputs do not change (the continual
# module's FiLM is zero-initialised anyway; the reasoning engine's task projection is not).
ZERO_WHEN_ADDED = frozenset({"reasoning_engine.task_proj.weight"})


def adapt_state_to_model(
    model: Any, state: dict[str, Any], source: str | os.PathLike[str]
) -> tuple[dict[str, Any], list[str]]:
    """Fit a checkpoint's state to a model whose data-fed modules differ (``continue`` onto data
    with or without triples, images or tasks); returns the state and one line per change:

    * a module the checkpoint has but the model does not build: its tensors are ignored;
    * a module the model builds but the checkpoint lacks: it keeps its fresh initialisation
      (task conditioning starts as the identity, the knowledge-graph gate nearly closed);
    * entity/relation/task tables with more rows in the model: the old rows are copied, new
      names start fresh.
    """
    from core.model.modules import DATA_FED_MODULES, MODULE_NAMES, MODULE_PREFIXES

    own = model.state_dict()
    out = dict(state)
    notes: list[str] = []
    for switch in DATA_FED_MODULES:
        prefixes = MODULE_PREFIXES[switch]
        in_state = [k for k in out if k.startswith(prefixes)]
        in_model = [k for k in own if k.startswith(prefixes)]
        if in_state and not in_model:
            n = sum(out[k].numel() for k in in_state)
            for k in in_state:
                del out[k]
            notes.append(f"{source}: the {MODULE_NAMES[switch]} module ({n:,} parameters) is "
                         "not used: this run's data has no "
                         f"'{DATA_FED_MODULES[switch][0]}'")
        elif in_model and not in_state:
            for k in in_model:
                out[k] = own[k]
                if k in ZERO_WHEN_ADDED:  # so the grafted module starts as the identity
                    out[k] = own[k].new_zeros(own[k].shape)
            notes.append(f"{source}: has no {MODULE_NAMES[switch]} module; this run's data has "
                         f"'{DATA_FED_MODULES[switch][0]}', so it starts freshly initialised")
    for name in GROWABLE_TABLES:
        if name in out and name in own and out[name].shape[0] < own[name].shape[0] \
                and out[name].shape[1:] == own[name].shape[1:]:
            grown = own[name].clone()
            grown[: out[name].shape[0]] = out[name].to(grown.dtype)
            notes.append(f"{source}: {name.split('.')[-2].replace('_', ' ')} grew from "
                         f"{out[name].shape[0]} to {own[name].shape[0]} rows (new names start "
                         "fresh)")
            out[name] = grown
    return out, notes


def load_model_state(model: Any, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Load weights strictly; a missing or unexpected tensor is a CheckpointError naming it."""
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing tensors {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected tensors {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise CheckpointError(f"{source}: does not fit this model: {'; '.join(problems)}")


# --------------------------------------------------------------------------------------------
# Finding and pruning
# --------------------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories of a run (no temp dirs), oldest first by step then time."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=_checkpoint_order)


def _checkpoint_order(p: Path) -> tuple[int, float]:
    step = -1
    try:
        step = int(json.loads((p / MANIFEST_FILE).read_text(encoding="utf-8")).get("global_step", -1))
    except (OSError, ValueError, AttributeError):
        m = STEP_NAME.match(p.name)
        step = int(m.group(1)) if m else -1
    try:
        mtime = p.stat().st_mtime
    except OSError:
        mtime = 0.0
    return step, mtime


def latest_checkpoint(
    run_dir: str | os.PathLike[str], on_skip: Callable[[str], None] | None = None
) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies; broken ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt)
        except (CheckpointError, OSError) as exc:
            if on_skip is not None:
                on_skip(f"skipping checkpoint {ckpt.name}: {exc}")
            continue
        return ckpt
    return None


def prune_checkpoints(
    run_dir: str | os.PathLike[str], keep_last: int, protect: Iterable[str] = ()
) -> list[Path]:
    """Delete periodic ``step_*`` checkpoints beyond the newest ``keep_last`` (never ``protect``)."""
    keep = set(protect)
    periodic = [p for p in list_checkpoints(run_dir) if STEP_NAME.match(p.name)]
    removed = []
    for p in periodic[: max(0, len(periodic) - keep_last)]:
        if p.name in keep:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    _sweep_leftovers(Path(run_dir) / CHECKPOINTS_DIR)
    return removed


# ``.step_000200.tmp-<pid>-<hex>`` (a save being written) and ``.step_000200.old-<pid>-<hex>``
# (the previous version, moved aside while a re-save renames into place; older releases wrote
# ``.old-<hex>`` without the pid).
LEFTOVER_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]+$")


def _leftover_owner_gone(name: str) -> bool:
    """True when the process that made this leftover is gone (or is us and not saving now)."""
    m = LEFTOVER_NAME.match(name)
    if m is None:
        return False
    pid = m.group("pid")
    return pid is None or (int(pid) != os.getpid() and not _pid_alive(int(pid)))


def _sweep_leftovers(root: Path) -> None:
    """Remove leftovers of dead processes' saves whose checkpoint exists (garbage), and
    incomplete temp directories. A hidden ``.old-*`` whose checkpoint is missing is kept:
    :func:`recover_interrupted_saves` restores it."""
    if not root.is_dir():
        return
    for p in list(root.iterdir()):
        m = LEFTOVER_NAME.match(p.name)
        if m is None or not _leftover_owner_gone(p.name):
            continue
        if m.group("kind") == "tmp" or (root / m.group("name")).exists():
            shutil.rmtree(p, ignore_errors=True)


def recover_interrupted_saves(run_dir: str | os.PathLike[str]) -> list[str]:
    """Undo the one gap of an atomic re-save: killed between moving ``step_N`` aside and renaming
    the new ``step_N`` into place, ``step_N`` is missing while ``.step_N.old-*`` (the previous
    version) and a complete ``.step_N.tmp-*`` (the new one) survive. Restore the newest complete
    one under the real name, then remove the leftovers. Returns one message per restored
    checkpoint. Call it with the run directory's lock held (no live writer)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for p in root.iterdir():
        m = LEFTOVER_NAME.match(p.name)
        if m is not None and p.is_dir() and _leftover_owner_gone(p.name):
            groups.setdefault(m.group("name"), []).append(p)
    notes = []
    for name, leftovers in sorted(groups.items()):
        final = root / name
        if final.exists():
            continue
        complete = []
        for p in leftovers:
            try:
                manifest = verify_checkpoint(p)
            except (CheckpointError, OSError):
                continue
            created = manifest.get("created")
            complete.append((float(created) if isinstance(created, (int, float)) else 0.0, p))
        if not complete:
            continue
        _, best = max(complete)
        os.replace(best, final)
        _fsync_dir(root)
        kind = "re-save" if ".tmp-" in best.name else "previous version"
        notes.append(f"restored checkpoint {name} from an interrupted save (its {kind})")
    _sweep_leftovers(root)
    return notes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# RNG state (JSON-friendly)
# --------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when present) RNG states as JSON-safe lists."""
    import numpy as np
    import torch

    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    if "python" in state:
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        saved = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
