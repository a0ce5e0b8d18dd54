"""The model of `actgeom capture`: a local Hugging Face directory, a TorchScript file, or (trusted) a pickled module.

Nothing is ever downloaded: a name that is not a local directory or file is refused, and
transformers runs offline (``HF_HUB_OFFLINE``, ``local_files_only``). A TorchScript module cannot
be hooked, so its outputs are what is captured: one tensor is the layer ``output``, a tuple gives
``output_0``, ``output_1``, ..., a dict its keys. A ``torch.save``d module is a pickle, and loading
a pickle runs whatever code it holds: it needs ``trust_pickle``. With ``attention`` a Hugging Face model
is loaded with ``attn_implementation="eager"`` (the fused kernels never form the probabilities).
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from actgeom.core.base.errors import InvalidInputError, UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
MODEL_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass
class Loaded:
    """A model ready to run: ``kind`` is huggingface, torchscript or pickle; ``blocks`` the default module glob."""

    model: object
    kind: str
    path: Path
    device: str
    blocks: list[str]
    tokenizer: object = None
    head: object = None  # the output layer (an nn.Linear), when the model has one
    provenance: dict | None = None


def resolve_device(device: str) -> str:
    """``auto``: cuda, else mps, else cpu; an accelerator asked for and absent is refused in one line."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if device == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if device not in available:
        raise UsageError(f"--device {device} is not one of {', '.join(DEVICES)}")
    if not available[device]:
        raise UsageError(f"--device {device}: no {device.upper()} device is available (torch {torch.__version__}); "
                         "use --device cpu")
    return device


def load_model(path: str | Path, *, device: str = "auto", model_dtype: str = "float32", trust_pickle: bool = False,
               text: bool = True, attention: bool = False) -> Loaded:
    """The model at ``path`` in eval mode on ``device`` (see the module's docstring)."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"MODEL {path} is not a local directory or file; actgeom capture never downloads "
                                "(fetch a hub model first, e.g. `hf download NAME --local-dir DIR`, and pass DIR)")
    if model_dtype not in MODEL_DTYPES:
        raise UsageError(f"--model-dtype {model_dtype} is not one of {', '.join(MODEL_DTYPES)}")
    device = resolve_device(device)
    import torch

    dtype = getattr(torch, model_dtype)
    if path.is_dir():
        loaded = _huggingface(path, dtype, text, attention)
    elif _is_torchscript(path):
        loaded = _torchscript(path)
    else:
        loaded = _pickled(path, trust_pickle)
    loaded.model = loaded.model.to(device=device, dtype=dtype).eval()
    loaded.device = device
    return loaded


def _huggingface(path: Path, dtype, text: bool, attention: bool) -> Loaded:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidInputError(f"MODEL {path} has no config.json: not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network, whatever a config points at
    import transformers

    transformers.utils.logging.set_verbosity_error()  # no weight-loading bars or notes on stderr: ours only
    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    named = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, named, None) if named else None
    eager = {"attn_implementation": "eager"} if attention else {}
    model = (cls or transformers.AutoModel).from_pretrained(path, local_files_only=True, dtype=dtype, **eager)
    tokenizer = None
    if text:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"MODEL {path} has no usable tokenizer for --text ({str(exc).splitlines()[0]})") from None
        if tokenizer.pad_token is None:  # decoder-only tokenizers: padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    revision = path.name if path.parent.name == "snapshots" else ""  # a hub cache snapshot is named by its commit
    provenance = {"config_sha256": hashlib.sha256(config_file.read_bytes()).hexdigest(), "revision": revision,
                  "architecture": type(model).__name__,
                  "attn_implementation": str(getattr(model.config, "_attn_implementation", "")),
                  "tokenizer": "" if tokenizer is None else type(tokenizer).__name__,
                  "tokenizer_sha256": _hash_of(path / "tokenizer.json"),
                  "weights": [{"file": f.name, "size": f.stat().st_size, "mtime": f.stat().st_mtime}  # a resumed run
                              for f in sorted(path.iterdir()) if f.suffix in (".safetensors", ".bin", ".pt", ".pth")]}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = head or getattr(model, "classifier", None) or getattr(model, "score", None)
    return Loaded(model, "huggingface", path, "cpu", default_blocks(model, getattr(config, "num_hidden_layers", None)),
                  tokenizer, head if hasattr(head, "weight") else None, provenance)


def _hash_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds compiled code (``<name>/code/``); a torch.save pickle does not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _torchscript(path: Path) -> Loaded:
    import torch

    from actgeom.core.capture_outputs import Outputs

    model = Outputs(torch.jit.load(str(path), map_location="cpu"))
    return Loaded(model, "torchscript", path, "cpu", ["output*"], provenance={"model_sha256": _hash_of(path)})


def _pickled(path: Path, trust: bool) -> Loaded:
    if not trust:
        raise UsageError(f"MODEL {path} is a pickled module (torch.save): loading it runs any code it holds; "
                         "pass --trust-pickle only for a file you trust, or save it with torch.jit.save")
    import torch

    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a pickle can fail in any way
        raise InvalidInputError(f"MODEL {path} could not be loaded by torch.load ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(f"MODEL {path} holds a {type(model).__name__}, not a torch module (a state dict needs "
                                "its model's code: save the module with torch.jit.save)")
    return Loaded(model, "pickle", path, "cpu", default_blocks(model, None), provenance={"model_sha256": _hash_of(path)})


def default_blocks(model, n_layers: int | None) -> list[str]:
    """Every block's output: the items of the module list holding ``n_layers`` modules (the
    transformer's layers), else of the longest module list, else the model's top-level modules."""
    import torch

    lists = [(name, len(module)) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module)]
    exact = [name for name, size in lists if size == n_layers]
    if exact or lists:
        name = exact[0] if exact else max(lists, key=lambda item: item[1])[0]
        return [f"{name}.*"]
    return [name for name, _ in model.named_children()]


def checkpoint_step(path: Path) -> tuple[str, int]:
    """The checkpoint name and training step from a directory name: ``step1000``, ``checkpoint-500`` → 1000, 500; else -1."""
    found = re.search(r"(?:step|checkpoint)[-_]?(\d+)", path.name)
    return path.name, int(found.group(1)) if found else -1
