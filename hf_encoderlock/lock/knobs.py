"""Knobs declared once: a field of a group dataclass carries its help and its range; everything else reads them.

A *knob group* is a dataclass (subclass of :class:`KnobGroup`) whose fields are declared with :func:`knob`, as
PEFT's ``LoraConfig`` and TRL's ``SFTConfig`` declare theirs with ``field(metadata={"help": ...})``, plus a range.
From that one declaration come:

- the group's own validation (:meth:`KnobGroup.problems`, run when the group is constructed);
- the flat ``EncoderLockConfig`` fields that users, flags and YAML files name (``info_mmd_weight``: the group's
  ``flag_prefix`` + the field name), built by :func:`flag_fields`, with the same default and help;
- the validation of those flat fields (the same checks, naming the flat field);
- the group filled from a config (:meth:`KnobGroup.from_lock_config`), which is what the objective reads.

So a new knob of an objective is one ``knob(...)`` line on its group dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field
from typing import Any, ClassVar, Literal

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")
#: The metadata keys that ``HfArgumentParser`` may receive: it hands a field's metadata to ``add_argument`` whole.
FLAG_METADATA = ("help", "choices")


@dataclass(frozen=True)
class Interval:
    """A range of numbers written as in mathematics, e.g. ``"[0, inf)"`` or ``"(0, 1]"``."""

    low: float
    high: float
    low_open: bool
    high_open: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        """``"(0, 1]"`` -> ``Interval(0, 1, low_open=True, high_open=False)``; ``inf`` / ``-inf`` for no bound."""
        match = _INTERVAL.match(text)
        if match is None:
            raise ValueError(f"not an interval: {text!r} (write e.g. '[0, inf)' or '(0, 1]')")
        opening, low, high, closing = match.groups()
        interval = cls(float(low), float(high), opening == "(", closing == ")")
        if math.isnan(interval.low) or math.isnan(interval.high) or interval.low > interval.high:
            raise ValueError(f"not an interval: {text!r}")
        return interval

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if math.isinf(self.high):  # the common case, said as the comparison it is
            return f"> {low}" if self.low_open else f">= {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def knob(
    default: Any = MISSING,
    *,
    help: str,
    range: str | None = None,
    choices: Sequence[Any] | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A knob of a :class:`KnobGroup`: a dataclass field with its ``help``, its ``range`` (an interval such as
    ``"[0, inf)"``, for numbers and each number of a sequence) and its ``choices`` (for strings and each string of a
    sequence). A sequence knob is typed ``list[X]``, ``tuple[X, ...]`` or ``tuple[X, X]`` (exactly two) and is
    never empty; on ``EncoderLockConfig`` (flags, YAML) it is a list."""
    metadata: dict[str, Any] = {"help": help}
    if range is not None:
        metadata["range"] = Interval.parse(range)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, default_factory=default_factory, metadata=metadata)


def knob_fields(group: type) -> tuple[Field, ...]:
    """The fields of ``group`` declared with :func:`knob` (the others, e.g. a derived or shared value, are not
    knobs)."""
    return tuple(spec for spec in dataclasses.fields(group) if spec.init and "help" in spec.metadata)


@functools.cache
def _hints(group: type) -> dict[str, Any]:
    return typing.get_type_hints(group)  # the annotations are text (postponed evaluation): resolve them once


def is_whole(value: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A real number, not a bool, neither infinite nor NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _accepts(hint: Any, metadata: dict[str, Any], value: Any) -> bool:
    """Whether one value (a scalar, or one item of a list knob) fits its declared type, range and choices."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        inner = [arg for arg in args if arg is not type(None)]
        return value is None or _accepts(inner[0], metadata, value)
    if typing.get_origin(hint) is Literal:
        return value in args
    if "choices" in metadata:
        return value in metadata["choices"]
    if hint is int:
        fits = is_whole(value)
    elif hint is float:
        fits = is_finite(value)
    else:
        fits = isinstance(value, hint)
    return fits and ("range" not in metadata or value in metadata["range"])


def _wanted(hint: Any, metadata: dict[str, Any], many: bool = False) -> str:
    """What :func:`_accepts` accepts, in words (``many``: for the items of a list)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return "None or " + _wanted(next(arg for arg in args if arg is not type(None)), metadata, many)
    choices = args if typing.get_origin(hint) is Literal else metadata.get("choices")
    if choices is not None:
        return f"{'values' if many else 'one'} from {tuple(choices)}"
    one, several = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers")}.get(
        hint, (f"a {getattr(hint, '__name__', hint)}", f"{getattr(hint, '__name__', hint)} values")
    )
    kind = several if many else one
    return f"{kind} {metadata['range']}" if "range" in metadata else kind


