"""Does a CrossFlow's source keep the caption's shape apart from its noise?

The text reaches a CrossFlow draft only through z0 ~ N(mean(text), var(text)): the velocity
net never sees the text. For captions that differ in one attribute only (the shape, the
object's colour, the background's colour), this prints how far apart the VE's means are
against its spread: the RMS per element of mean(a) - mean(b), the mean per-element std, and
d' = |mean(a) - mean(b)| / (sqrt(2) * std), the separability of the two Gaussians over the
whole latent (d' well above 1: a sample tells the two captions apart).

    python research/probe_flow_latent.py crossflow work/tok9k/world-crossflow.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from clipag.flow.crossflow import load_flow_init, SampleConfig

COLOURS = ["red", "green", "blue", "yellow", "purple"]
BACKGROUNDS = ["white", "black", "orange", "cyan"]
SHAPES = ["circle", "square", "triangle", "cross"]


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def stats(init, pairs: list[tuple[str, str]]) -> tuple[float, float, float]:
    texts = sorted({t for pair in pairs for t in pair})
    with torch.no_grad():
        if init.model.cfg.text_input == "tokens":
            inputs = init.text.encode_text_tokens(texts)
        else:
            inputs = init.text.encode_texts(texts)
        mean, logvar = init.model.ve(inputs.float())
    index = {t: i for i, t in enumerate(texts)}
    std = (0.5 * logvar).exp()
    rms, spread, dprime = [], [], []
    for a, b in pairs:
        diff = (mean[index[a]] - mean[index[b]]).flatten()
        s = 0.5 * (std[index[a]] + std[index[b]]).flatten()
        rms.append(diff.pow(2).mean().sqrt().item())
        spread.append(s.mean().item())
        dprime.append((diff / s).norm().item() / 2 ** 0.5)
    return statistics.mean(rms), statistics.mean(spread), statistics.median(dprime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("flows", nargs="+", help="crossflow (the embedded one) or FILE")
    args = parser.parse_args()
    groups = {
        "shape": [(caption(c, a, g), caption(c, b, g)) for c in COLOURS for g in BACKGROUNDS
                  for a, b in itertools.combinations(SHAPES, 2)],
        "object colour": [(caption(a, s, g), caption(b, s, g)) for s in SHAPES
                          for g in BACKGROUNDS for a, b in itertools.combinations(COLOURS, 2)],
        "background": [(caption(c, s, a), caption(c, s, b)) for c in COLOURS for s in SHAPES
                       for a, b in itertools.combinations(BACKGROUNDS, 2)],
    }
    print("| flow | captions differ in | pairs | RMS of mean difference | std | median d' |")
    print("|---|---|---|---|---|---|")
    for flow in args.flows:
        spec = flow if flow == "crossflow" else f"crossflow:{flow}"
        init = load_flow_init(spec, torch.device("cpu"), None, SampleConfig())
        cfg = init.model.cfg
        name = f"{flow.split('/')[-1]} ({cfg.text_input}, {cfg.resolution} px)"
        for what, pairs in groups.items():
            rms, std, dprime = stats(init, pairs)
            print(f"| {name} | {what} | {len(pairs)} | {rms:.3f} | {std:.3f} | {dprime:.2f} |")


if __name__ == "__main__":
    main()
