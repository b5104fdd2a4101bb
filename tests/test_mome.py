"""The MoME module, its router, the load-balancing loss and its insertion into Llama-style LMs."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from mome_cli.llm import build_tiny_llm
from mome_cli.model import AVSRModel
from mome_cli.mome import MoME, MoMEConfig, Routing, load_balancing_loss

from conftest import random_features, tiny_config, tiny_model


def random_mome(dim=10, seed=0, **kw) -> MoME:
    torch.manual_seed(seed)
    m = MoME(dim, MoMEConfig(**{**dict(num_routed=5, num_shared=2, top_k=3, bottleneck=4), **kw})).double()
    for p in (m.up_weight, m.up_bias, m.down_bias):
        torch.nn.init.normal_(p)
    return m


def naive_mome(m: MoME, x: torch.Tensor) -> torch.Tensor:
    """The paper's formula token by token and expert by expert."""
    cfg = m.config
    expert = lambda e, h: F.gelu(h @ m.down_weight[e] + m.down_bias[e]) @ m.up_weight[e] + m.up_bias[e]  # noqa: E731
    out = []
    for h in x:
        p = torch.softmax(h @ m.router.weight.T, dim=-1)  # (R,), differentiable: the gates carry the router's gradient
        chosen = sorted(range(cfg.num_routed), key=lambda i: -p[i].item())[: cfg.top_k]
        y = sum(expert(e, h) for e in range(cfg.num_shared))
        for i in chosen:
            y = y + p[i] / sum(p[j] for j in chosen) * expert(cfg.num_shared + i, h)
        out.append(y)
    return torch.stack(out)


def test_module_equals_per_token_reference():
    m = random_mome()
    x = torch.randn(2, 7, 10, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_mome(m, x.reshape(-1, 10)).reshape(2, 7, 10), rtol=1e-10, atol=1e-10)


def test_gradients_equal_those_of_the_per_token_reference():
    m = random_mome()
    x = torch.randn(3, 5, 10, dtype=torch.float64, requires_grad=True)
    params = [x, *m.parameters()]
    ours = torch.autograd.grad(m(x).square().sum(), params)
    reference = torch.autograd.grad(naive_mome(m, x.reshape(-1, 10)).square().sum(), params)
    for name, a, b in zip(["x", *(n for n, _ in m.named_parameters())], ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda text, name=name: f"{name}: {text}")


def test_gates_shared_always_on_unselected_exactly_zero():
    m = random_mome()
    gates, routing = m.route(torch.randn(50, 10, dtype=torch.float64))
    shared, routed = gates[:, :2], gates[:, 2:]
    assert torch.equal(shared, torch.ones_like(shared))
    assert ((routed > 0).sum(-1) == 3).all()  # exactly top_k routed experts per token
    torch.testing.assert_close(routed.sum(-1), torch.ones(50, dtype=torch.float64))
    top = routing.probs.topk(3, dim=-1).indices.sort(-1).values
    assert torch.equal(routed.nonzero()[:, 1].view(50, 3), top)  # the nonzero gates are the top-k experts


def test_routing_is_the_same_under_bf16_autocast():
    """Training runs under autocast (bf16 on a GPU), inference does not: the router and the load-balancing loss stay
    fp32 under it, so the experts chosen in training are those chosen at inference."""
    m = random_mome(dim=64, num_routed=23, num_shared=1, top_k=4).float()
    x = torch.randn(512, 64)
    gates, routing = m.route(x)
    groups = torch.arange(512) % 3 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gates_in, routing_in = m.route(x)
        loss_in = load_balancing_loss(routing_in, groups, 2)
    assert routing_in.logits.dtype == torch.float32 and loss_in.dtype == torch.float32
    assert torch.equal(routing_in.experts, routing.experts) and torch.equal(gates_in, gates)
    assert loss_in.item() == load_balancing_loss(routing, groups, 2).item()


def test_shared_experts_contribute_when_routed_experts_are_silent():
    m = random_mome()
    with torch.no_grad():
        m.up_weight[2:].zero_()
        m.up_bias[2:].zero_()
    x = torch.randn(20, 10, dtype=torch.float64)
    shared = sum(F.gelu(x @ m.down_weight[e] + m.down_bias[e]) @ m.up_weight[e] + m.up_bias[e] for e in range(2))
    torch.testing.assert_close(m(x), shared)
    assert (m(x).abs().sum(-1) > 0).all()


