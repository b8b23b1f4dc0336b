"""`tpt models`: the models and pretrained tags --model / --pretrained accept."""
from __future__ import annotations

import textwrap


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list the models and pretrained tags --model/--pretrained accept")
    models.set_defaults(func=run)


def run(args) -> int:
    import open_clip

    by_model: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        by_model.setdefault(name, []).append(tag)
    print("micro      the embedded micro-CLIP (weights ship with tptlib; no --pretrained)")
    print("\nopen_clip models with downloadable weights (--model NAME --pretrained TAG):")
    for name in sorted(by_model):
        print(f"  {name:<36} {', '.join(by_model[name])}")
    others = sorted(set(open_clip.list_models()) - set(by_model))
    print(f"\n{len(others)} more open_clip architectures load with a checkpoint file or --pretrained none:")
    print(textwrap.fill(", ".join(others), width=100, initial_indent="  ", subsequent_indent="  "))
    print("\nOpenAI's weights (the paper's) were trained with QuickGELU: use --model RN50-quickgelu or "
          "ViT-B-16-quickgelu with --pretrained openai.")
    return 0
