"""Click parameter types with declared ranges: every numeric option is finite and in range,
or the command stops with one line (click's usage error, exit 2) before any work starts."""

from __future__ import annotations

import math
from fractions import Fraction

import click

from clipag.batch import RunConfig
from clipag.generate import ANCHOR_SIDE, FLOW_ANCHOR
from clipag.settings import SETTINGS, Setting, config_default

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def number(text: str) -> float:
    """A float that may be written as a fraction: `4/255`."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise click.BadParameter(f"{text!r} is not a number") from None


def _bounds(low, high, low_open, high_open) -> str:
    left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    return " and ".join(p for p in (left, right) if p)


class Real(click.ParamType):
    """A finite float (fractions like 4/255 allowed) within [low, high]; either end may be
    open or absent."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def convert(self, value, param, ctx):
        x = float(value) if isinstance(value, (int, float)) else None
        if x is None:
            try:
                x = number(str(value))
            except click.BadParameter as exc:
                self.fail(exc.message, param, ctx)
        ok = math.isfinite(x)
        if ok and self.low is not None:
            ok = x > self.low if self.low_open else x >= self.low
        if ok and self.high is not None:
            ok = x < self.high if self.high_open else x <= self.high
        if not ok:
            bounds = _bounds(self.low, self.high, self.low_open, self.high_open)
            self.fail(f"{value!r} must be a finite number{' ' + bounds if bounds else ''}",
                      param, ctx)
        return x


class Count(click.IntRange):
    """A whole number in [low, high] (high defaults to 2**63 - 1, so nothing overflows)."""

    def __init__(self, low: int | None = 0, high: int | None = SEED_MAX):
        super().__init__(min=low, max=high)


class IntList(click.ParamType):
    """Comma-separated whole numbers in [low, high]: `16,32`; empty for none."""

    name = "list"
    what = "whole numbers"

    def __init__(self, low: int = 0, high: int = SEED_MAX):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.what} like 16,32",
                      param, ctx)
        if any(not self.low <= v <= self.high for v in items):
            self.fail(f"{value!r}: every entry must be in {self.low}..{self.high}", param, ctx)
        return items


class Sides(IntList):
    """Comma-separated image sides, each in 8..4096: `16,32`; empty for none."""

    name = "sides"
    what = "sides"

    def __init__(self):
        super().__init__(8, 4096)


class Reals(click.ParamType):
    """`n` comma-separated finite numbers, each within the setting's range: `1,50`; a pair
    must also rise (low <= high)."""

    name = "numbers"

    def __init__(self, setting: Setting, n: int):
        self.setting, self.n = setting, n

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p for p in str(value).split(",")]
        try:
            items = tuple(number(p.strip()) for p in parts)
        except click.BadParameter:
            items = ()
        if (len(items) != self.n or not all(self.setting.in_range(v) for v in items)
                or (self.n == 2 and items[0] > items[1])):
            what = "LOW,HIGH with LOW <= HIGH" if self.n == 2 else "R,G,B"
            self.fail(f"{value!r} must be {what}, finite numbers {self.setting.bounds()}",
                      param, ctx)
        return items


def click_type(setting: Setting):
    if setting.kind == "pair":
        return Reals(setting, 2)
    if setting.kind == "triple":
        return Reals(setting, 3)
    if setting.kind == "int":
        return Count(int(setting.low), int(setting.high))
    if setting.kind == "real":
        return Real(setting.low, setting.high, setting.low_open, setting.high_open)
    if setting.kind == "sides":
        return Sides()
    return None


# what --anchor and --anchor-side are when not given (resolved per start: generate.for_start)
ANCHOR_DEFAULT = f"{FLOW_ANCHOR:g} from a CrossFlow draft, else 0"
ANCHOR_SIDE_DEFAULT = f"the draft's side, else {ANCHOR_SIDE}"


def setting_option(name: str, *decls: str, show_default=True, base=None, run=None, **kwargs):
    """A click option for a declared setting: its type (range) from clipag.settings, its
    default from `base` (a GenerateConfig, default GenerateConfig()) or `run` (a RunConfig)."""
    setting = SETTINGS[name]
    default = config_default(setting, base) if setting.path else getattr(run or RunConfig(), name)
    if setting.kind in ("sides", "pair", "triple"):
        default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    flag = "--" + name.replace("_", "-")
    if setting.kind == "bool":
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=default,
                            show_default=show_default, **kwargs)
    if setting.kind == "real":
        kwargs["help"] = (kwargs.get("help", "") + f" (finite, {setting.bounds()})").strip()
    return click.option(flag, *decls, name, type=click_type(setting), default=default,
                        show_default=show_default, **kwargs)