def test_initialisation_down_xavier_up_zero():
    m = MoME(64, MoMEConfig(num_routed=4, top_k=2, bottleneck=8))
    assert torch.count_nonzero(m.up_weight) == 0 and torch.count_nonzero(m.up_bias) == 0
    bound = (6 / (64 + 8)) ** 0.5
    assert m.down_weight.abs().max() <= bound and m.down_weight.std() > bound / 3
    assert torch.count_nonzero(m(torch.randn(3, 64))) == 0


# Hand-built routing: 4 tokens, 3 experts, top-2, plus one padding token that must not count.
PROBS = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.4, 0.4, 0.2], [0.9, 0.05, 0.05]]
EXPERTS = [[0, 1], [1, 2], [0, 2], [0, 1], [0, 1]]


@pytest.mark.parametrize(
    "groups, num_groups, expected",
    [
        # f = (3/4, 3/4, 2/4), P = (1.7/4, 1.3/4, 1.0/4): 3 * (0.75*0.425 + 0.75*0.325 + 0.5*0.25) = 2.0625
        ([0, 0, 0, 0, -1], 1, 2.0625),
        # group 0 (t0, t1): f = (1/2, 1, 1/2), P = (.35, .4, .25) -> 2.1; group 1 (t2, t3): f = (1, 1/2, 1/2),
        # P = (.5, .25, .25) -> 2.25; mean 2.175
        ([0, 0, 1, 1, -1], 2, 2.175),
        # an empty group takes no part in the mean
        ([0, 0, 0, 0, -1], 3, 2.0625),
    ],
)
def test_load_balancing_loss_hand_computed(groups, num_groups, expected):
    routing = Routing(torch.tensor(PROBS).log(), torch.tensor(EXPERTS))  # logits whose softmax is PROBS
    loss = load_balancing_loss(routing, torch.tensor(groups), num_groups)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_load_balancing_loss_balanced_routing_is_top_k():
    routing = Routing(torch.zeros(2, 4), torch.tensor([[0, 1], [2, 3]]))  # uniform probabilities
    assert load_balancing_loss(routing, torch.tensor([0, 0]), 1).item() == pytest.approx(2.0)


@pytest.mark.parametrize("kw, message", [
    (dict(top_k=5, num_routed=4), "top_k"), (dict(position="attn"), "position"), (dict(bottleneck=0), "bottleneck"),
    (dict(lb_coef=-1.0), "lb_coef"), (dict(lb_coef=float("nan")), "lb_coef"), (dict(lb_coef=float("inf")), "lb_coef"),
])
def test_config_rejects_impossible_values(kw, message):
    with pytest.raises(ValueError, match=message):
        MoMEConfig(**kw)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-mistral"])
@pytest.mark.parametrize("position", ["mhsa", "ffn", "layer"])
def test_zero_initialised_mome_leaves_logits_unchanged(family, position):
    llm, tokenizer = build_tiny_llm(family)
    embeds = torch.randn(2, 9, llm.config.hidden_size)
    with torch.no_grad():
        before = llm(inputs_embeds=embeds).logits
        model = AVSRModel(tiny_config(llm=family, mome=dict(position=position)), llm, tokenizer)
        after = llm(inputs_embeds=embeds).logits
        assert torch.equal(before, after), "a fresh MoME must not change a single logit"
        for m in model.mome:
            torch.nn.init.normal_(m.up_weight)
        assert not torch.allclose(before, llm(inputs_embeds=embeds).logits), "the MoME branch is not wired in"


