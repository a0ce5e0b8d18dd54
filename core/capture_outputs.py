"""A TorchScript module's outputs as hookable modules (ScriptModules refuse forward hooks).

``Outputs(scripted)`` runs the scripted module and passes each output tensor through an identity
module named for it — ``output`` for one tensor, ``output_0``, ``output_1``, ... for a tuple or
list, the keys of a dict — so :func:`actgeom.core.capture.capture` hooks them like any module.
Imports torch: loaded only when a TorchScript model is captured.
"""

from __future__ import annotations

import torch

from actgeom.core.base.errors import UsageError


class Outputs(torch.nn.Module):
    """The scripted module, with one identity module per output; returns the last output."""

    def __init__(self, scripted):
        super().__init__()
        self.scripted = scripted
        self.names: list[str] | None = None

    def forward(self, inputs):
        named = _named(self.scripted(inputs))
        if self.names is None:  # the first forward names the outputs
            for name in named:
                self.add_module(name, torch.nn.Identity())
            self.names = list(named)
        return [getattr(self, name)(value) for name, value in named.items()][-1]

    def named_modules(self, *args, **kwargs):
        """Only the output modules (and the wrapper): the scripted module's own cannot be hooked."""
        for name, module in super().named_modules(*args, **kwargs):
            if not name.startswith("scripted"):
                yield name, module


def _named(output) -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {"output": output}
    if isinstance(output, (tuple, list)):
        return {f"output_{i}": value for i, value in enumerate(output)}
    if isinstance(output, dict):
        return {str(key).replace(".", "_"): value for key, value in output.items()}
    raise UsageError(f"the TorchScript module returned a {type(output).__name__}; capture needs tensors "
                     "(one, a tuple, or a dict)")
