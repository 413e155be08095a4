"""PP-LCNet-2.5x as the paper defines it: block table, parameter count, multiply-accumulates."""

import pytest

torch = pytest.importorskip("torch")

from shitu.nn.lcnet import BLOCKS, EmbeddingNet, PPLCNet, count_macs, make_divisible  # noqa: E402


def test_parameters_and_macs_match_the_paper():
    model = EmbeddingNet(scale=2.5, embedding_size=512)
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == pytest.approx(8.4e6, rel=0.02)
    assert count_macs(model, 224) == pytest.approx(0.89e9, rel=0.02)


def test_block_table():
    assert len(BLOCKS) == 13
    assert [k for k, *_ in BLOCKS] == [3] * 6 + [5] * 7
    assert [se for *_, se in BLOCKS] == [False] * 11 + [True] * 2


def test_channels_are_multiples_of_eight_and_se_sits_in_the_last_two_blocks():
    backbone = PPLCNet(scale=2.5)
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    with_se = [i for i, block in enumerate(backbone.blocks) if len(block) == 3]
    assert with_se == [11, 12]
    assert make_divisible(16 * 2.5) == 40 and backbone.blocks[-1][-1][0].out_channels == 1280


def test_embedding_shape_any_batch():
    model = EmbeddingNet().eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 224, 224)).shape == (3, 512)
        assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 512)
