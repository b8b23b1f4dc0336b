"""The methods by name: what `make_method`, `tpt eval --method` and listings know.

Each method is one entry here and one module of `tptlib.methods`; adding a method touches those
two. A name is the one a run stores (`method.name`, "tpt+coop"); on the command line "+" is
written "-" ("tpt-coop"), and `make_method` takes either. The table names each method's class by
module, so that listing the methods (and building the command line) imports no model code.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodInfo:
    name: str                    # as runs store it and tables show it: method.name
    summary: str                 # one line for listings and --help
    cls: str                     # "module:Class" in tptlib.methods
    requires: str | None = None  # the keyword argument the method cannot do without (a checkpoint)
    preset: dict = field(default_factory=dict)   # keyword arguments the name stands for (zero+ensemble)

    @property
    def command_name(self) -> str:
        return command_name(self.name)

    def load(self) -> type:
        """The method's class (its module imported now)."""
        module, cls = self.cls.split(":")
        return getattr(importlib.import_module(f".{module}", __package__), cls)

    def defaults(self) -> dict:
        """The method's keyword arguments and their defaults (the preset applied; imports the class)."""
        cls = self.load()
        params = {}
        for klass in cls.__mro__:
            if klass is object or "__init__" not in vars(klass):
                continue
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in params:
                    params[name] = p.default
            if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
                break
        return {**params, **self.preset}


METHODS: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("zeroshot", "CLIP zero-shot with one prompt, 'a photo of a {class}.'", "fixed:ZeroShot"),
    MethodInfo("ensemble", "CLIP zero-shot with the 80-template prompt ensemble", "fixed:Ensemble"),
    MethodInfo("tpt", "test-time prompt tuning (Shu et al., 2022)", "tpt:TPT"),
    MethodInfo("tpt+coop", "TPT from a CoOp checkpoint's context", "tpt:TPT", requires="coop_ckpt"),
    MethodInfo("tpt+cocoop", "TPT from a CoCoOp checkpoint's context and meta-network", "tpt:TPT",
               requires="cocoop_ckpt"),
    MethodInfo("ctpt", "C-TPT: TPT's step plus a text-feature dispersion term, for calibration (Yoon et al., 2024)",
               "ctpt:CTPT"),
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
)}


def command_name(name: str) -> str:
    """A method name as the command line writes it: lower case, "+" and "_" written "-"."""
    return name.lower().replace("_", "-").replace("+", "-")


def method_info(name: str) -> MethodInfo:
    """The entry of a method name in either spelling ("tpt+coop", "tpt-coop")."""
    by_command = {info.command_name: info for info in METHODS.values()}
    if command_name(name) not in by_command:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(by_command)}")
    return by_command[command_name(name)]


def make_method(name: str, **kwargs):
    """A method by name (either spelling, see `METHODS`): zeroshot, ensemble, tpt, tpt-coop (coop_ckpt=...),
    tpt-cocoop (cocoop_ckpt=...), ctpt, zero, zero-ensemble, mta, tda, dmn, dpe, boostadapter, tps. Keyword arguments are the
    class's; one it does not take is refused with the list of those it does."""
    info = method_info(name)
    if info.requires and not kwargs.get(info.requires):
        raise ValueError(f"method {name!r} needs {info.requires}=<checkpoint path>")
    known = info.defaults()
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"method {info.command_name!r} takes no parameter(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(known))}")
    return info.load()(**{**info.preset, **kwargs})


#: parameters that change speed only, never a result (see `TPT`), left out of listings
SPEED_ONLY = ("fast_text", "jacobian")
#: parameters left to their default when they stand for the authors' per-dataset values (`for_task`)
PER_DATASET = ("lambda_", "pos_alpha", "pos_beta", "templates", "multiview", "weight", "alpha", "beta", "lr", "align",
               "delta", "boost_views")


def listing() -> list[dict]:
    """Every registry entry as `tpt methods` prints it: command-line name, stored name, kind (fixed,
    episodic, online), paper, summary, defaults, and which defaults are per dataset (imports the classes)."""
    out = []
    for info in METHODS.values():
        cls = info.load()
        checkpoints = () if info.requires else ("coop_ckpt", "cocoop_ckpt")
        defaults = {k: v for k, v in info.defaults().items() if k not in SPEED_ONLY + checkpoints}
        kind = "episodic" if info.requires else cls(**info.preset).kind      # a checkpoint method: TPT's kind
        out.append({"name": info.command_name, "stored_as": info.name, "kind": kind, "paper": cls.paper,
                    "summary": info.summary, "defaults": defaults,
                    "per_dataset": [k for k in PER_DATASET if "dataset" in defaults and defaults.get(k, 0) is None]})
    return out
