"""Load local weight files into a backbone, offline.

`load_local_weights(backbone, path)` is what `backbone.weights=<file>` does. It accepts

* a plain ``state_dict`` (``torch.save(model.state_dict(), path)``), also one saved from a
  wrapper (``module.``, ``net.``, ...);
* a checkpoint dict holding one under ``"state_dict"`` (PyTorch Lightning), ``"model"`` or
  ``"model_state_dict"``; the prefix in front of the backbone's own keys (e.g.
  ``model.backbone.``, ``backbone.``) is found automatically: the prefix under which most
  keys match the backbone's, the longest one on a tie. Keys outside that prefix (heads,
  other modules of a Lightning model) are ignored.

On the way it

* lets the backbone translate foreign key names first when it defines
  ``remap_state_dict(state_dict) -> state_dict`` (lukemelas EfficientNet flat block
  indices, torchvision DenseNet layer names, ...);
* adapts the input-stem convolution when the file was trained with another number of input
  channels (see `adapt_stem_weight`);
* drops classifier keys the backbone does not have (``fc``, ``_fc``, ``classifier``,
  ``head``, ...: a backbone has no classifier, heads live in the task module);
* fills in ``num_batches_tracked`` buffers that old checkpoints lack;
* then calls ``load_state_dict(strict=True)`` and, when keys or shapes do not fit, raises a
  `WeightsMismatchError` that lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dkbench.errors import UserError

log = logging.getLogger(__name__)

#: Module names of classification heads; keys under them that the backbone lacks are dropped.
CLASSIFIER_NAMES = frozenset(
    {"fc", "_fc", "classifier", "head", "heads", "class_layers", "last_linear", "linear", "logits"}
)
#: Where a checkpoint dict may keep its state_dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")


class WeightsMismatchError(UserError, ValueError):
    """A weight file does not fit the backbone; the message lists the offending keys."""


class WeightsFileNotFoundError(UserError, FileNotFoundError):
    """`backbone.weights` names a file that does not exist."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had offline; says what to set instead."""


def check_weights_file(path: str | os.PathLike) -> str:
    """Return `path` as a string, or raise FileNotFoundError naming the setting."""
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise WeightsFileNotFoundError(
            f"backbone weights file not found: {path!r}. Set `backbone.weights` to an existing "
            f"local file (a state_dict or a Lightning checkpoint), or `backbone.weights=null`."
        )
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file and return its flat name → tensor state dict (still with any prefix).

    Loads with ``weights_only=True`` only: a file that pickles other Python objects (e.g. the
    hyper-parameters of custom classes) is refused, never unpickled, because unpickling runs
    code from the file. The error says how to strip such a file down to its tensors.
    """
    path = check_weights_file(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise WeightsMismatchError(
            f"{path}: holds pickled Python objects beyond tensors ({reason}); dkbench never unpickles them "
            f"(that runs code from the file). If you trust the file, open it in your own Python session, "
            f"torch.save its state_dict (tensors only) to a new file and point backbone.weights at that file"
        ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise WeightsMismatchError(f"{path}: expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsMismatchError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:20]})")
    return state


def find_prefix(keys: list[str] | set[str], target_keys: set[str]) -> str:
    """The prefix (``""``, ``"backbone."``, ``"model.backbone."``, ...) under which most of
    `keys` are keys of `target_keys`; the longest such prefix on a tie."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in target_keys:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
    if not counts:
        return ""
    return max(counts, key=lambda p: (counts[p], len(p)))


def stem_weight_key(backbone: nn.Module) -> str | None:
    """Name of the input-stem conv weight: ``backbone.stem_weight_key`` or the first conv."""
    key = getattr(backbone, "stem_weight_key", None)
    if key:
        return key
    for name, module in backbone.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"{name}.weight" if name else "weight"
    return None