def _sequence_item(hint: Any) -> tuple[Any, int | None] | None:
    """``(item type, exact length or None)`` of a sequence knob's type (``list[X]``, ``tuple[X, ...]``,
    ``tuple[X, X]``); None for a knob that holds one value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return args[0], None
    if origin is tuple:
        return (args[0], None) if args[-1] is Ellipsis else (args[0], len(args))
    return None


def _knob_problem(name: str, value: Any, spec: Field, hint: Any) -> str | None:
    """The problem with the value of the knob declared by ``spec`` (typed ``hint``), named ``name``, if any."""
    metadata = dict(spec.metadata)
    sequence = _sequence_item(hint)
    if sequence is not None:
        item, length = sequence
        wanted = f"a {'list of ' + str(length) if length else 'non-empty list of'} {_wanted(item, metadata, many=True)}"
        whole = isinstance(value, (list, tuple)) and (len(value) == length if length else len(value) > 0)
        ok = whole and all(_accepts(item, metadata, one) for one in value)
    else:
        wanted, ok = _wanted(hint, metadata), _accepts(hint, metadata, value)
    return None if ok else f"{name} must be {wanted}, got {value!r}"


class KnobGroup:
    """Base of a dataclass of knobs (fields declared with :func:`knob`); subclasses are ``@dataclass``.

    ``flag_prefix`` names the group's fields on ``EncoderLockConfig`` (``info_`` + ``r2_weight``), and ``flag_help``
    starts their help there (which objective reads them). Constructing a group validates it.
    """

    flag_prefix: ClassVar[str] = ""
    flag_help: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = self.problems(self, prefix="")
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    @classmethod
    def problems(cls, source: Any, prefix: str | None = None) -> list[str]:
        """Every problem with the group's values as ``source`` holds them (attribute ``prefix`` + field name; by
        default the flat names of ``EncoderLockConfig``), each naming its attribute."""
        prefix = cls.flag_prefix if prefix is None else prefix
        hints = _hints(cls)
        values = {spec.name: getattr(source, prefix + spec.name) for spec in knob_fields(cls)}
        problems = [
            problem
            for spec in knob_fields(cls)
            if (problem := _knob_problem(prefix + spec.name, values[spec.name], spec, hints[spec.name]))
        ]
        return problems or cls.joint_problems(values, prefix)  # joint checks assume each value is of its kind

    @classmethod
    def joint_problems(cls, values: dict[str, Any], prefix: str) -> list[str]:
        """Problems of several knobs together (each already valid alone); a group that has such rules overrides this,
        naming the knobs ``prefix`` + field name."""
        return []

    @classmethod
    def from_lock_config(cls, config: Any, **values: Any) -> KnobGroup:
        """The group as ``config`` (an ``EncoderLockConfig``) sets it; ``values`` fill the fields that are not knobs."""
        hints = _hints(cls)
        knobs = {}
        for spec in knob_fields(cls):
            value = getattr(config, cls.flag_prefix + spec.name)
            is_tuple = typing.get_origin(hints[spec.name]) is tuple
            knobs[spec.name] = tuple(value) if is_tuple else value  # the config holds a list (what a flag parses)
        return cls(**knobs, **values)


def flag_names(group: type[KnobGroup]) -> tuple[str, ...]:
    """The names ``group``'s knobs have on ``EncoderLockConfig``, in declaration order."""
    return tuple(group.flag_prefix + spec.name for spec in knob_fields(group))


def _as_list(spec: Field) -> Callable[[], list]:
    """A factory of the sequence knob's default, as a fresh list."""
    if spec.default_factory is not MISSING:
        return lambda: list(spec.default_factory())
    return lambda: list(spec.default)


def flag_fields(*groups: type[KnobGroup]) -> type:
    """A dataclass holding every knob of ``groups`` as a flat field (``flag_prefix`` + name), with the knob's
    default, type and help (``flag_help`` first): ``EncoderLockConfig`` inherits it, so ``HfArgumentParser``, YAML
    files and keyword arguments see the flat names. Only ``help`` and ``choices`` travel on: the parser hands a
    field's metadata to ``argparse`` as keywords."""
    flat = []
    for group in groups:
        hints = _hints(group)
        for spec in knob_fields(group):
            metadata = {key: spec.metadata[key] for key in FLAG_METADATA if key in spec.metadata}
            metadata["help"] = group.flag_help + metadata["help"]
            hint, sequence = hints[spec.name], _sequence_item(hints[spec.name])
            if sequence is None:
                declared = field(default=spec.default, default_factory=spec.default_factory, metadata=metadata)
            else:  # HfArgumentParser reads a list (nargs="+"), not a tuple
                hint, declared = list[sequence[0]], field(default_factory=_as_list(spec), metadata=metadata)
            flat.append((group.flag_prefix + spec.name, hint, declared))
    names = [name for name, _, _ in flat]
    if len(set(names)) != len(names):
        raise ValueError(f"knob groups {[g.__name__ for g in groups]} declare a flag name twice: {sorted(names)}")
    made = dataclasses.make_dataclass("KnobFlags", flat)
    made.__module__ = __name__
    made.__doc__ = "The flat fields of the knob groups " + ", ".join(group.__name__ for group in groups) + "."
    return made
