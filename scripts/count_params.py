"""Trainable and active parameters of MoME on the real backbones, built on the meta device (no weights, no download).

    python scripts/count_params.py [--experts 23 --shared 1 --top-k 4 --bottleneck 12 --position mhsa]

Active = what one token uses at one rate pair: the router, the shared experts and top-k routed experts of every layer
(MoME), plus the one audio and one video projector of that pair.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.llm import LLM_SHAPES, build_on_meta, byte_tokenizer
from mome_cli.model import AVSRModel, ModelConfig
from mome_cli.mome import MoMEConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=23)
    parser.add_argument("--shared", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--bottleneck", type=int, default=12)
    parser.add_argument("--position", default="mhsa")
    args = parser.parse_args()
    mome = MoMEConfig(num_routed=args.experts, num_shared=args.shared, top_k=args.top_k,
                      bottleneck=args.bottleneck, position=args.position)
    print(f"MoME-{mome.num_routed}/{mome.top_k}, {mome.num_shared} shared, bottleneck {mome.bottleneck}, "
          f"{mome.position}; 4 rate pairs, avgpool, projector hidden 2048")
    header = ("LLM", "LLM params", "MoME total", "MoME active", "projectors total", "projectors active",
              "trainable", "active")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in LLM_SHAPES:
        with torch.device("meta"):
            model = AVSRModel(ModelConfig(llm=name, mome=mome), build_on_meta(name), byte_tokenizer())
        c = model.parameter_counts()
        row = [c["llm"], c["mome"], c["mome_active"], c["projectors"], c["projectors_active"], c["trainable"],
               c["active"]]
        print(f"| {name} | " + " | ".join(f"{n / 1e6:.2f}M" for n in row) + " |")


if __name__ == "__main__":
    main()
