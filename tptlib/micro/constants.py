"""The micro world's names, sizes and versions (shared by its specs, layout, renderer and captions)."""
from __future__ import annotations

import torch

# DATA_VERSION names the rendered sets (cache folders, manifest); bump it whenever any profile's
# pictures change. STREAM keys the random streams: changing it changes every sample, the
# training data included (the shipped weights were trained on stream 2).
DATA_VERSION = "w3"
STREAM = 2
IMAGE_SIZE = 48      # the micro-CLIP's input
RAW_SIZE = 96        # test sets are stored at this size

SHAPES = ["circle", "oval", "square", "rectangle", "diamond", "triangle", "pentagon", "hexagon",
          "octagon", "star", "sparkle", "cross", "heart", "crescent", "arrow", "chevron",
          "house", "lightning", "drop", "cloud"]
SHAPE_PLURALS = ["circles", "ovals", "squares", "rectangles", "diamonds", "triangles", "pentagons",
                 "hexagons", "octagons", "stars", "sparkles", "crosses", "hearts", "crescents",
                 "arrows", "chevrons", "houses", "lightnings", "drops", "clouds"]

COLOURS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"]
COLOUR_RGB = torch.tensor([
    [0.86, 0.14, 0.14], [0.96, 0.55, 0.08], [0.95, 0.87, 0.15], [0.15, 0.66, 0.22],
    [0.15, 0.80, 0.85], [0.16, 0.30, 0.88], [0.55, 0.22, 0.75], [0.97, 0.52, 0.75],
    [0.96, 0.96, 0.96], [0.06, 0.06, 0.06]])
FILLS = ["solid", "outlined", "striped", "dotted"]
# fills of renditions (never named in captions)
R_FILLS = ["checkered", "gradient", "speckled", "double"]
SIZES = ["small", "large"]
COUNTS = ["one", "two", "three", "four", "five"]
STYLES = ["photo", "sketch", "rendition"]
EFFECTS = ["none", "blurry", "dark", "bright", "black and white", "pixelated"]

K_MAX = 12          # instance slots per image
N_COLS = 448        # uniforms drawn per sample (the last 8 are the caption's)
