"""`actgeom capture`: run a model over its examples in fixed batches and write the hooked modules' outputs.

The batches are the examples in file order, ``batch_size`` at a time (text padded per batch, as
``tokenizer(texts, padding=True, truncation=True, max_length=L)`` gives them), so a direct
forward of the same batches gives the same numbers. :func:`actgeom.core.capture.capture` hooks the
modules; token positions are chosen at capture time (``tokens``): ``all`` real tokens, the
``first`` or ``last`` real token, their ``mean`` (summed in float64, rounded once to the dump
dtype), or ``from:K`` (real tokens at positions ≥ K). Padding is never a row. Each example's
index is its sample id. Parts are saved as the run goes (core/dump/capture_parts.py) so a killed job
resumes; the dump records the model, the inputs and every option (attribute ``capture``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from actgeom.core import __version__
from actgeom.core.base.errors import UsageError
from actgeom.core.capture import _matching as matching
from actgeom.core.capture import capture, first_tensor
from actgeom.core.dump.capture_parts import join_parts, part_path, partial_dir, parts_stop, saved_parts

TOKENS = ("all", "first", "last", "mean", "from:K")


@dataclass(frozen=True)
class CaptureOptions:
    """What `actgeom capture` keeps and how (the CLI's options; ``save_every`` in seconds)."""

    modules: tuple[str, ...] = ()  # globs; empty: every block of the model
    tokens: str = "all"
    batch_size: int = 32
    max_length: int | None = None
    dtype: str = "float32"
    model_dtype: str = "float32"
    classifier: bool = False
    predictions: bool = False
    attention: bool = False
    checkpoint: str = ""
    step: int = -1
    save_every: float = 300.0


def parse_tokens(tokens: str) -> tuple[str, int]:
    """``all|first|last|mean`` → (kind, 0); ``from:K`` → ("from", K)."""
    if tokens in ("all", "first", "last", "mean"):
        return tokens, 0
    if tokens.startswith("from:") and tokens[5:].isdigit():
        return "from", int(tokens[5:])
    raise UsageError(f"--tokens {tokens} is not one of {', '.join(TOKENS)} (K a whole number)")


class Batches:
    """The model's keyword inputs per batch, with the attention mask (B, T) of text batches."""

    def __init__(self, loaded, examples, options: CaptureOptions):
        import torch

        self.torch, self.loaded, self.examples, self.options = torch, loaded, examples, options
        if options.batch_size < 1:
            raise UsageError(f"--batch-size {options.batch_size} must be at least 1")
        self.max_length = options.max_length or _model_max_length(loaded)
        self.truncated = 0
        self.hf_attention = options.attention and loaded.kind == "huggingface"

    def attention_tokens(self) -> int | None:
        """T' of the attention datasets: the longest example in tokens (after truncation), the T of every
        batch's padding at most; None for tensor inputs (every batch has the same T)."""
        texts, tokenizer, chunk = self.examples.texts, self.loaded.tokenizer, 4096
        if texts is None:
            return None
        truncate = {"truncation": True, "max_length": self.max_length} if self.max_length is not None else {}
        return max(max(map(len, tokenizer(texts[start : start + chunk], verbose=False, **truncate)["input_ids"]))
                   for start in range(0, len(texts), chunk))

    def __len__(self) -> int:
        return -(-len(self.examples) // self.options.batch_size)

    def bounds(self, index: int) -> tuple[int, int]:
        size = self.options.batch_size
        return index * size, min((index + 1) * size, len(self.examples))

    def inputs(self, index: int) -> tuple[tuple, dict, object]:
        """(positional inputs, keyword inputs, attention mask or None) of batch ``index``, on the device."""
        start, stop = self.bounds(index)
        device = self.loaded.device
        if self.examples.texts is None:
            x = self.torch.as_tensor(self.examples.tensors[start:stop])
            if x.is_floating_point():
                x = x.to(getattr(self.torch, self.options.model_dtype))
            return (x.to(device),), {}, None
        texts = self.examples.texts[start:stop]
        tokenizer, limit = self.loaded.tokenizer, self.max_length
        batch = tokenizer(texts, padding=True, return_tensors="pt", verbose=False)  # whole: nothing to truncate?
        if limit is not None and batch["input_ids"].shape[1] > limit:  # else what truncation=True gives
            self.truncated += int((batch["attention_mask"].sum(dim=1) > limit).sum())
            batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        kwargs = {key: value.to(device) for key, value in batch.items()}
        return (), kwargs | ({"output_attentions": True} if self.hf_attention else {}), batch["attention_mask"]


def _model_max_length(loaded) -> int | None:
    """The tokenizer's limit, else the model's position embeddings; None without a tokenizer."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        return None
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 1_000_000:  # transformers' "no limit" is 1e30
        return int(limit)
    return getattr(loaded.model.config, "max_position_embeddings", None)


class Selection:
    """The positions kept (``tokens``), as a ``select`` for capture() and the row data of each batch."""

    def __init__(self, tokens: str):
        import torch

        self.torch = torch
        self.kind, self.k = parse_tokens(tokens)
        self.mask = None  # the current batch's attention mask (B, T) or None
        self.token_level = True  # the captured outputs are (batch, tokens, units): token rows, ids, positions

    @property
    def pooled(self) -> bool:
        return self.kind in ("first", "last", "mean")

    def index(self, mask):
        """Per sequence, the position of its first or last real token."""
        real = mask.bool().to(self.torch.int8)
        if self.kind == "first":
            return real.argmax(dim=1)
        return real.shape[1] - 1 - real.flip(1).argmax(dim=1)

    def select(self, name, module, output):
        h = first_tensor(name, module, output)
        if not self.pooled or not hasattr(h, "ndim") or h.ndim != 3:
            return h
        mask = self.mask if self.mask is not None else self.torch.ones(h.shape[:2])
        mask = mask.to(h.device)
        if self.kind == "mean":
            weights = mask.to(self.torch.float64).unsqueeze(-1)
            return (h.to(self.torch.float64) * weights).sum(dim=1) / weights.sum(dim=1)
        return h[self.torch.arange(h.shape[0], device=h.device), self.index(mask)]

    def queries(self, real):
        """The attention query rows kept (B, T): the rows --tokens keeps, or pools ("mean": every real token)."""
        torch = self.torch
        if self.kind in ("first", "last"):
            chosen = torch.zeros_like(real)
            chosen[torch.arange(real.shape[0]), self.index(real)] = True
            return chosen & real
        return real & (real.long().cumsum(dim=1) - 1 >= self.k)

    def predictions(self, output):
        """argmax of the head's logits, at the kept positions."""
        logits = getattr(output, "logits", None)
        logits = first_tensor("", None, output) if logits is None else logits
        predicted = logits.argmax(dim=-1)
        if predicted.ndim == 2 and self.pooled:
            if self.kind == "mean":
                raise UsageError("--predictions with --tokens mean: the head predicts per token; use --tokens all, first "
                                 "or last")
            mask = self.mask if self.mask is not None else self.torch.ones(predicted.shape)
            predicted = predicted[self.torch.arange(predicted.shape[0]), self.index(mask.to(predicted.device))]
        return predicted

    def row_data(self, inputs: dict, mask, start: int, stop: int, labels) -> dict:
        """capture.next()'s keywords for a batch of examples [start, stop)."""
        torch = self.torch
        self.mask = mask
        rows = {"sample_ids": torch.arange(start, stop), "labels": None if labels is None else labels[start:stop]}
        if mask is None:
            return rows
        real = mask.bool()  # (the mask of pooled or (batch, units) rows only picks attention's query rows)
        rows |= {"attention_mask": self.queries(real), "key_mask": real}
        if self.pooled or not self.token_level:
            return rows
        return rows | {"positions": real.long().cumsum(dim=1) - 1, "token_ids": inputs.get("input_ids")}


def capture_key(loaded, examples, options: CaptureOptions) -> str:
    """What makes two runs' rows the same: the model, the inputs and the options (not save_every)."""
    record = {"model": str(Path(loaded.path).resolve()), "provenance": loaded.provenance,
              "inputs": [f["sha256"] for f in examples.files], "options": asdict(options) | {"save_every": None}}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def run_capture(loaded, examples, out: Path, options: CaptureOptions, *, append: bool = False,
                progress=None, note=lambda text: None) -> dict:
    """Capture every example into ``out`` (see the module's docstring); returns a summary."""
    out = Path(out)
    names = list(options.modules) or loaded.blocks
    selection, batches = Selection(options.tokens), Batches(loaded, examples, options)
    key = capture_key(loaded, examples, options)
    parts = saved_parts(out, key, append, note)
    done, rows = parts_stop(parts)
    if parts:
        note(f"resuming after {done} examples ({rows} rows) in {len(parts)} saved parts")
    first = done // options.batch_size
    listed, attention = probe(loaded, examples, options)  # (names a TorchScript module's outputs)
    shapes = dict(listed)
    matched = matching(dict(loaded.model.named_modules()), names)  # a glob matching nothing: refused before any file
    selection.token_level = all(len(shapes.get(name, ())) == 3 for name in matched)  # (batch, tokens, units)
    if options.attention and not attention:
        raise UsageError(f"--attention: no module of the model ({type(loaded.model).__name__}) gives attention "
                         "probabilities (batch, heads, T, T) as its second output")
    attention = (attention, batches.attention_tokens()) if options.attention else ([], None)
    partial_dir(out).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        while first < len(batches):
            path = part_path(partial_dir(out), batches.bounds(first)[0])
            first = _write_part(path, loaded, (names, attention), batches, selection, first, options, examples, key,
                                progress)
            parts.append(path)
    except BaseException:
        if not parts:  # nothing to resume from: no trace of the run
            shutil.rmtree(partial_dir(out), ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    attrs = {"capture_key": key, "capture": json.dumps(provenance(loaded, examples, options, batches.truncated))}
    summary = join_parts(parts, out, attrs)
    return summary | {"n_examples": len(examples), "resumed_after": done, "truncated": batches.truncated,
                      "seconds": seconds, "dtype": options.dtype}


def name_outputs(loaded, batches: Batches) -> None:
    """A TorchScript module's outputs get their names (modules to hook) from one forward of the first batch."""
    if loaded.kind == "torchscript" and loaded.model.names is None:
        with batches.torch.no_grad():
            args, kwargs, _ = batches.inputs(0)
            loaded.model(*args, **kwargs)


def attention_modules(found: list[str]) -> list[str]:
    """Of the modules whose second output is attention probabilities, the innermost (the one computing them,
    e.g. BERT's ``attention.self``, not the ``attention`` block passing them on)."""
    return [name for name in found if not any(other.startswith(name + ".") for other in found)]


def _probabilities(output) -> bool:
    """Does a module's output carry attention probabilities (batch, heads, T, T) as its second element?"""
    second = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    return getattr(second, "ndim", 0) == 4 and second.shape[2] == second.shape[3]


def probe(loaded, examples, options: CaptureOptions) -> tuple[list[tuple[str, tuple]], list[str]]:
    """One forward of the first example: (name, output shape) of every module that gives a tensor, in the
    order they run, and the attention modules (:func:`attention_modules`)."""
    one = Batches(loaded, type(examples)(texts=examples.texts and examples.texts[:1],
                                         tensors=None if examples.tensors is None else examples.tensors[:1]), options)
    name_outputs(loaded, one)
    shapes, attention, handles = {}, {}, []
    order = [name for name, _ in loaded.model.named_modules()]
    for name, module in loaded.model.named_modules():
        if name:
            def hook(module, inputs, output, name=name):
                value = first_tensor(name, module, output)
                if hasattr(value, "shape"):
                    shapes.setdefault(name, tuple(value.shape))
                if _probabilities(output):
                    attention[name] = True
            handles.append(module.register_forward_hook(hook))
    try:
        with one.torch.no_grad():
            args, kwargs, _ = one.inputs(0)
            _forward(loaded, args, kwargs, 1)
    finally:
        for handle in handles:
            handle.remove()
    return [(name, shapes[name]) for name in order if name in shapes], attention_modules([n for n in order if n in attention])


def _write_part(path, loaded, modules, batches, selection, first, options, examples, key, progress) -> int:
    """Capture batches from ``first`` into the part ``path`` for ``save_every`` seconds; the next batch.
    ``modules``: (globs, (attention modules, their T'))."""
    names, (attention, attention_tokens) = modules
    torch = selection.torch
    head = None
    if options.classifier:
        head = loaded.head
        if head is None:
            raise UsageError(f"--classifier: the model ({type(loaded.model).__name__}) has no output layer to save")
    step_name = {"checkpoint": options.checkpoint, "step": options.step}
    started, index = time.monotonic(), first
    with torch.no_grad(), capture(loaded.model, names, path, dtype=options.dtype, select=selection.select,
                                  attention=attention, attention_tokens=attention_tokens, model_name=loaded.path.name,
                                  classifier=head, label_names=examples.label_names,
                                  predictions=selection.predictions if options.predictions else None, background=True,
                                  **step_name) as cap:
        while index < len(batches) and (index == first or time.monotonic() - started < options.save_every):
            args, kwargs, mask = batches.inputs(index)
            start, stop = batches.bounds(index)
            cap.next(**selection.row_data(kwargs, mask, start, stop, examples.labels))
            _forward(loaded, args, kwargs, options.batch_size)
            index += 1
            if progress is not None:
                progress(loaded.path.name, stop, len(examples))
        cap.set_attrs(capture_key=key, examples_start=batches.bounds(first)[0], examples_stop=batches.bounds(index - 1)[1])
    return index


def _forward(loaded, args: tuple, kwargs: dict, batch_size: int) -> None:
    """One forward; out of memory is a one-line error suggesting a smaller batch."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    try:
        loaded.model(*args, **kwargs)
    except (oom, RuntimeError) as exc:
        if not isinstance(exc, oom) and "out of memory" not in str(exc) and "can't allocate memory" not in str(exc):
            raise
        if batch_size == 1:
            raise UsageError(f"out of memory on {loaded.device} with one example per forward; try a smaller "
                             "--max-length, --model-dtype bfloat16 or another --device") from None
        raise UsageError(f"out of memory at --batch-size {batch_size} on {loaded.device}; "
                         f"try --batch-size {batch_size // 2}") from None


def provenance(loaded, examples, options: CaptureOptions, truncated: int) -> dict:
    """The dump's ``capture`` attribute: model, inputs, options, what was truncated."""
    return {"model": {"path": str(Path(loaded.path).resolve()), "kind": loaded.kind} | (loaded.provenance or {}),
            "inputs": examples.files, "n_examples": len(examples), "options": asdict(options),
            "truncated_examples": truncated, "device": loaded.device, "actgeom": __version__}
