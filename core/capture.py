"""Capture activations from a live PyTorch model into a dump, in one ``with`` block.

Forward hooks on the modules whose names match the globs collect each forward's outputs; a hook
on the model itself writes them (one batch of rows per forward) with :class:`DumpWriter`, so
nothing accumulates in memory. Token-level outputs (batch, tokens, units) keep only the real
tokens of the attention mask the caller passes (never padding) and record sequence offsets.

    with capture(model, modules=["blocks.*.mlp", "ln_f"], path="run.h5", dtype="bfloat16") as cap:
        for batch in loader:
            cap.next(labels=batch["label"], attention_mask=batch["attention_mask"],
                     token_ids=batch["input_ids"])
            model(batch["input_ids"], attention_mask=batch["attention_mask"])

Needs PyTorch (``pip install 'actgeom[torch]'``); imported only when a capture starts.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from actgeom.core.dump.hdf5 import decode_bfloat16
from actgeom.core.dump.layout import natural_key
from actgeom.core.dump.writer import DumpWriter, as_rows
from actgeom.core.errors import UsageError


def module_glob(pattern: str) -> re.Pattern:
    """A glob over dotted module names: ``*`` is one name part, ``**`` any number, ``?`` one character.

    >>> bool(module_glob("blocks.*").fullmatch("blocks.3")), bool(module_glob("blocks.*").fullmatch("blocks.3.mlp"))
    (True, False)
    >>> bool(module_glob("**.mlp").fullmatch("model.layers.0.mlp"))
    True
    """
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts))


def first_tensor(name: str, module, output):
    """The default ``select``: the output itself, or the first element of a tuple/list output."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class Capture:
    """The running capture: :meth:`next` gives the row data of the next forward."""

    def __init__(self, path: Path, names: list[str], dtype: str, select, writer_options: dict,
                 attention: list[str] = (), attention_tokens: int | None = None):
        self.path, self.names, self.dtype, self.select = Path(path), names, dtype, select
        self.writer_options = writer_options
        self.attention, self.attention_tokens = list(attention), attention_tokens
        self.writer: DumpWriter | None = None
        self.n_forwards = 0
        self._outputs: dict = {}
        self._rows: dict = {}

    def next(self, *, labels=None, token_ids=None, positions=None, attention_mask=None) -> None:
        """Row data of the next forward: labels per sample (B,) or per token (B, T); token ids and
        positions (B, T); the attention mask (B, T) whose zeros are padding (left out)."""
        self._rows = {"labels": labels, "token_id": token_ids, "position": positions, "attention_mask": attention_mask}

    def _module_hook(self, name: str, select):
        def hook(module, inputs, output):
            if name in self._outputs:
                raise UsageError(f"module '{name}' ran twice in one forward; capture a module that runs once")
            self._outputs[name] = select(name, module, output)
        return hook

    def _model_hook(self, module, inputs, output) -> None:
        outputs, rows = self._outputs, self._rows
        self._outputs, self._rows = {}, {}
        missing = [n for n in self.names + self.attention if n not in outputs]
        if missing:
            raise UsageError(f"modules {missing} did not run in this forward")
        probabilities = {name: outputs.pop(name) for name in self.attention}
        batch = {name: _tensor(value) for name, value in outputs.items()}
        shapes = {tuple(t.shape[:-1]) for t in batch.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2):
            raise UsageError("captured outputs must all be (batch, units) or all (batch, tokens, units) with the same "
                             f"leading shape; got {[tuple(t.shape) for t in batch.values()]}")
        lead = shapes.pop()
        if len(lead) == 1:
            if probabilities:
                raise UsageError("attention needs token-level outputs (batch, tokens, units) in the captured modules")
            self._write(batch, {"labels": _vector(rows.get("labels"))}, None, "sample")
            return
        mask = _vector(rows.get("attention_mask"))
        mask = np.ones(lead, dtype=bool) if mask is None else mask.astype(bool)
        if mask.shape != lead:
            raise UsageError(f"attention_mask has shape {mask.shape}; the outputs have (batch, tokens) = {lead}")
        labels = _vector(rows.get("labels"))
        if labels is not None and labels.shape == lead[:1]:
            labels = np.repeat(labels[:, None], lead[1], axis=1)  # one label per sequence → per token
        positions = _vector(rows.get("position"))
        if positions is None:
            positions = np.cumsum(mask, axis=1) - 1  # the index among the real tokens (left padding too)
        vectors = {"labels": labels, "token_id": _vector(rows.get("token_id")), "position": positions}
        import torch

        keep = torch.as_tensor(mask)
        self._write({n: t[keep.to(t.device)] for n, t in batch.items()},
                    {k: None if v is None else v[mask] for k, v in vectors.items()}, mask.sum(axis=1), "token")
        for name, value in probabilities.items():
            self.writer.append_attention(name, self._padded(name, value, mask))

    def _padded(self, name: str, value, mask: np.ndarray) -> np.ndarray:
        """(B, H, T, T) probabilities with padding query rows and key columns zeroed, as
        (B, H, T', T') with T' = attention_tokens (default: the first batch's T)."""
        if value is None or not hasattr(value, "detach") or value.ndim != 4 or value.shape[2] != value.shape[3]:
            raise UsageError(f"module '{name}' gave no attention probabilities (batch, heads, T, T) as its second output; "
                             "Hugging Face models need attn_implementation='eager'")
        probs, bf16 = as_rows(value)
        probs = decode_bfloat16(probs) if bf16 else probs
        B, H, T, _ = probs.shape
        if mask.shape != (B, T):
            raise UsageError(f"attention of '{name}' is over {T} tokens but the mask has shape {mask.shape}")
        size = self.attention_tokens = self.attention_tokens or T
        if T > size:
            raise UsageError(f"attention of '{name}' is over {T} tokens, more than attention_tokens={size}; "
                             "pass attention_tokens= the longest batch")
        out = np.zeros((B, H, size, size), dtype=probs.dtype)
        real = mask[:, None, :, None] & mask[:, None, None, :]  # padding neither asks nor is attended
        out[:, :, :T, :T] = np.where(real, probs, 0)
        return out

    def _write(self, activations: dict, vectors: dict, lengths, level: str) -> None:
        if self.writer is None:
            self.writer = DumpWriter(self.path, layers={n: int(a.shape[-1]) for n, a in activations.items()},
                                     dtype=self.dtype, level=level, **self.writer_options)
        self.writer.append(activations, **vectors)
        if lengths is not None:
            self.writer.add_sequences(lengths)
        self.n_forwards += 1


