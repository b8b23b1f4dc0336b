"""The micro world's profiles as data: what each profile draws, one ``ProfileSpec`` per profile.

A profile is the training distribution (``train``, with its easy-first ``difficulty`` knob), the
in-distribution test (``I``), a shift of it (``V2``, ``Sketch``, ``R``, ``A``) or a cross task
whose label is an attribute (``Colour``, ``Fill``, ``Count``). ``tptlib.micro.scene`` turns a
spec and a matrix of uniforms into scene parameters; the spec's fields are the only place where
profiles differ.
"""
from __future__ import annotations

from dataclasses import dataclass

# the A profile: 3-5 targets of A_TARGET_RADIUS px in a corner box of A_BOX px, A_DISTRACTORS
# bigger distractors elsewhere (all in 48-px scene units)
A_TARGET_RADIUS = (5.0, 6.2)
A_BOX = 26.0
A_DISTRACTORS = (2, 4)
A_DISTRACTOR_RADIUS = (4.5, 7.0)
# training images are zoomed windows of their scene with probability ZOOM_P, of area ZOOM_AREA
ZOOM_P = 0.4
ZOOM_AREA = (0.1, 1.0)

_TRAIN_STYLES = (0.88, 0.06, 0.06)
_TRAIN_EFFECTS = (0.75, 0.05, 0.05, 0.05, 0.05, 0.05)
_NO_EFFECTS = (1, 0, 0, 0, 0, 0)
_PHOTO = (1, 0, 0)


@dataclass(frozen=True)
class Cluster:
    """A's layout: targets clustered in a corner box, bigger distractors in the far grid cells."""

    target_radius: tuple = A_TARGET_RADIUS
    box: float = A_BOX
    distractors: tuple = A_DISTRACTORS
    distractor_radius: tuple = A_DISTRACTOR_RADIUS


@dataclass(frozen=True)
class ProfileSpec:
    """What a profile draws. Probabilities are over ``STYLES`` / ``EFFECTS`` (unnormalised)."""

    name: str
    style: tuple = _TRAIN_STYLES
    effect: tuple = _TRAIN_EFFECTS
    closeup: float = 0.0                  # P(one large instance, off-centre)
    curriculum: bool = False              # easy-first scenes below ``difficulty`` (training only)
    counts: str = "scatter"               # "scatter": 1-5 targets, "uniform": 1-5 uniformly, "cluster": A
    max_distractors: int = 2              # scatter scenes: up to this many (and fewer than targets)
    distractors: bool = True              # False: targets only (attribute tasks)
    radius: tuple = (0.65, 1.0)           # instance radius as a fraction of half a grid cell
    rotation_deg: float = 25.0            # upright up to +- this
    colour_jitter: float = 0.07
    background: tuple = (0.5, 0.3, 0.2, 0.0, 0.0)   # P(flat, gradient, noise, checks, stripes)
    sketch_line: tuple = (0.7, 1.3)       # sketch stroke width (px): pen; pencil is thinner
    busy_renditions: float = 0.5          # P(a rendition sits on checks or stripes)
    zoom_p: float = 0.0                   # P(the image is a zoomed window of its scene)
    zoom_area: tuple = ZOOM_AREA
    cluster: Cluster | None = None        # A's clustered layout (None: the grid layout)


SPECS: dict[str, ProfileSpec] = {s.name: s for s in [
    ProfileSpec("train", closeup=0.08, curriculum=True, zoom_p=ZOOM_P),
    ProfileSpec("I", closeup=0.08),
    ProfileSpec("V2", closeup=0.04, max_distractors=3, radius=(0.40, 0.78), rotation_deg=50.0,
                colour_jitter=0.16, background=(0.25, 0.35, 0.4, 0.0, 0.0)),
    ProfileSpec("Sketch", style=(0, 1, 0), sketch_line=(0.45, 0.9)),
    ProfileSpec("R", style=(0, 0, 1), busy_renditions=1.0),
    ProfileSpec("A", style=_PHOTO, effect=_NO_EFFECTS, counts="cluster",
                background=(0.0, 0.4, 0.6, 0.0, 0.0), cluster=Cluster()),
    ProfileSpec("Colour", style=_PHOTO, effect=_NO_EFFECTS, distractors=False),
    ProfileSpec("Fill", style=_PHOTO, effect=_NO_EFFECTS, distractors=False),
    ProfileSpec("Count", style=_PHOTO, effect=_NO_EFFECTS, counts="uniform"),
]}
PROFILES = list(SPECS)


def spec(profile: str) -> ProfileSpec:
    """The spec of ``profile`` (a name of ``PROFILES``)."""
    try:
        return SPECS[profile]
    except KeyError:
        raise KeyError(f"unknown micro world profile {profile!r}; profiles: {', '.join(PROFILES)}") from None
