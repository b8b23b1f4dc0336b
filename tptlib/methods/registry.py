"""The methods by name: what `make_method`, `tpt eval --method` and listings know.

Each method is one row here and one module of `tptlib.methods`; adding a method touches those
two. A name is the one a run stores (`method.name`, "tpt+coop"); on the command line "+" is
written "-" ("tpt-coop"), and `make_method` takes either. A row names its class by module, so that
listing the names (and building the command line) imports no model code; the parameters, their
defaults, types and ranges are the class's fields (`tptlib.methods.params`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from . import params


@dataclass(frozen=True)
class MethodInfo:
    name: str                    # as runs store it and tables show it: method.name
    summary: str                 # one line for listings and --help
    cls: str | type              # "module:Class" in tptlib.methods, "package.module:Class" elsewhere, or the class
    preset: dict = field(default_factory=dict)   # keyword arguments the name stands for (zero+ensemble)
    requires: str | None = None  # a parameter the name needs (the checkpoint of tpt+coop)

    @property
    def command_name(self) -> str:
        return command_name(self.name)

    def load(self) -> type:
        """The method's class (its module imported now)."""
        if isinstance(self.cls, type):
            return self.cls
        module, cls = self.cls.split(":")
        return getattr(importlib.import_module(module if "." in module else f".{module}", __package__), cls)

    def specs(self) -> dict[str, params.Spec]:
        """The method's parameters (imports the class)."""
        return params.specs(self.load())

    def defaults(self) -> dict:
        """The method's parameters and their defaults, the preset applied (imports the class)."""
        return {**params.defaults(self.load()), **self.preset}


def command_name(name: str) -> str:
    """A method name as the command line writes it: lower case, "+" and "_" written "-"."""
    return name.lower().replace("_", "-").replace("+", "-")


METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    """Add a row (a method of another package, or a test's, registers itself the same way)."""
    if command_name(info.name) in {i.command_name for i in METHODS.values() if i.name != info.name}:
        raise ValueError(f"a method named {info.command_name!r} is registered already")
    METHODS[info.name] = info
    return info


for _row in (
    MethodInfo("zeroshot", "CLIP zero-shot with one prompt, 'a photo of a {class}.'", "fixed:ZeroShot"),
    MethodInfo("ensemble", "CLIP zero-shot with the 80-template prompt ensemble", "fixed:Ensemble"),
    MethodInfo("tpt", "test-time prompt tuning (Shu et al., 2022)", "tpt:TPT"),
    MethodInfo("tpt+coop", "TPT from a CoOp checkpoint's context", "tpt:TPT", requires="coop_ckpt"),
    MethodInfo("tpt+cocoop", "TPT from a CoCoOp checkpoint's context and meta-network", "tpt:TPT",
               requires="cocoop_ckpt"),
    MethodInfo("ctpt", "C-TPT: TPT's step plus a text-feature dispersion term, for calibration (Yoon et al., 2024)",
               "ctpt:CTPT"),
    MethodInfo("rtpt", "R-TPT: TPT's step on the kept views' mean entropy, prediction a reliability-weighted "
               "ensemble of the views (Sheng et al., 2025)", "rtpt:RTPT"),
    MethodInfo("zero", "ZERO: majority vote of the 30% most confident views, no gradient (Farina et al., 2024)",
               "zero:ZERO"),
    MethodInfo("zero+ensemble", "ZERO with the authors' 7-template ensemble (their ZERO+Ensemble)", "zero:ZERO",
               preset={"templates": "tip7"}),
    MethodInfo("mta", "MTA: MeanShift mode of the view embeddings with inlierness scores (Zanella & Ben Ayed, 2024)",
               "mta:MTA"),
    MethodInfo("tda", "TDA: positive and negative caches of past test features, online (Karmanov et al., 2024)",
               "tda:TDA"),
    MethodInfo("dmn", "DMN-ZS: dynamic memory of past test features, zero-shot, online (Zhang et al., 2024)",
               "dmn:DMN"),
    MethodInfo("dpe", "DPE: textual and visual prototypes evolved over the stream, online (Zhang et al., 2024)",
               "dpe:DPE"),
    MethodInfo("boostadapter", "BoostAdapter: TDA's caches plus boosting samples from the image's own views, "
               "online (Zhang et al., 2024)", "boostadapter:BoostAdapter"),
    MethodInfo("tps", "TPS: a per-class shift of the class prototypes tuned on the views, episodic (Sui et al., 2025)",
               "tps:TPS"),
):
    register(_row)


