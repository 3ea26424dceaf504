"""Pooled features from several named layers of a model in one forward pass."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from transfer_pipe.backbones.registry import PENULTIMATE, STAGES
from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:
    from transfer_pipe.backbones.registry import BackboneSpec

# A built model may list module names whose 4-D outputs are [B, H, W, C] rather than
# [B, C, H, W] (torchvision's Swin), so their pooling averages the right axes.
NHWC_LAYERS_ATTR = "transfer_pipe_nhwc_layers"
_CLASSIFIER_NAMES = ("classifier", "fc", "head", "heads")


def find_penultimate(model: nn.Module) -> tuple[str, bool]:
    """Where the penultimate features are: ``(module name, True)`` for the input of the
    model's last ``nn.Linear``, else ``(name, False)`` for the output of the child just
    before the classifier. Raises TransferPipeError when neither exists."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1], True
    children = [name for name, _ in model.named_children()]
    for i, name in enumerate(children):
        if name in _CLASSIFIER_NAMES and i > 0:
            return children[i - 1], False
    raise TransferPipeError(
        f"cannot find the penultimate layer of {type(model).__name__}: it has no nn.Linear "
        f"and no child named one of {', '.join(_CLASSIFIER_NAMES)}; "
        "name the layers to embed explicitly (e.g. --layers stages)"
    )


def pool_features(t: torch.Tensor, layer: str, nhwc: bool = False) -> torch.Tensor:
    """Reduce one activation to float32 [B, D]: 4-D maps are averaged over space,
    3-D token sequences [B, T, C] over tokens, 2-D vectors kept."""
    if t.dim() == 4:
        pooled = t.mean(dim=(1, 2) if nhwc else (2, 3), dtype=torch.float32)
    elif t.dim() == 3:
        pooled = t.mean(dim=1, dtype=torch.float32)
    elif t.dim() == 2:
        pooled = t.to(torch.float32)
    else:
        raise TransferPipeError(
            f"layer {layer} outputs a {t.dim()}-D tensor {tuple(t.shape)}; only 2-D, 3-D "
            "and 4-D outputs can be pooled to vectors, choose another layer"
        )
    return pooled.contiguous()


def _first_tensor(value: Any, layer: str) -> torch.Tensor:
    # Some modules return tuples (attention returns (output, weights)); the first
    # tensor is the activation.
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TransferPipeError(
        f"layer {layer} produces a {type(value).__name__}, not a tensor; choose another layer"
    )


class LayerTap(nn.Module):
    """Wraps a built model; ``forward(x)`` returns ``{layer: Tensor[B, D]}`` of pooled
    float32 features for every requested layer, all from one forward pass.

    Layer names are module names from ``model.named_modules()`` or ``"penultimate"``.
    The tap owns its hooks: call :meth:`remove` (or use it as a context manager) to
    detach them. Captures are kept per thread, so threads may share one tap.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        if not layers:
            raise TransferPipeError("LayerTap needs at least one layer name")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self._local = threading.local()
        self._handles: list[RemovableHandle] = []
        modules = dict(model.named_modules())
        nhwc = set(getattr(model, NHWC_LAYERS_ATTR, ()))
        try:
            for layer in self.layers:
                target, on_input = (
                    find_penultimate(model) if layer == PENULTIMATE else (layer, False)
                )
                if target not in modules:
                    raise TransferPipeError(
                        f"{type(model).__name__} has no layer {layer!r}; use a name from "
                        "model.named_modules() or 'penultimate'"
                    )
                module = modules[target]
                if on_input:
                    handle = module.register_forward_pre_hook(self._pre_hook(layer))
                else:
                    handle = module.register_forward_hook(self._hook(layer, target in nhwc))
                self._handles.append(handle)
        except BaseException:
            self.remove()
            raise

    def _store(self, layer: str, value: torch.Tensor, nhwc: bool) -> None:
        captured: dict[str, torch.Tensor] | None = getattr(self._local, "captured", None)
        if captured is not None:  # None: the model ran outside this tap's forward
            captured[layer] = pool_features(value, layer, nhwc)

    def _pre_hook(self, layer: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._store(layer, _first_tensor(args, layer), nhwc=False)

        return hook

    def _hook(self, layer: str, nhwc: bool) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._store(layer, _first_tensor(output, layer), nhwc)

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model once; return pooled features per layer, in the requested order."""
        captured: dict[str, torch.Tensor] = {}
        self._local.captured = captured
        try:
            self.model(x)
        finally:
            self._local.captured = None
        missing = [layer for layer in self.layers if layer not in captured]
        if missing:
            raise TransferPipeError(
                f"layers {missing} did not run in {type(self.model).__name__}'s forward pass "
                "(e.g. auxiliary heads that only run in training); choose other layers"
            )
        return {layer: captured[layer] for layer in self.layers}

    def remove(self) -> None:
        """Detach every hook this tap put on the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> LayerTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def resolve_layers(
    spec: BackboneSpec, model: nn.Module, requested: Sequence[str] | None
) -> list[str]:
    """Expand requested layer names (``spec.layer_names``) and check them against
    ``model`` (built from ``spec``): every name but ``penultimate`` must be a module."""
    layers = spec.layer_names(requested)
    modules = {name for name, _ in model.named_modules()}
    unknown = [n for n in layers if n != PENULTIMATE and n not in modules]
    if unknown:
        raise TransferPipeError(
            f"backbone {spec.id} has no layer(s) {', '.join(map(repr, unknown))}; "
            f"valid names include {_layer_examples(spec, model)}"
        )
    if PENULTIMATE in layers:
        find_penultimate(model)  # fail here, with its message, rather than mid-run
    return layers


def _layer_examples(spec: BackboneSpec, model: nn.Module) -> str:
    try:
        stages = spec.stage_layers()
    except TransferPipeError:
        stages = []
    top = [name for name, _ in model.named_children()]
    examples = [PENULTIMATE, STAGES, *stages[:4], *top[:4]]
    return ", ".join(dict.fromkeys(examples)) + " (any name from model.named_modules())"


def layer_widths(model: nn.Module, layers: Sequence[str], image_size: int) -> dict[str, int]:
    """Feature width per layer, read off one forward pass of a blank image."""
    with LayerTap(model, layers) as tap, torch.inference_mode():
        outputs = tap(torch.zeros(1, 3, image_size, image_size))
    return {name: int(out.shape[1]) for name, out in outputs.items()}
