"""Named groups of model parameters that the diagnostics report on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

OTHER = "other"
NamedParameter = tuple[str, nn.Parameter]


@dataclass(frozen=True, eq=False)
class ParameterGroups(Mapping[str, list[NamedParameter]]):
    """Ordered mapping ``group name -> [(parameter name, parameter), ...]``.

    Only parameters with ``requires_grad`` are listed; ``frozen_fraction`` gives, per group, the
    share of parameter elements that are frozen, so frozen weights stay visible. A group whose
    parameters are all frozen is kept with an empty list.
    """

    _groups: dict[str, list[NamedParameter]]
    _frozen: dict[str, list[str]]
    _sizes: dict[str, int]

    def __getitem__(self, name: str) -> list[NamedParameter]:
        return self._groups[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def frozen_fraction(self) -> dict[str, float]:
        """Per group, the share of parameter elements with ``requires_grad=False``."""
        out = {}
        for name, size in self._sizes.items():
            trainable = sum(p.numel() for _, p in self._groups[name])
            out[name] = 1.0 - trainable / size if size else 0.0
        return out

    def metrics(self) -> dict[str, float]:
        """``frozen_fraction/<group>`` and ``param_count/<group>`` (all elements)."""
        out = {f"frozen_fraction/{name}": value for name, value in self.frozen_fraction().items()}
        out.update({f"param_count/{name}": float(size) for name, size in self._sizes.items()})
        return out

    def describe(self) -> dict[str, dict[str, object]]:
        """JSON-ready description: per group its trainable and frozen parameter names."""
        fractions = self.frozen_fraction()
        return {
            name: {
                "param_count": self._sizes[name],
                "frozen_fraction": fractions[name],
                "trainable": [n for n, _ in params],
                "frozen": self._frozen[name],
            }
            for name, params in self._groups.items()
        }

    @classmethod
    def default(cls, model: nn.Module) -> ParameterGroups:
        """Groups for :class:`AudioTransformer` (``embedding``, ``encoder.<i>``, ``head``), or
        one group per top-level child with parameters plus ``other`` for any other model.

        A wrapper whose parameters all live in one child (a LightningModule or a Hugging Face
        model around the network) is grouped as that child."""
        children = [c for _, c in model.named_children() if next(c.parameters(), None) is not None]
        if (
            not _is_audio_transformer(model)
            and len(children) == 1
            and _numel(children[0]) == _numel(model)
            and any(True for _ in children[0].named_children())
        ):
            return cls.default(children[0])
        names = {name for name, _ in model.named_parameters()}
        if _is_audio_transformer(model):
            layers = len(model.encoder.layers)
            prefixes: dict[str, list[str]] = {
                "embedding": ["embedding", "cls_token", "pos_embedding"],
                **{f"encoder.{i}": [f"encoder.layers.{i}"] for i in range(layers)},
                "head": ["norm", "head"],
            }
        else:
            prefixes = {
                child: [child]
                for child, module in model.named_children()
                if next(module.parameters(), None) is not None
            }
        prefixes = {
            group: used
            for group, options in prefixes.items()
            if (used := [p for p in options if any(_matches(n, p) for n in names)])
        }
        return cls._build(model, prefixes)

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
        return cls._build(model, {g: [p.rstrip(".") for p in ps] for g, ps in prefixes.items()})

    @classmethod
    def _build(cls, model: nn.Module, prefixes: Mapping[str, Sequence[str]]) -> ParameterGroups:
        owners = {prefix: group for group, ps in prefixes.items() for prefix in ps}
        ordered = sorted(owners, key=len, reverse=True)
        members: dict[str, list[NamedParameter]] = {group: [] for group in prefixes}
        members[OTHER] = []
        for name, param in model.named_parameters():
            prefix = next((p for p in ordered if _matches(name, p)), None)
            members[OTHER if prefix is None else owners[prefix]].append((name, param))
        if not members[OTHER]:
            del members[OTHER]
        return cls(
            {
                group: [(n, p) for n, p in params if p.requires_grad]
                for group, params in members.items()
            },
            {
                group: [n for n, p in params if not p.requires_grad]
                for group, params in members.items()
            },
            {group: sum(p.numel() for _, p in params) for group, params in members.items()},
        )

    def parameters(self) -> list[nn.Parameter]:
        """All tracked (trainable) parameters in group order."""
        return [param for params in self._groups.values() for _, param in params]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_audio_transformer(model: nn.Module) -> bool:
    encoder = getattr(model, "encoder", None)
    return (
        hasattr(model, "embedding")
        and hasattr(model, "head")
        and isinstance(getattr(encoder, "layers", None), nn.ModuleList)
    )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
