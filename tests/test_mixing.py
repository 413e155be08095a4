"""Mixup and CutMix for function matching: clean labelled rows, mixed distillation rows."""

import pytest

torch = pytest.importorskip("torch")

from shitu.train.mixing import cutmix, mix_rows, mixup  # noqa: E402


def batch(n=6, side=16):
    """Row i is the constant i: where a mixed pixel came from can be read off its value."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, side, side).clone()


def test_labelled_rows_stay_clean_and_distillation_rows_mix_with_batch_partners():
    x = batch()
    mixed = mix_rows(x, 2, "both", 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(mixed[:2], x[:2])
    assert not torch.equal(mixed[2:], x[2:])
    assert mixed.min() >= 0 and mixed.max() <= 5  # convex combinations / pastes of batch rows only


def test_mix_off_changes_nothing():
    x = batch()
    assert torch.equal(mix_rows(x, 2, "off", 1.0, torch.Generator().manual_seed(0)), x)


def test_mixup_is_the_weighted_mean():
    base, other = batch(2)[:1], batch(2)[1:] * 10
    out = mixup(base, other, torch.tensor([0.25]))
    assert torch.allclose(out, torch.full_like(base, 0.25 * 0 + 0.75 * 10))


def test_cutmix_pastes_a_box_of_the_partners_share():
    base, other = torch.zeros(1, 3, 40, 40), torch.ones(1, 3, 40, 40)
    out = cutmix(base, other, torch.tensor([0.75]), torch.Generator().manual_seed(3))
    pasted = out[0, 0]
    assert set(pasted.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(pasted.mean()) - 0.25) < 0.01  # a 20x20 box of 40x40
    rows, cols = torch.nonzero(pasted, as_tuple=True)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)  # one rectangle


def test_mixing_is_deterministic_for_a_seed():
    x = batch()
    torch.manual_seed(1)
    first = mix_rows(x, 1, "both", 1.0, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    assert torch.equal(first, mix_rows(x, 1, "both", 1.0, torch.Generator().manual_seed(5)))
