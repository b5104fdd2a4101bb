"""MoME: Mixture of Matryoshka Experts, inserted in parallel into a frozen causal LLM.

One MoME module per decoder layer holds N_s shared experts (always on) and N_r routed experts, each a bottleneck
adapter Linear(D, b) -> GELU -> Linear(b, D), and a router Linear(D, N_r, bias=False):

    MoME(h) = sum_{shared n} E_n(h) + sum_{n in top-k(softmax(router(h)))} g_n E_n(h),   g renormalised over the k

The same router and experts serve every Matryoshka compression rate: that sharing is the method's point.

The experts are computed together, not one by one: every expert's down-projection is one (D, E*b) matmul, the hidden
units are scaled by their gate (1 for shared experts, g_n for the k selected, exactly 0 for the rest) and every
up-projection is one (E*b, D) matmul. With bottlenecks of a few dozen units this dense form costs less than gathering
tokens per expert, and it is exact: an unselected expert contributes 0 and receives no gradient. The renormalised
gates are the softmax of the k largest router logits (the same numbers as the top-k probabilities divided by their
sum), so the full softmax is only computed for the load-balancing loss. A call is 14 tensor operations on a CPU
(benchmarks/mome_module.py counts them), plus a cast on each side when the LLM runs in another precision: at
decoding, where a step has one token per clip, their number, not their arithmetic, is the module's cost: on a GPU,
decoding steps run a module as two Triton kernels instead (mome_kernels.py, through `add_to`).

Notation for shapes: B batch, T tokens, N = B*T flattened tokens, D LLM width, E = N_s + N_r experts,
R = N_r routed experts, K top-k, b bottleneck width, G groups (rate pairs) for the load-balancing loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import POSITIONS, MoMEConfig


@dataclass
class Routing:
    """What one MoME module's router decided for a batch of tokens (kept for the load-balancing loss)."""

    logits: torch.Tensor  # (N, R) router logits, float32 or wider
    experts: torch.Tensor  # (N, K) indices of the selected routed experts

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1)  # (N, R) router probabilities


