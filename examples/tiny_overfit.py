"""Train a tiny MoME on 8 random clips at all four rate pairs, then decode every clip at every rate.

    python examples/tiny_overfit.py

A tiny random LLM stands in for Llama (built locally, nothing downloaded) and random features stand in for the
Whisper and AV-HuBERT encoders; only the projectors and the MoME modules train. It shows the library's core: one set of
weights, one batched forward over every rate pair, greedy decoding at any of them. Runs in seconds on a CPU.
"""

import time

import torch

from mome_cli.checkpoint import build_model
from mome_cli.decoding import DecodingOptions, decode
from mome_cli.model import Features, ModelConfig
from mome_cli.mome import MoMEConfig

TEXTS = ["red fox", "blue sky", "green tea", "big dog", "hot sun", "cold rain", "old map", "new car"]


def main():
    torch.manual_seed(0)
    config = ModelConfig(llm="tiny", audio_dim=16, video_dim=16, projector_hidden=64,
                         mome=MoMEConfig(num_routed=4, num_shared=1, top_k=2, bottleneck=16))
    model = build_model(config)
    counts = model.parameter_counts()
    print(f"tiny LLM {counts['llm']:,} frozen parameters; {counts['trainable']:,} trainable, {counts['active']:,} "
          f"active per token; rates {config.rates}")

    frames = torch.randint(30, 60, (len(TEXTS),))  # 0.6-1.2 s of 50 Hz audio features, 25 Hz video features
    features = Features(torch.randn(len(TEXTS), 60, 16), frames, torch.randn(len(TEXTS), 30, 16), (frames + 1) // 2)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = time.time()
    model.train()
    for step in range(1, 101):
        out = model(features, TEXTS)  # every rate pair in one forward
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        if step % 20 == 0:
            per_rate = "  ".join(f"{a},{v}: {loss:.3f}" for (a, v), loss in out.rate_losses.items())
            print(f"step {step:3d}  loss {out.loss.item():.3f} (lb {out.lb_loss.item():.2f})  {per_rate}")
    print(f"trained in {time.time() - start:.1f} s")

    model.eval()
    for rate in config.rates:
        hyps = [r.text for r in decode(model, features, rate, options=DecodingOptions(max_new_tokens=12))]
        exact = sum(h == t for h, t in zip(hyps, TEXTS))
        print(f"rate {rate}: {exact}/{len(TEXTS)} exact  e.g. {hyps[0]!r}")


if __name__ == "__main__":
    main()
