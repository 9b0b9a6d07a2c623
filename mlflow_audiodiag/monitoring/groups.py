"""Named groups of model parameters that mean "per layer" for any model.

The default grouping finds the model's repeated blocks (the entries of an ``nn.ModuleList`` or
``nn.Sequential``: transformer layers, conv blocks, the layers of an MLP) and makes each one a
group; everything on the way to them (a stem or embedding, a head) is a group of its own. A
model without repeated blocks is grouped by its top-level children. Multi-layer RNNs are split
per layer, normalization layers join their neighbour, and more than ``max_groups`` groups are
merged in runs of neighbours. Groups are put in the order in which the forward pass reaches
them once :meth:`ParameterGroups.reorder` has seen a forward pass, so that "first" and "last"
mean the input end and the output end.

    >>> import torch.nn as nn
    >>> mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> list(ParameterGroups.default(mlp))
    ['linear.0', 'linear.2']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

OTHER = "other"
MAX_GROUPS = 48
NamedParameter = tuple[str, nn.Parameter]

_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_RNN_LAYER = re.compile(r"_l(\d+)(?:_reverse)?$")


@dataclass(frozen=True, eq=False)
class ParameterGroups(Mapping[str, list[NamedParameter]]):
    """Ordered mapping ``group name -> [(parameter name, parameter), ...]``.

    Only parameters with ``requires_grad`` are listed; ``frozen_fraction`` gives, per group, the
    share of parameter elements that are frozen, so frozen weights stay visible. A group whose
    parameters are all frozen is kept with an empty list. ``merged`` tells how many groups the
    default grouping found before merging neighbours down to its cap (0 when nothing merged).
    """

    _groups: dict[str, list[NamedParameter]]
    _frozen: dict[str, list[str]]
    _sizes: dict[str, int]
    merged: int = 0
    prefix: str = ""  # the wrapper's prefix of the grouped model's parameter names
    _order: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> list[NamedParameter]:
        return self._groups[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def order(self) -> list[str]:
        """Group names in forward execution order once :meth:`reorder` ran, else as built."""
        return list(self._order) or list(self._groups)

    def reorder(self, first_call: Mapping[str, int]) -> None:
        """Orders the groups by the first forward call of their modules.

        ``first_call`` maps module names (as in ``named_modules``) to the index of their first
        call in a forward pass. A group's position is its earliest leaf module (parameters of
        a container, such as a class token, follow the leaves they are grouped with); groups
        the forward pass never reached go last, in their built order.
        """
        built = list(self._groups)

        def position(group: str) -> tuple[int, int]:
            owners = [_owner(name) for name in self._all_names(group)]
            calls = [first_call[o] for o in owners if o in first_call and _is_leaf_name(o, owners)]
            calls = calls or [first_call[o] for o in owners if o in first_call]
            return (min(calls), 0) if calls else (math.inf, built.index(group))  # type: ignore[return-value]

        self._order[:] = sorted(built, key=position)

    def _all_names(self, group: str) -> list[str]:
        return [n for n, _ in self._groups[group]] + self._frozen[group]

    def frozen_fraction(self) -> dict[str, float]:
        """Per group, the share of parameter elements with ``requires_grad=False``."""
        out = {}
        for name, size in self._sizes.items():
            trainable = sum(p.numel() for _, p in self._groups[name])
            out[name] = 1.0 - trainable / size if size else 0.0
        return out

    def trainable_count(self) -> int:
        """Trainable parameter elements over every group."""
        return sum(p.numel() for params in self._groups.values() for _, p in params)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the forward order, the merge note, and per group its parameters."""
        fractions = self.frozen_fraction()
        return {
            "order": self.order,
            "merged_from": self.merged or None,
            "note": (
                f"{self.merged} blocks were merged in runs of neighbours into {len(self)} groups"
                if self.merged
                else "one group per block, stem and head"
            ),
            "groups": {
                name: {
                    "param_count": self._sizes[name],
                    "frozen_fraction": fractions[name],
                    "trainable": [n for n, _ in self._groups[name]],
                    "frozen": self._frozen[name],
                }
                for name in self.order
            },
        }

    def root(self, model: nn.Module) -> nn.Module:
        """The module the groups were built on (the model inside a wrapper)."""
        return model.get_submodule(self.prefix.rstrip(".")) if self.prefix else model

    def parameters(self) -> list[nn.Parameter]:
        """All tracked (trainable) parameters in group order."""
        return [param for params in self._groups.values() for _, param in params]

    @classmethod
    def default(cls, model: nn.Module, max_groups: int = MAX_GROUPS) -> ParameterGroups:
        """One group per repeated block, plus the stem and the head (see the module doc).

        A wrapper whose parameters all live in one child (a LightningModule around a network)
        is grouped as that child; group names are then relative to it.
        """
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        inner, prefix = _unwrap(model)
        units = _merge_norms(_units(inner))
        merged = len(units) if len(units) > max_groups else 0
        if merged:
            units = _merge_runs(units, max_groups)
        owner = {param: unit.name for unit in units for param in unit.params}
        assignment = {
            full: owner.get(full[len(prefix) :], OTHER) for full, _ in model.named_parameters()
        }
        return cls._build(model, assignment, [unit.name for unit in units], merged, prefix)

    @classmethod
    def from_prefixes(
        cls, model: nn.Module, prefixes: Mapping[str, Sequence[str]]
    ) -> ParameterGroups:
        """Groups from parameter-name prefixes, e.g. ``{"backbone": ["encoder"]}``.

        A prefix matches whole dotted components (``"encoder.layers.1"`` does not match
        ``"encoder.layers.10.bias"``); the longest matching prefix wins. Parameters that match
        no prefix go to ``other``. A prefix that matches no parameter raises ``ValueError``.
        """
        names = [name for name, _ in model.named_parameters()]
        owners: dict[str, str] = {}
        for group, group_prefixes in prefixes.items():
            if group == OTHER:
                raise ValueError(f"group name {OTHER!r} is reserved for unmatched parameters")
            if isinstance(group_prefixes, str):
                raise ValueError(f"prefixes of group {group!r} must be a list of strings")
            for prefix in group_prefixes:
                key = prefix.rstrip(".")
                if key in owners and owners[key] != group:
                    raise ValueError(
                        f"prefix {prefix!r} is given for both {owners[key]!r} and {group!r}"
                    )
                if not any(_matches(name, key) for name in names):
                    raise ValueError(
                        f"prefix {prefix!r} of group {group!r} matches no parameter of "
                        f"{type(model).__name__}"
                    )
                owners[key] = group
        ordered = sorted(owners, key=len, reverse=True)
        assignment = {}
        for name in names:
            prefix = next((p for p in ordered if _matches(name, p)), None)
            assignment[name] = OTHER if prefix is None else owners[prefix]
        return cls._build(model, assignment, list(prefixes))

    @classmethod
    def _build(
        cls,
        model: nn.Module,
        assignment: Mapping[str, str],
        names: Sequence[str],
        merged: int = 0,
        prefix: str = "",
    ) -> ParameterGroups:
        members: dict[str, list[NamedParameter]] = {group: [] for group in names}
        members[OTHER] = []
        for name, param in model.named_parameters():
            members[assignment[name]].append((name, param))
        members = {g: params for g, params in members.items() if params}
        return cls(
            {g: [(n, p) for n, p in params if p.requires_grad] for g, params in members.items()},
            {g: [n for n, p in params if not p.requires_grad] for g, params in members.items()},
            {g: sum(p.numel() for _, p in params) for g, params in members.items()},
            merged,
            prefix,
        )