class MoME(nn.Module):
    """Shared + routed bottleneck experts with a top-k router; input and output (..., D)."""

    def __init__(self, dim: int, config: MoMEConfig):
        super().__init__()
        self.config = config
        E, b = config.num_experts, config.bottleneck
        self.router = nn.Linear(dim, config.num_routed, bias=False)
        # Experts 0..N_s-1 are the shared ones, N_s..E-1 the routed ones.
        self.down_weight = nn.Parameter(torch.empty(E, dim, b))  # (E, D, b)
        self.down_bias = nn.Parameter(torch.zeros(E, b))  # (E, b)
        self.up_weight = nn.Parameter(torch.zeros(E, b, dim))  # (E, b, D)
        self.up_bias = nn.Parameter(torch.zeros(E, dim))  # (E, D)
        self.record_routing = False  # set by the owner for a forward that needs the load-balancing loss
        self.last_routing: Routing | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Down-projections xavier-uniform per expert, up-projections zero: the wrapped LLM starts out unchanged.
        for e in range(self.down_weight.shape[0]):
            nn.init.xavier_uniform_(self.down_weight.data[e])  # (D, b); the bound is symmetric in fan-in/out
        nn.init.zeros_(self.down_bias)
        nn.init.zeros_(self.up_weight)
        nn.init.zeros_(self.up_bias)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """Gates for every expert: (N, E), 1 for shared, renormalised top-k probability for selected, 0 otherwise."""
        cfg = self.config
        with torch.autocast(x.device.type, enabled=False):  # the same choices in bf16 training as at inference
            logits = self.router(x.to(self.router.weight.dtype))  # (N, R)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # >= fp32
        top_logits, top_i = logits.topk(cfg.top_k, dim=-1)  # (N, K)
        gates = logits.new_zeros(logits.shape[0], cfg.num_experts)  # (N, E): shared experts first
        gates[:, : cfg.num_shared] = 1.0
        gates[:, cfg.num_shared :].scatter_(1, top_i, top_logits.softmax(dim=-1))
        return gates, Routing(logits=logits, experts=top_i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        E, D, b = self.down_weight.shape
        x = x.reshape(-1, D).to(self.down_weight.dtype)  # (N, D) in the adapter's own precision
        N = x.shape[0]
        gates, routing = self.route(x)
        if self.record_routing:
            self.last_routing = routing
        gates = gates.to(x.dtype)
        down = self.down_weight.transpose(0, 1).reshape(D, E * b)  # (D, E*b): every expert's down-projection
        hidden = F.gelu(torch.addmm(self.down_bias.view(E * b), x, down)).view(N, E, b)  # (N, E, b)
        hidden = (hidden * gates.unsqueeze(-1)).view(N, E * b)  # unselected experts exactly 0
        out = torch.addmm(gates @ self.up_bias, hidden, self.up_weight.view(E * b, D))  # (N, D)
        return out.reshape(shape)

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out + MoME(x) in out's dtype: in place through two Triton kernels where they apply (inference on CUDA,
        a few tokens: decoding, mome_kernels.py), else with PyTorch operations."""
        from . import mome_kernels

        if mome_kernels.applies(self, x, out):
            try:
                return mome_kernels.add_mome(self, x, out)  # out is written last: untouched if this fails
            except Exception as e:  # noqa: BLE001 (a GPU or Triton build the kernels do not compile for)
                mome_kernels.disable(e)
        return out + self(x).to(out.dtype)


def load_balancing_loss(routing: Routing, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Switch/Mixtral load-balancing loss R * sum_i f_i * P_i, computed per group and averaged over the groups.

    f_i is the fraction of a group's tokens whose top-k holds expert i (so sum_i f_i = K, and perfectly balanced routing
    gives K), P_i the group's mean router probability for expert i. groups (N,) gives each token's group (its rate pair)
    and -1 for tokens that take no part (padding). Computed in fp32 also under autocast.
    """
    with torch.autocast(routing.logits.device.type, enabled=False):
        probs, experts = routing.probs.float(), routing.experts  # (N, R), (N, K)
        R = probs.shape[-1]
        member = F.one_hot(groups.clamp(min=0), num_groups).float() * (groups >= 0).unsqueeze(-1)  # (N, G)
        chosen = F.one_hot(experts, R).sum(dim=1).float()  # (N, R): 1 where the expert is among the token's top-k
        count = member.sum(dim=0).clamp(min=1).unsqueeze(-1)  # (G, 1)
        f = member.T @ chosen / count  # (G, R)
        P = member.T @ probs / count  # (G, R)
        present = member.sum(dim=0) > 0  # (G,): groups with no tokens don't count
        per_group = R * (f * P).sum(dim=-1)  # (G,)
        return per_group[present].mean()


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (Llama, Qwen2, Mistral, ... : `model.layers`)."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else getattr(llm, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"{type(llm).__name__} has no decoder layers at .model.layers; MoME needs a Llama-style LM")
    for i, layer in enumerate(layers):
        for name in ("self_attn", "mlp"):
            if not isinstance(getattr(layer, name, None), nn.Module):
                raise TypeError(f"decoder layer {i} of {type(llm).__name__} has no .{name}: not a Llama-style layer")
    return layers


def _parallel_branch(adapter: MoME):
    """A forward hook that adds adapter(sublayer input) to the sublayer's output."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]  # (B, T, D): the normed state the sublayer sees
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (adapter.add_to(output[0], x),) + tuple(output[1:])
        return adapter.add_to(output, x)

    return hook


def attach(llm: nn.Module, adapters: nn.ModuleList, position: str) -> list:
    """Run adapters[i] in parallel with decoder layer i's attention (mhsa), MLP (ffn) or whole layer (layer).

    mhsa: h + attn(LN1(h)) + MoME(LN1(h)); ffn: h + mlp(LN2(h)) + MoME(LN2(h)); layer: layer(h) + MoME(h).
    The backbone's modules and parameter names stay as they are. Returns the hook handles (`.remove()` detaches).
    """
    layers = decoder_layers(llm)
    if len(adapters) != len(layers):
        raise ValueError(f"{len(adapters)} MoME modules for an LLM with {len(layers)} decoder layers")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    handles = []
    for layer, adapter in zip(layers, adapters):
        target = {"mhsa": layer.self_attn, "ffn": layer.mlp, "layer": layer}[position]
        handles.append(target.register_forward_hook(_parallel_branch(adapter), with_kwargs=True))
    return handles


def active_parameters(dim: int, config: MoMEConfig) -> int:
    """Parameters one token uses in one MoME module: router, shared experts and K routed experts."""
    per_expert = 2 * dim * config.bottleneck + config.bottleneck + dim
    return dim * config.num_routed + (config.num_shared + config.top_k) * per_expert


__all__ = ["POSITIONS", "MoMEConfig", "Routing", "MoME", "load_balancing_loss", "decoder_layers", "attach",
           "active_parameters"]