def _matching(named: dict, patterns: list[str]) -> list[str]:
    globs = [module_glob(pattern) for pattern in patterns]
    names = sorted({n for n in named for glob in globs if n and glob.fullmatch(n)}, key=natural_key)
    if not names:
        listed = ", ".join(n for n in list(named)[:20] if n)
        raise UsageError(f"no module of the model matches {list(patterns)}; modules: {listed}")
    return names


def _second(name: str, module, output):
    """An attention module's probabilities: the second element of its output."""
    return output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None


def _tensor(value):
    if not hasattr(value, "detach"):
        raise UsageError(f"a captured output is a {type(value).__name__}, not a tensor; pass select= to pick one")
    return value.detach()


def _vector(value) -> np.ndarray | None:
    """Row data (labels, token ids, positions, mask) as numpy."""
    return None if value is None else as_rows(value)[0]


@contextmanager
def capture(model, modules: list[str], path: str | Path, *, dtype: str = "float32", select=None,
            model_name: str | None = None, attention: list[str] = (), attention_tokens: int | None = None,
            **writer_options):
    """Hook the modules of ``model`` whose names match the globs (:func:`module_glob`) and stream
    every forward to ``path``.

    ``select(name, module, output)`` picks the tensor to keep (default: the output, or the first
    element of a tuple output). The dump appears at ``path`` when the block ends without an
    exception (atomically; nothing is written otherwise). ``attention`` globs name attention
    modules whose second output is the probabilities (batch, heads, T, T) (Hugging Face with
    ``attn_implementation="eager"``): they go to ``/attention/<module>`` with padding zeroed,
    every sequence padded to ``attention_tokens`` (default: the first batch's T). Its ``model`` attribute is
    ``model_name`` (default: the model's class name); ``writer_options`` go to :class:`DumpWriter`
    (checkpoint, step, compression, append, ...).
    """
    writer_options["model"] = model_name or type(model).__name__
    named = dict(model.named_modules())
    names, attention_names = _matching(named, modules), _matching(named, attention) if attention else []
    run = Capture(path, names, dtype, select or first_tensor, writer_options, attention_names, attention_tokens)
    handles = [named[n].register_forward_hook(run._module_hook(n, run.select)) for n in names]
    handles += [named[n].register_forward_hook(run._module_hook(n, _second)) for n in attention_names]
    handles.append(model.register_forward_hook(run._model_hook))
    try:
        yield run
    except BaseException:
        if run.writer is not None:
            run.writer.abort()
        raise
    else:
        if run.writer is None:
            raise UsageError("the capture saw no forward pass: nothing to write")
        run.writer.close()
    finally:
        for handle in handles:
            handle.remove()
