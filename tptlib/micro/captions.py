"""Captions of micro scenes, the facts they state, and the contrastive targets they give.

A caption always names the shape; it names size, colour, fill and count some of the time, and its
opening words name the picture's style, effect or close-up viewpoint when it has one, as CLIP's
captions name the kind of picture they describe ("a sketch of a star.", "a blurry photo of two
hearts."). The world knows what each caption states, so which captions are true of which images
(``consistent``) is exact.
"""
from __future__ import annotations

import numpy as np
import torch

from .constants import COLOURS, COUNTS, FILLS, R_FILLS, SHAPE_PLURALS, SHAPES, SIZES
from .scene import Scene

# caption prefixes and the facts they state (style, effect, close-up; None: states nothing)
NEUTRAL_PREFIXES = ["a picture of", "an image of", "there is", ""]
STYLE_PREFIXES = {0: ["a photo of", "a good photo of"],
                  1: ["a sketch of", "a drawing of", "a pencil sketch of"],
                  2: ["a rendering of", "a painting of", "art of", "a cartoon of"]}
EFFECT_PREFIXES = {1: ["a blurry photo of"], 2: ["a dark photo of"], 3: ["a bright photo of"],
                   4: ["a black and white photo of"], 5: ["a pixelated photo of", "a low resolution photo of"]}
CLOSEUP_PREFIXES = ["a close-up photo of", "a cropped photo of"]


_NUM = ["one", "two", "three", "four", "five"]
N_FACTS = 8     # shape, size, colour, fill, count, style, effect, close-up


def _prefix(sc: Scene, i: int, u_p: float, u_q: float) -> tuple[str, int, int, int]:
    """The caption's opening words and the (style, effect, close-up) facts they state (-1: none)."""
    style, effect, closeup = int(sc.style[i]), int(sc.effect[i]), int(sc.closeup[i])
    pick = lambda lst: lst[min(int(u_q * len(lst)), len(lst) - 1)]  # noqa: E731
    if closeup and style == 0 and u_p < 0.5:
        return pick(CLOSEUP_PREFIXES), 0, -1, 1
    if effect and style == 0 and u_p < 0.5:
        return pick(EFFECT_PREFIXES[effect]), 0, effect, -1
    if style and u_p < 0.6:
        return pick(STYLE_PREFIXES[style]), style, -1, -1
    if style == 0 and u_p < 0.8:
        return pick(STYLE_PREFIXES[0]), 0, -1, -1
    return pick(NEUTRAL_PREFIXES), -1, -1, -1


def caption_and_facts(sc: Scene, i: int, u_cap: np.ndarray) -> tuple[str, list[int]]:
    """Caption of sample ``i`` from its caption uniforms, and the facts it states.

    The shape is always named; size, colour, fill and count are each named with probability 1/4;
    the opening words name the style, the effect or the close-up viewpoint when the image has one
    (half the time or more), else say "a photo of" (photos) or nothing in particular.
    Facts: ``[shape, size, colour, fill, count, style, effect, close-up]``, -1 where the caption
    says nothing.
    """
    words = []
    facts = [int(sc.label[i]), -1, -1, -1, -1, -1, -1, -1]
    n = int(sc.count[i])
    use_count = u_cap[0] < 0.25
    if u_cap[1] < 0.25 and int(sc.size_name[i]) >= 0:
        words.append(SIZES[int(sc.size_name[i])])
        facts[1] = int(sc.size_name[i])
    if u_cap[2] < 0.25 and int(sc.colour[i]) >= 0:
        words.append(COLOURS[int(sc.colour[i])])
        facts[2] = int(sc.colour[i])
    if u_cap[3] < 0.25 and int(sc.fill_name[i]) >= 0:
        words.append(FILLS[int(sc.fill_name[i])])
        facts[3] = int(sc.fill_name[i])
    lab = int(sc.label[i])
    if use_count:
        noun = SHAPES[lab] if n == 1 else SHAPE_PLURALS[lab]
        phrase = " ".join([_NUM[n - 1]] + words + [noun])
        facts[4] = n
    else:
        article = "the" if u_cap[7] < 0.15 else "a"
        phrase = " ".join([article] + words + [SHAPES[lab]])
    prefix, facts[5], facts[6], facts[7] = _prefix(sc, i, float(u_cap[4]), float(u_cap[5]))
    return (f"{prefix} {phrase}." if prefix else f"{phrase}."), facts


def caption(sc: Scene, i: int, u_cap: np.ndarray) -> str:
    """Caption of sample ``i`` (see ``caption_and_facts``)."""
    return caption_and_facts(sc, i, u_cap)[0]


def image_facts(sc: Scene) -> torch.Tensor:
    """``[B, N_FACTS]`` facts of each image (-1: not nameable); see ``caption_and_facts``."""
    return torch.stack([sc.label, sc.size_name, sc.colour, sc.fill_name, sc.count, sc.style,
                        sc.effect, sc.closeup], 1)


def consistent(img_facts: torch.Tensor, cap_facts: torch.Tensor) -> torch.Tensor:
    """``[B_img, B_cap]`` bool: the caption is true of the image (every fact it states holds)."""
    i, c = img_facts[:, None, :], cap_facts[None, :, :]
    return ((c == -1) | (c == i)).all(-1)


def caption_vocabulary() -> list[str]:
    """Every word a caption or a class name of the micro world can contain."""
    words = set()
    prefixes = (NEUTRAL_PREFIXES + CLOSEUP_PREFIXES + [p for v in STYLE_PREFIXES.values() for p in v]
                + [p for v in EFFECT_PREFIXES.values() for p in v])
    for p in prefixes:
        words.update(p.split())
    words.update(SHAPES + SHAPE_PLURALS + COLOURS + FILLS + R_FILLS + SIZES + COUNTS + ["an", "a", "the", "."])
    return sorted(words)


