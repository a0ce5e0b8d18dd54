"""Capture activations from a live PyTorch model into a dump, in one ``with`` block.

Forward hooks on the modules whose names match the globs collect each forward's outputs; a hook
on the model itself writes them (one batch of rows per forward) with :class:`DumpWriter`, so
nothing accumulates in memory. Token-level outputs (batch, tokens, units) keep only the real
tokens of the attention mask the caller passes (never padding) and record sequence offsets.

    with capture(model, modules=["blocks.*.mlp", "ln_f"], path="run.h5", dtype="bfloat16",
                 predictions=lambda logits: logits.argmax(-1)) as cap:
        cap.set_classifier(model.lm_head.weight, layer="ln_f")
        for batch in loader:
            cap.next(labels=batch["label"], attention_mask=batch["attention_mask"],
                     token_ids=batch["input_ids"], sample_ids=batch["id"])
            model(batch["input_ids"], attention_mask=batch["attention_mask"])

Needs PyTorch (``pip install 'actgeom[torch]'``); imported only when a capture starts.
"""

from __future__ import annotations

import queue
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import UsageError
from actgeom.core.dump.hdf5 import decode_bfloat16
from actgeom.core.dump.layout import natural_key
from actgeom.core.dump.writer import DumpWriter, as_rows

# next()'s row data → the dump's row vectors (DumpWriter.append's keywords): given per sample (or per
# token) for PER_SAMPLE, per token for PER_TOKEN
PER_SAMPLE = {"labels": "labels", "predictions": "prediction", "sample_ids": "sample_id"}
PER_TOKEN = {"token_ids": "token_id", "positions": "position"}


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
                 attention: list[str] = (), attention_tokens: int | None = None, activations: dict | None = None,
                 predict=None, last_module: str | None = None, background: bool = False):
        self.path, self.names, self.dtype, self.select = Path(path), names, dtype, select
        self.writer_options = writer_options
        self.attention, self.attention_tokens = list(attention), attention_tokens
        self.activations = activations or {}  # layer → its activation function, written as the layer's attribute
        self.predict = predict
        self.last_module = last_module or names[-1]  # of the captured modules, in the model's order
        self.writer: DumpWriter | None = None
        self.n_forwards = 0
        self._classifier: tuple | None = None  # (weight, bias, layer) until the dump exists
        self._outputs: dict = {}
        self._rows: dict = {}
        self._writes = Writes(background)

    def next(self, *, labels=None, predictions=None, sample_ids=None, token_ids=None, positions=None,
             attention_mask=None, key_mask=None) -> None:
        """Row data of the next forward: labels, predictions (the network's class, when known before
        the forward; else ``capture(predictions=...)`` takes them from its output) and sample ids
        (stable ids of the inputs: ``compare`` aligns files by them, the probe can split by them)
        per sample (B,) or per token (B, T); token ids and positions (B, T); the attention mask
        (B, T) whose zeros are padding (left out). A value per sample of token-level outputs is
        repeated over the sample's tokens. Captured attention probabilities keep the query rows of
        ``attention_mask`` (on (batch, units) outputs it only does that) and the key columns of
        ``key_mask`` (B, T), the real tokens (default: ``attention_mask``): rows dropped from the
        outputs, e.g. positions < K, still are keys."""
        self._rows = {"labels": labels, "predictions": predictions, "sample_ids": sample_ids, "token_ids": token_ids,
                      "positions": positions, "attention_mask": attention_mask, "key_mask": key_mask}

    def set_classifier(self, weight, bias=None, *, layer: str | None = None) -> None:
        """The classifier W (C, D) and b (C,) that reads the captured ``layer`` (default: the last
        captured module in the model's order), for NC3 and NC4 by logits; copied now (tensors or arrays)."""
        layer = self.last_module if layer is None else layer
        if layer not in self.names:
            raise UsageError(f"the classifier's layer '{layer}' is not a captured module; captured: {', '.join(self.names)}")
        self._classifier = (_floats(weight), None if bias is None else _floats(bias), layer)
        self._writes.run(lambda: self.writer is not None and self._write_classifier())

    def set_attrs(self, **attrs) -> None:
        """Root attributes of the dump, written after the rows of the forwards so far (none yet: refused)."""
        def work():
            if self.writer is None:
                raise UsageError("set_attrs needs a forward first: the dump is made by the first one")
            self.writer.set_attrs(**attrs)
        self._writes.run(work)

    def _write_classifier(self) -> None:
        weight, bias, layer = self._classifier
        self.writer.set_classifier(weight, bias, layer=layer)

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
        if self.predict is not None and rows.get("predictions") is None:
            rows["predictions"] = self.predict(output)
        vectors = _row_vectors(rows, lead)
        queries, keys = _vector(rows.get("attention_mask")), _vector(rows.get("key_mask"))
        if len(lead) == 1:
            def rows_of_samples():
                self._write(batch, vectors, None, "sample")
                self._write_attention(probabilities, queries, keys)
            self._writes.run(rows_of_samples)
            return
        mask = np.ones(lead, dtype=bool) if queries is None else queries.astype(bool)
        if mask.shape != lead:
            raise UsageError(f"attention_mask has shape {mask.shape}; the outputs have (batch, tokens) = {lead}")
        if "position" not in vectors:
            vectors["position"] = np.cumsum(mask, axis=1) - 1  # the index among the real tokens (left padding too)
        import torch

        keep, lengths = torch.as_tensor(mask), mask.sum(axis=1)
        if not probabilities:  # a sequence with no row kept (all masked) is no sequence; attention keeps one per input
            lengths = lengths[lengths > 0]

        def work():  # the real tokens' rows, written now or (background) while the next forward runs
            self._write({n: t[keep.to(t.device)] for n, t in batch.items()}, {k: v[mask] for k, v in vectors.items()},
                        lengths, "token")
            self._write_attention(probabilities, mask, keys)
        self._writes.run(work)

    def _write_attention(self, probabilities: dict, queries, keys) -> None:
        for name, value in probabilities.items():
            self.writer.append_attention(name, self._padded(name, value, queries, keys))

    def _padded(self, name: str, value, queries: np.ndarray | None, keys: np.ndarray | None) -> np.ndarray:
        """(B, H, T, T) probabilities with the query rows outside ``queries`` and the key columns outside
        ``keys`` zeroed (both (B, T); None: all), as (B, H, T', T') with T' = attention_tokens (default:
        the first batch's T)."""
        if value is None or not hasattr(value, "detach") or value.ndim != 4 or value.shape[2] != value.shape[3]:
            raise UsageError(f"module '{name}' gave no attention probabilities (batch, heads, T, T) as its second output; "
                             "Hugging Face models need attn_implementation='eager'")
        probs, bf16 = as_rows(value)
        probs = decode_bfloat16(probs) if bf16 else probs
        B, H, T, _ = probs.shape
        queries = np.ones((B, T), dtype=bool) if queries is None else queries.astype(bool)
        keys = queries if keys is None else keys.astype(bool)
        for mask in (queries, keys):
            if mask.shape != (B, T):
                raise UsageError(f"attention of '{name}' is over {T} tokens but the mask has shape {mask.shape}")
        size = self.attention_tokens = self.attention_tokens or T
        if T > size:
            raise UsageError(f"attention of '{name}' is over {T} tokens, more than attention_tokens={size}; "
                             "pass attention_tokens= the longest batch")
        out = np.zeros((B, H, size, size), dtype=probs.dtype)
        real = queries[:, None, :, None] & keys[:, None, None, :]  # padding neither asks nor is attended
        out[:, :, :T, :T] = np.where(real, probs, 0)
        return out

    def _write(self, activations: dict, vectors: dict, lengths, level: str) -> None:
        if self.writer is None:
            self.writer = DumpWriter(self.path, layers={n: int(a.shape[-1]) for n, a in activations.items()},
                                     dtype=self.dtype, level=level, **self.writer_options)
            for layer, function in self.activations.items():
                self.writer.set_layer_attrs(layer, activation=function)
            if self._classifier is not None:
                self._write_classifier()
        self.writer.append(activations, **vectors)
        if lengths is not None:
            self.writer.add_sequences(lengths)
        self.n_forwards += 1