# --- the default grouping ------------------------------------------------------------------------


@dataclass
class _Unit:
    """A group being built: its name, parameter names (relative to the grouped module), the
    module path its name derives from and whether it is only a normalization layer."""

    name: str
    params: list[str]
    parent: str = ""
    norm: bool = False


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The single child holding every parameter of a wrapper (recursively), and its prefix."""
    prefix = ""
    while True:
        children = [(n, c) for n, c in model.named_children() if _has_params(c)]
        if not (
            len(children) == 1
            and _numel(children[0][1]) == _numel(model)
            and any(True for _ in children[0][1].named_children())
        ):
            return model, prefix
        name, model = children[0]
        prefix += name + "."


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_repeated(module: nn.Module) -> bool:
    """A stack of blocks with parameters: an ``nn.ModuleList`` (even of one layer) or an
    ``nn.Sequential`` of at least two."""
    blocks = sum(1 for c in module.children() if _has_params(c))
    if isinstance(module, nn.ModuleList):
        return blocks >= 1
    return isinstance(module, nn.Sequential) and blocks >= 2


def _contains_repeated(module: nn.Module) -> bool:
    return any(_is_repeated(m) for m in module.modules())


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _readable(path: str, module: nn.Module) -> str:
    """The module's path, with the class name in front of a bare index (``linear.0``)."""
    if path and all(part.isdigit() for part in path.split(".")):
        return f"{type(module).__name__.lower()}.{path}"
    return path or type(module).__name__.lower()