def method_info(name: str) -> MethodInfo:
    """The row of a method name in either spelling ("tpt+coop", "tpt-coop")."""
    by_command = {info.command_name: info for info in METHODS.values()}
    if command_name(name) not in by_command:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(by_command)}")
    return by_command[command_name(name)]


def make_method(name: str, **kwargs):
    """A method by name (either spelling, see `METHODS`): zeroshot, ensemble, tpt, tpt-coop (coop_ckpt=...),
    tpt-cocoop (cocoop_ckpt=...), ctpt, rtpt, zero, zero-ensemble, mta, tda, dmn, dpe, boostadapter, tps. Keyword
    arguments are the
    method's parameters (its fields); one it does not take is refused with the list of those it does,
    a value out of range with what the parameter accepts."""
    info = method_info(name)
    known = info.specs()
    if unknown := sorted(set(kwargs) - set(known)):
        raise ValueError(f"method {info.command_name!r} takes no parameter(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(known)}")
    needed = ([info.requires] if info.requires else []) + params.required(info.load())
    if missing := [n for n in needed if kwargs.get(n) is None and info.preset.get(n) is None]:
        raise ValueError(f"method {info.command_name!r} needs {', '.join(f'{n}=<{known[n].accepted()}>' for n in missing)}")
    method = info.load()(**{**info.preset, **kwargs})
    if method.name != info.name:
        raise ValueError(f"method {info.command_name!r} with these parameters is {method.name!r}; use "
                         f"--method {command_name(method.name)} (or make_method({method.name!r}, ...))")
    return method


def parse_parameters(name: str, given: dict[str, str]) -> dict:
    """`--set NAME=TEXT` values for method `name`, each read in its parameter's type
    (`params.parse_text`); ValueError naming the parameter, the text and what it accepts."""
    info = method_info(name)
    known = info.specs()
    out = {}
    for key, text in given.items():
        if key not in known:
            raise ValueError(f"method {info.command_name!r} takes no parameter {key}; it takes: {', '.join(known)}")
        try:
            out[key] = params.parse_text(known[key], text)
        except (ValueError, TypeError, IndexError):
            raise ValueError(f"{info.command_name}: {key} must be {known[key].accepted()}; got {text!r}") from None
    return out


def default_config(stored_name: str, config: dict) -> dict:
    """The config of method `stored_name` with its default parameters, for the dataset and the
    required parameters that `config` (a recorded one) has: what a run's settings are compared with."""
    info = METHODS[stored_name]
    cls = info.load()
    given = {key: config[key] for key in [info.requires, *params.required(cls)] if key and key in config}
    method = cls(**{**info.preset, **given})
    return method.for_dataset(config.get("dataset")).config() if "dataset" in config else method.config()


def listing() -> list[dict]:
    """Every row as `tpt methods` prints it: command-line name, stored name, kind (fixed, episodic,
    online), paper, summary, the parameters with their defaults and what they accept, and which
    defaults are per dataset (imports the classes)."""
    from .base import kind_of
    out = []
    for info in METHODS.values():
        cls, specs, defaults = info.load(), info.specs(), info.defaults()
        shown = {k: s for k, s in specs.items() if not s.speed_only}
        out.append({"name": info.command_name, "stored_as": info.name, "kind": kind_of(cls), "paper": cls.paper,
                    "summary": info.summary, "requires": info.requires,
                    "defaults": {k: defaults.get(k) for k in shown},
                    "accepts": {k: s.accepted() for k, s in shown.items()},
                    "help": {k: s.help for k, s in shown.items()},
                    "per_dataset": [k for k, s in shown.items() if s.per_dataset is not None]})
    return out
