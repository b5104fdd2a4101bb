"""Matryoshka compression: token counts, pooling/stacking against hand-built references, padding never leaking."""

import pytest
import torch

from mome_cli.compression import MatryoshkaCompressor, compress, compressed_lengths


@pytest.mark.parametrize("frames, rate, tokens", [(50, 4, 13), (48, 4, 12), (1, 16, 1), (16, 16, 1), (17, 16, 2)])
def test_token_count_is_ceil(frames, rate, tokens):
    assert compressed_lengths(torch.tensor([frames]), rate).item() == tokens


def test_avgpool_means_each_group_and_the_partial_tail():
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)  # frames 0..9
    tokens, n = compress(x, torch.tensor([10]), 4, "avgpool")
    assert n.tolist() == [3]
    assert tokens.flatten().tolist() == [1.5, 5.5, 8.5]  # mean(0..3), mean(4..7), mean(8, 9)


def test_stack_concatenates_frames_and_zero_fills_the_tail():
    x = torch.arange(1, 11, dtype=torch.float32).view(1, 5, 2)  # 5 frames of width 2
    tokens, n = compress(x, torch.tensor([5]), 2, "stack")
    assert tokens.shape == (1, 3, 4) and n.tolist() == [3]
    assert tokens[0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]


@pytest.mark.parametrize("kind", ["avgpool", "stack"])
def test_padding_frames_never_leak_into_tokens(kind):
    x = torch.randn(2, 23, 3)
    x[1, 9:] = 1e6  # padding of the short clip holds garbage
    lengths = torch.tensor([23, 9])
    batched, n = compress(x, lengths, 4, kind)
    alone, _ = compress(x[1:, :9], lengths[1:], 4, kind)
    torch.testing.assert_close(batched[1, : n[1]], alone[0])


def test_compressor_projects_each_rate_and_refuses_untrained_rates():
    c = MatryoshkaCompressor(8, [4, 16, 4], "avgpool", hidden=16, out_dim=32)
    assert c.rates == [4, 16]
    y, n = c(torch.randn(2, 40, 8), torch.tensor([40, 30]), 16)
    assert y.shape == (2, 3, 32) and n.tolist() == [3, 2]
    with pytest.raises(ValueError, match="rate 8 was not trained; trained rates: 4, 16"):
        c(torch.randn(1, 40, 8), torch.tensor([40]), 8)
    assert c.projector_rate(8, any_rate=True) == 4 and c.projector_rate(12, any_rate=True) == 16
    stacked = MatryoshkaCompressor(8, [4], "stack", hidden=16, out_dim=32)
    assert stacked.projectors["4"].fc1.in_features == 32
    with pytest.raises(ValueError, match="stack"):
        stacked.projector_rate(2, any_rate=True)