def _params_of(path: str, module: nn.Module, recurse: bool = True) -> list[str]:
    return [_join(path, n) for n, _ in module.named_parameters(recurse=recurse)]


def _units(model: nn.Module) -> list[_Unit]:
    """Groups in registration order: repeated blocks one each, whole subtrees elsewhere; a
    model without repeated blocks is split into its top-level children."""
    units: list[_Unit] = []
    if _contains_repeated(model):
        _split(model, "", units)
        return units
    for name, child in model.named_children():
        if _has_params(child):
            units.extend(_leaf_units(name, child, ""))
    _attach(units, _params_of("", model, recurse=False), model, "")
    return units


def _split(module: nn.Module, path: str, units: list[_Unit]) -> None:
    """Follows the paths to repeated containers; any other subtree is one group."""
    start = len(units)
    for name, child in module.named_children():
        if not _has_params(child):
            continue
        child_path = _join(path, name)
        if _is_repeated(module) or not _contains_repeated(child):
            units.extend(_leaf_units(child_path, child, path))
        else:
            _split(child, child_path, units)
    mine = units[start:]
    _attach(mine, _params_of(path, module, recurse=False), module, path)
    units[start:] = mine


def _leaf_units(path: str, module: nn.Module, parent: str) -> list[_Unit]:
    """One group for ``module``; a multi-layer RNN gives one group per layer."""
    name = _readable(path, module)
    if isinstance(module, nn.RNNBase) and module.num_layers > 1:
        layers: dict[int, list[str]] = {}
        for param, _ in module.named_parameters():
            found = _RNN_LAYER.search(param)
            layers.setdefault(int(found.group(1)) if found else 0, []).append(_join(path, param))
        return [_Unit(f"{name}.l{k}", params, parent) for k, params in sorted(layers.items())]
    norm = isinstance(module, _NORMS)
    return [_Unit(name, _params_of(path, module), parent, norm)]


def _attach(units: list[_Unit], own: list[str], module: nn.Module, path: str) -> None:
    """A container's own parameters (a class token, a scale) join its first group."""
    if not own:
        return
    if units:
        units[0].params[:0] = own
    else:
        units.append(_Unit(_readable(path, module), own, _parent(path)))


def _merge_norms(units: list[_Unit]) -> list[_Unit]:
    """A group that is only a normalization layer joins a neighbour with the same parent
    (the previous one first), else the previous group."""
    out = list(units)
    i = 0
    while i < len(out) and len(out) > 1:
        unit = out[i]
        if not unit.norm:
            i += 1
            continue
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(out)]
        same = [j for j in neighbours if out[j].parent == unit.parent]
        target = out[(same or neighbours)[0]]
        if out.index(target) < i:
            target.params.extend(unit.params)
        else:
            target.params[:0] = unit.params
        del out[i]
    return out


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _merge_runs(units: list[_Unit], max_groups: int) -> list[_Unit]:
    """``max_groups`` runs of neighbours, of sizes that differ by at most one."""
    bounds = [round(i * len(units) / max_groups) for i in range(max_groups + 1)]
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        run = units[start:stop]
        params = [p for unit in run for p in unit.params]
        out.append(_Unit(_run_name([u.name for u in run]), params, run[0].parent))
    return out


def _run_name(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    first, last = names[0], names[-1]
    head, _, tail = first.rpartition(".")
    last_head, _, last_tail = last.rpartition(".")
    if head == last_head and tail.isdigit() and last_tail.isdigit():
        return f"{head}.{tail}-{last_tail}"
    return f"{first}..{last}"


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def _is_leaf_name(owner: str, owners: list[str]) -> bool:
    return not any(o != owner and o.startswith(owner + ".") for o in owners) and owner != ""


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