def adapt_stem_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a stem conv weight (out, c_src, *k) to `in_chans` input channels.

    Scaled so that activations keep their magnitude when every input channel carries the
    same image (a grey image shown as RGB, or RGB collapsed to grey):

    * → 1 channel: **sum** over the source channels. A grey image x fed to the RGB net as
      (x, x, x) gives Σ_c W_c * x, exactly what the summed kernel gives on x.
    * 1 → N channels: **repeat and divide by N**; (x, ..., x) gives the 1-channel output.
    * c_src → N otherwise (e.g. RGB → 4): repeat the kernels cyclically and scale by
      c_src / N (as timm's ``adapt_input_conv``), which keeps the sum over channels.
    """
    c_src = weight.shape[1]
    if c_src == in_chans:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif c_src == 1:
        w = w.repeat(1, in_chans, *([1] * (w.dim() - 2))) / in_chans
    else:
        reps = -(-in_chans // c_src)
        w = w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :in_chans] * (c_src / in_chans)
    return w.to(dtype)


def _is_classifier_key(key: str) -> bool:
    return any(part in CLASSIFIER_NAMES for part in key.split(".")[:-1])


def _listed(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (f", … +{len(keys) - n} more" if len(keys) > n else "") + "]"


def match_state_dict(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state_dict"
) -> dict[str, torch.Tensor]:
    """Turn a foreign state dict into one that fits `backbone` exactly, or raise
    `WeightsMismatchError` naming the keys that do not fit. `source` names the file in
    messages."""
    target = backbone.state_dict()
    remap = getattr(backbone, "remap_state_dict", None)
    if callable(remap):
        state = remap(dict(state))
    prefix = find_prefix(list(state), set(target))
    if prefix:
        log.info("%s: using keys under prefix %r", source, prefix)
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    outside = sorted(k for k in state if not k.startswith(prefix))
    ignored = len(outside)

    # classifier keys of the source model: a backbone has no classifier
    dropped = [k for k in own if k not in target and _is_classifier_key(k)]
    for k in dropped:
        del own[k]
    if dropped or outside:  # a partial load says what it left behind
        log.warning("%s: not loaded — %d classifier key(s) %s; %d key(s) outside prefix %r %s", source,
                    len(dropped), _listed(dropped), len(outside), prefix, _listed(outside))

    # input stem with another channel count
    stem = stem_weight_key(backbone)
    if stem and stem in own and stem in target:
        w_src, w_tgt = own[stem], target[stem]
        if w_src.dim() == w_tgt.dim() and w_src.shape[1] != w_tgt.shape[1] and w_src.shape[0] == w_tgt.shape[0]:
            log.info("%s: adapting %s from %d to %d input channels", source, stem, w_src.shape[1], w_tgt.shape[1])
            own[stem] = adapt_stem_weight(w_src, w_tgt.shape[1])

    # BatchNorm counters that old checkpoints do not save
    for k, v in target.items():
        if k.endswith("num_batches_tracked") and k not in own:
            own[k] = v.clone()

    missing = sorted(set(target) - set(own))
    unexpected = sorted(set(own) - set(target))
    mis_shaped = sorted(
        f"{k}: file {tuple(own[k].shape)} vs backbone {tuple(target[k].shape)}"
        for k in set(own) & set(target)
        if own[k].shape != target[k].shape
    )
    if missing or unexpected or mis_shaped:

        def show(items: list[str], n: int = 15) -> str:
            more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(items[:n]) + more if items else "none"

        raise WeightsMismatchError(
            f"weights from {source} do not fit backbone {type(backbone).__name__} "
            f"(key prefix used: {prefix!r}, {len(own)} keys kept, {ignored} outside the prefix ignored, "
            f"{len(dropped)} classifier keys dropped).\n"
            f"  missing ({len(missing)}): {show(missing)}\n"
            f"  unexpected ({len(unexpected)}): {show(unexpected)}\n"
            f"  wrong shape ({len(mis_shaped)}): {show(mis_shaped, 5)}\n"
            f"Check that `backbone` names the architecture the file was trained with."
        )
    return own


def load_state_dict_into(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state_dict"
) -> nn.Module:
    """`match_state_dict` then a strict `load_state_dict`; returns the backbone."""
    own = match_state_dict(backbone, state, source)
    backbone.load_state_dict(own, strict=True)
    log.info("loaded %d tensors from %s into %s", len(own), source, type(backbone).__name__)
    return backbone


def load_local_weights(backbone: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local weight file (state_dict or Lightning checkpoint) into `backbone`.

    See the module docstring for what is accepted and adapted. Raises FileNotFoundError
    (naming ``backbone.weights``) for a missing file and `WeightsMismatchError` when the
    keys do not fit. Returns the backbone.
    """
    path = check_weights_file(path)
    return load_state_dict_into(backbone, read_checkpoint(path), source=path)


def no_offline_pretrained(name: str, hint: str = "") -> WeightsUnavailableError:
    """The error a factory raises for `pretrained=True` when no weights ship offline."""
    return WeightsUnavailableError(
        f"backbone '{name}' has no pretrained weights available offline (the library would "
        f"download them, and dkbench never downloads at run time). Set `backbone.pretrained=false`, "
        f"or pass a local file with `backbone.weights=/path/to/file.pth`{'; ' + hint if hint else ''}. "
        f"Offline ImageNet weights ship for `efficientnet_lite0`."
    )