class Writes:
    """The capture's writes, in order: run at once, or (``background``) by one thread while the next
    forward runs — at most two batches waiting. A write's error is raised by the next call or by
    :meth:`finish`."""

    def __init__(self, background: bool):
        self.queue: queue.Queue | None = queue.Queue(maxsize=2) if background else None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="actgeom-capture-writes", daemon=True) if background else None
        if self.thread is not None:
            self.thread.start()

    def run(self, work) -> None:
        if self.queue is None:
            work()
            return
        self._raise()
        self.queue.put(work)

    def _loop(self) -> None:
        while (work := self.queue.get()) is not None:
            if self.error is None:  # after an error the rest is dropped (the dump is discarded)
                try:
                    work()
                except BaseException as exc:
                    self.error = exc

    def stop(self) -> None:
        """Wait for the writes queued so far (their error, if any, is kept)."""
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def finish(self) -> None:
        self.stop()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _matching(named: dict, patterns: list[str]) -> list[str]:
    globs = [module_glob(pattern) for pattern in patterns]
    names = sorted({n for n in named for glob in globs if n and glob.fullmatch(n)}, key=natural_key)
    if not names:
        listed = ", ".join(n for n in list(named)[:20] if n)
        raise UsageError(f"no module of the model matches {list(patterns)}; modules: {listed}")
    return names


def _activations(named: dict, names: list[str], given: dict | None) -> dict[str, str]:
    """Each captured module's activation function (the layer attribute that entropy's and neurons'
    dead_fraction read: "relu" gives threshold 0): ``given`` {glob: function} wins over the module's
    own class when it is one of torch's activation modules (nn.ReLU → "relu", nn.GELU → "gelu")."""
    found = {name: type(named[name]).__name__.lower() for name in names
             if type(named[name]).__module__ == "torch.nn.modules.activation"}
    for pattern, function in (given or {}).items():
        matched = [name for name in names if module_glob(pattern).fullmatch(name)]
        if not matched:
            raise UsageError(f"activations: {pattern!r} matches no captured module; captured: {', '.join(names)}")
        found |= dict.fromkeys(matched, str(function))
    return found