@pytest.mark.parametrize("position", ["mhsa", "ffn", "layer"])
def test_insertion_follows_the_parallel_formula(position):
    """Decoder layer 0 with MoME equals the formula of FACTS.md built from an untouched copy of the layer."""
    model = tiny_model(mome=dict(position=position))
    ref, _ = build_tiny_llm("tiny")  # same seed: identical weights, no hooks
    layer, plain, mome = model.llm.model.layers[0], ref.model.layers[0], model.mome[0]
    h = torch.randn(2, 6, 64)
    pos = torch.arange(6).unsqueeze(0)
    pe = ref.model.rotary_emb(h, pos)
    attn = lambda x: plain.self_attn(hidden_states=x, position_embeddings=pe, attention_mask=None)[0]  # noqa: E731
    ln1, ln2, mlp = plain.input_layernorm, plain.post_attention_layernorm, plain.mlp
    with torch.no_grad():
        if position == "mhsa":
            h2 = h + attn(ln1(h)) + mome(ln1(h))
            expected = h2 + mlp(ln2(h2))
        elif position == "ffn":
            h2 = h + attn(ln1(h))
            expected = h2 + mlp(ln2(h2)) + mome(ln2(h2))
        else:
            expected = plain(h, position_embeddings=pe, position_ids=pos) + mome(h)
        actual = layer(h, position_embeddings=pe, position_ids=pos)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_backbone_frozen_adapters_and_projectors_learn():
    model = tiny_model(perturb=False).train()
    features = random_features()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # after one step the up-projections are non-zero and gradients reach the rest
        optimiser.zero_grad()
        model(features, ["one", "two", "three"]).loss.backward()
        optimiser.step()
    for name, p in model.llm.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(n.startswith(("audio.", "video.", "mome.")) for n in trainable)
    for name, p in trainable.items():
        assert p.grad is not None, name
    for name in ["audio.projectors.4.fc1.weight", "video.projectors.5.fc2.weight", "mome.0.router.weight",
                 "mome.1.up_weight", "mome.1.down_weight"]:
        assert trainable[name].grad.abs().sum() > 0, name


def test_one_router_and_expert_set_per_layer_shared_by_rates(model):
    assert len(model.mome) == model.llm.config.num_hidden_layers
    assert not any("rate" in n or "@" in n for n, _ in model.mome.named_parameters())


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU through Triton's interpreter (conftest)


@pytest.fixture
def kernels():
    """mome_kernels, whose Triton kernels take tensors on KERNEL_DEVICE."""
    pytest.importorskip("triton")
    from mome_cli import mome_kernels

    if KERNEL_DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and Triton's interpreter is off")
    return mome_kernels


@pytest.mark.parametrize("shape", [dict(), dict(num_routed=23, num_shared=1, top_k=4, bottleneck=12),
                                   dict(num_routed=40, num_shared=0, top_k=1, bottleneck=3)])
def test_decoding_kernels_add_what_the_module_computes(kernels, shape):
    """The two Triton kernels (router, top-k, experts, out += ...) give the module's output: to float32 rounding in
    float32, and in bf16 no farther from the exact sum than PyTorch's road (which rounds twice)."""
    torch.manual_seed(1)
    D = 300  # three of route_down's 128-row slices of x, the last one partial
    m = random_mome(dim=D, **shape).float()
    x, out = torch.randn(2, 3, D), torch.randn(2, 3, D)
    reference = copy.deepcopy(m).double()
    m.to(KERNEL_DEVICE)
    with torch.no_grad():
        exact = out.double() + naive_mome(reference, x.double().reshape(-1, D)).reshape(2, 3, D)
        got = kernels.add_mome(m, x.to(KERNEL_DEVICE), out.to(KERNEL_DEVICE)).cpu()
        torch.testing.assert_close(got.double(), exact, atol=1e-5, rtol=1e-5)
        x16, out16 = x.bfloat16(), out.bfloat16()
        exact16 = out16.double() + naive_mome(reference, x16.double().reshape(-1, D)).reshape(2, 3, D)
        got16 = kernels.add_mome(m, x16.to(KERNEL_DEVICE), out16.to(KERNEL_DEVICE)).cpu()
        kernel_error = (got16.double() - exact16).abs().max()
        torch_error = ((out16 + m.cpu()(x16).bfloat16()).double() - exact16).abs().max()
    assert kernel_error <= torch_error + 1e-6