def _row_vectors(rows: dict, lead: tuple) -> dict[str, np.ndarray]:
    """next()'s row data as the writer's row vectors, one value per entry of the outputs' leading
    shape ``lead`` — (batch,) or (batch, tokens); refused naming the keyword, its shape and the
    shapes it may have."""
    vectors = {}
    for keyword, key in (PER_SAMPLE | PER_TOKEN).items():
        value = _vector(rows.get(keyword))
        if value is None:
            continue
        allowed = [lead] if keyword in PER_TOKEN or len(lead) == 1 else [lead[:1], lead]
        if value.shape not in allowed:
            if len(lead) == 1:
                raise UsageError(f"{keyword} has shape {value.shape}; this forward's batch has {lead[0]} rows: "
                                 f"give shape {lead}")
            kinds = " or ".join(f"{shape} (one per {'token' if len(shape) == 2 else 'sequence'})" for shape in allowed)
            raise UsageError(f"{keyword} has shape {value.shape}; this forward's outputs are (batch, tokens) = {lead}: "
                             f"give shape {kinds}")
        if value.shape != lead:  # one per sequence → one per token
            value = np.repeat(value[:, None], lead[1], axis=1)
        vectors[key] = value
    return vectors


def _second(name: str, module, output):
    """An attention module's probabilities: the second element of its output."""
    return output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None


def _tensor(value):
    if not hasattr(value, "detach"):
        raise UsageError(f"a captured output is a {type(value).__name__}, not a tensor; pass select= to pick one")
    return value.detach()


def _floats(value) -> np.ndarray:
    """Weights (a tensor of any dtype, bfloat16 too, or an array) as numpy floats."""
    values, bf16_bits = as_rows(value)
    return decode_bfloat16(values) if bf16_bits else values


def _vector(value) -> np.ndarray | None:
    """Row data (labels, token ids, positions, mask) as numpy."""
    return None if value is None else as_rows(value)[0]


@contextmanager
def capture(model, modules: list[str], path: str | Path, *, dtype: str = "float32", select=None,
            model_name: str | None = None, attention: list[str] = (), attention_tokens: int | None = None,
            activations: dict[str, str] | None = None, predictions=None, classifier=None, background: bool = False,
            **writer_options):
    """Hook the modules of ``model`` whose names match the globs (:func:`module_glob`) and stream
    every forward to ``path``.

    ``select(name, module, output)`` picks the tensor to keep (default: the output, or the first
    element of a tuple output). The dump appears at ``path`` when the block ends without an
    exception (atomically; nothing is written otherwise). ``attention`` globs name attention
    modules whose second output is the probabilities (batch, heads, T, T) (Hugging Face with
    ``attn_implementation="eager"``): they go to ``/attention/<module>``, one (heads, T', T') per input,
    with padding zeroed (query rows outside :meth:`Capture.next`'s ``attention_mask``, key columns outside
    its ``key_mask``), every sequence padded to ``attention_tokens`` (default: the first batch's T); a
    (batch, units) capture (pooled outputs) keeps them too. Its ``model`` attribute is
    ``model_name`` (default: the model's class name); ``writer_options`` go to :class:`DumpWriter`
    (checkpoint, step, compression, append, ...).

    ``activations`` {glob: function}, e.g. ``{"blocks.*.mlp.act": "relu"}``: each matching layer's
    ``activation`` attribute ("relu" makes 0 the firing threshold of dead_fraction and firing
    entropy); a captured torch activation module (nn.ReLU, nn.GELU, ...) is marked by itself.
    ``predictions(output)``: the network's predicted classes from the model's output of each
    forward, e.g. ``lambda logits: logits.argmax(-1)`` (for NC4; or pass them to :meth:`Capture.next`).
    ``classifier``: a module with ``weight`` (C, D) and ``bias`` (an ``nn.Linear``) reading the
    last captured module in the model's order; :meth:`Capture.set_classifier` names another layer.
    ``background``: the rows are written by a thread while the next forward runs (the forward's
    tensors must not be changed in place afterwards); an error of a write is raised by a later forward
    or when the block ends.
    """
    writer_options["model"] = model_name or type(model).__name__
    named = dict(model.named_modules())
    names, attention_names = _matching(named, modules), _matching(named, attention) if attention else []
    run = Capture(path, names, dtype, select or first_tensor, writer_options, attention_names, attention_tokens,
                  _activations(named, names, activations), predictions, [n for n in named if n in names][-1], background)
    if classifier is not None:
        run.set_classifier(classifier.weight, getattr(classifier, "bias", None))
    handles = [named[n].register_forward_hook(run._module_hook(n, run.select)) for n in names]
    handles += [named[n].register_forward_hook(run._module_hook(n, _second)) for n in attention_names]
    handles.append(model.register_forward_hook(run._model_hook))
    try:
        yield run
        run._writes.finish()
    except BaseException:
        run._writes.stop()
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