def test_decoding_kernels_see_weights_changed_in_place(kernels):
    m = random_mome(dim=32).float().to(KERNEL_DEVICE)
    x, out = torch.randn(4, 32, device=KERNEL_DEVICE), torch.randn(4, 32, device=KERNEL_DEVICE)
    with torch.no_grad():
        before = kernels.add_mome(m, x, out.clone())
        m.router.weight.mul_(-1.0)  # other experts win
        m.down_bias.add_(0.5)
        got = kernels.add_mome(m, x, out.clone())
        torch.testing.assert_close(got, out + m(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, before, atol=1e-3)


def test_decoding_kernels_read_new_weights_where_a_captured_graph_reads_them(kernels):
    """A CUDA graph captured earlier reads the packed copy of router and down weights at its address: updates in
    place (an optimizer step, a write through .data, which moves no version counter) must land there, not in a new
    copy. decode() refreshes it first; a direct call refills it when a version counter moved."""
    m = random_mome(dim=32).float().to(KERNEL_DEVICE)
    x, out = torch.randn(4, 32, device=KERNEL_DEVICE), torch.randn(4, 32, device=KERNEL_DEVICE)
    with torch.inference_mode():  # as decode() makes it
        kernels.add_mome(m, x, out.clone())
    packed = m._packed[2]
    with torch.no_grad():
        m.router.weight.mul_(-1.0)  # a version counter moves
        torch.testing.assert_close(kernels.add_mome(m, x, out.clone()), out + m(x), atol=1e-5, rtol=1e-5)
        m.down_weight.data.normal_()  # no counter moves: refresh() (decode's first step) brings it in
        kernels.refresh([m])
        torch.testing.assert_close(packed[:, 5:9], m.down_weight[0].float())  # where the first expert's columns are
        torch.testing.assert_close(kernels.add_mome(m, x, out.clone()), out + m(x), atol=1e-5, rtol=1e-5)
    assert m._packed[2] is packed  # the same copy all along


def test_decoding_kernels_apply_to_inference_on_cuda_only(monkeypatch):
    from mome_cli import mome_kernels

    m = random_mome(dim=16).float()
    x = torch.randn(3, 16)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # as if on a GPU
    monkeypatch.setattr(mome_kernels, "_kernels", (None, None))  # as if Triton were there
    with torch.no_grad():
        assert mome_kernels.applies(m, x, x)
        assert not mome_kernels.applies(m, torch.randn(mome_kernels.MAX_TOKENS + 1, 16), x)  # a prefill
        m.record_routing = True
        assert not mome_kernels.applies(m, x, x)  # training wants the routing
        m.record_routing = False
        monkeypatch.setenv("MOME_KERNELS", "0")
        assert not mome_kernels.applies(m, x, x)
    assert not mome_kernels.applies(m, x, x)  # autograd on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decoding_on_a_gpu_gives_the_same_tokens_with_the_kernels_as_without(monkeypatch):
    from mome_cli import mome_kernels
    from mome_cli.decoding import DecodingOptions, decode

    gpu = tiny_model().cuda()
    torch.manual_seed(0)
    for m in gpu.mome:  # experts that change the text
        torch.nn.init.normal_(m.up_weight, std=0.3)
        torch.nn.init.normal_(m.up_bias, std=0.1)
    features = random_features((50, 37, 21))
    features = type(features)(**{k: v.cuda() for k, v in vars(features).items()})
    calls = []
    add_mome = mome_kernels.add_mome
    monkeypatch.setattr(mome_kernels, "add_mome", lambda *a: calls.append(1) or add_mome(*a))
    options = DecodingOptions(max_new_tokens=30)
    with_kernels = decode(gpu, features, (4, 2), options=options)
    assert calls  # the decoding steps went through them (the prefill, 100+ tokens a row, does not)
    monkeypatch.setenv("MOME_KERNELS", "0")
    gpu._static_greedy = None
    without = decode(gpu, features, (4, 2), options=options)
    assert [r.tokens for r in with_kernels] == [r.tokens for r in without]
    for a, b in zip(with_kernels, without):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_kernels_that_fail_give_way_to_pytorch_once(monkeypatch):
    """A GPU or Triton build the kernels do not compile for: one warning, then PyTorch's operations, same sums."""
    from mome_cli import mome_kernels

    m = random_mome(dim=16).float()
    x, out = torch.randn(3, 16), torch.randn(3, 16)
    monkeypatch.setattr(mome_kernels, "applies", lambda *a: mome_kernels._kernels is not False)
    monkeypatch.setattr(mome_kernels, "_kernels", None)

    def broken(*args):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(mome_kernels, "add_mome", broken)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="no kernel image"):
        got = m.add_to(out.clone(), x)
    torch.testing.assert_close(got, out + m(x))
    assert mome_kernels._kernels is False
    with torch.no_grad():
        torch.testing.assert_close(m.add_to(out.clone(), x), out + m(x))  # no second warning (pytest would show it)
