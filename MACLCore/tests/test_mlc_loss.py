"""The MLC loss against slow, independent implementations written with plain loops."""

import math

import pytest
import torch

from maclcore.losses.mlc import MLCLossConfig, contrastive_term, mlc_loss, positive_mask


@pytest.fixture(autouse=True)
def float64_by_default():
    """The references compute in double precision; restore the default for the tests that follow."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def cosine(a, b):
    return float(sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))))


def is_positive(i, j, positions, ids, rule, threshold):
    if i == j:
        return False
    if ids[i] == ids[j]:
        return True
    return rule == "position" and abs(positions[i] - positions[j]) < threshold


def slow_global(z, zt, positions, ids, tau, rule="position", threshold=0.1):
    """Eq. 10 of the paper, anchor by anchor, positive by positive; mean over anchors."""
    n = len(z)
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(cosine(z[i], zt[k]) / tau) for k in range(n) if k != i)
        positives = [j for j in range(n) if is_positive(i, j, positions, ids, rule, threshold)]
        total += -sum(math.log(math.exp(cosine(z[i], zt[j]) / tau) / denominator) for j in positives) / len(positives)
    return total / n


def slow_dense(zl, ztl, positions, ids, tau, rule="position", threshold=0.1):
    """Eq. 11: the global loss at every pixel location s, averaged over locations."""
    n, d, h, w = zl.shape
    total = 0.0
    for y in range(h):
        for x in range(w):
            z = [[float(zl[i, c, y, x]) for c in range(d)] for i in range(n)]
            zt = [[float(ztl[i, c, y, x]) for c in range(d)] for i in range(n)]
            total += slow_global(z, zt, positions, ids, tau, rule, threshold)
    return total / (h * w)


def slow_er(y, y_aux, scale):
    n, c, h, w = y.shape
    total = 0.0
    for i in range(n):
        for ch in range(c):
            for a in range(h):
                for b in range(w):
                    block = [float(y_aux[i, ch, a * scale + u, b * scale + v]) for u in range(scale) for v in range(scale)]
                    total += abs(float(y[i, ch, a, b]) - sum(block) / len(block))
    return total / (n * c * h * w)


def random_outputs(n=6, dim=5, size=3, scale=4, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"z_g": torch.randn(n, dim, generator=g), "zt_g": torch.randn(n, dim, generator=g),
            "z_l": torch.randn(n, dim, size, size, generator=g), "zt_l": torch.randn(n, dim, size, size, generator=g),
            "y": torch.randn(n, channels, 2, 2, generator=g),
            "y_aux": torch.randn(n, channels, 2 * scale, 2 * scale, generator=g)}


def batch_meta(n_slices=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    positions = torch.rand(n_slices, generator=g).repeat(2)
    ids = torch.arange(n_slices).repeat(2)
    return positions, ids


@pytest.mark.parametrize("rule", ["position", "views"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_global_and_dense_terms_match_loop_references(rule, tau):
    out = random_outputs()
    positions, ids = batch_meta()
    config = MLCLossConfig(lambdas=(1.0, 1.0, 1.0), temperature=tau, positives=rule, threshold=0.3)
    terms = mlc_loss(out, positions, ids, config, scale=4)
    p, i = positions.tolist(), ids.tolist()
    expected_global = slow_global(out["z_g"].tolist(), out["zt_g"].tolist(), p, i, tau, rule, 0.3)
    expected_dense = slow_dense(out["z_l"], out["zt_l"], p, i, tau, rule, 0.3)
    assert float(terms["global"]) == pytest.approx(expected_global, abs=1e-5)
    assert float(terms["dense"]) == pytest.approx(expected_dense, abs=1e-5)


def test_er_term_and_weighted_total_match_references():
    out = random_outputs(scale=4)
    positions, ids = batch_meta()
    config = MLCLossConfig(lambdas=(1.0, 0.5, 2.0))
    terms = mlc_loss(out, positions, ids, config, scale=4)
    assert float(terms["er"]) == pytest.approx(slow_er(out["y"], out["y_aux"], 4), abs=1e-6)
    total = 1.0 * terms["global"] + 0.5 * terms["dense"] + 2.0 * terms["er"]
    assert float(terms["loss"]) == pytest.approx(float(total), abs=1e-9)


def test_er_is_zero_when_both_branches_see_identical_features():
    out = {k: v.float() for k, v in random_outputs(scale=2).items()}
    out["y"] = torch.nn.functional.avg_pool2d(out["y_aux"], 2)
    terms = mlc_loss(out, *batch_meta(), MLCLossConfig(), scale=2)
    assert float(terms["er"]) == 0.0


def test_positive_mask_cross_volume_positions():
    # Slices 0 and 1 come from different volumes but lie at close positions: positive across volumes.
    # Slice 2 lies 0.14 from slice 0 (negative) but 0.09 from slice 1 (positive).
    positions = torch.tensor([0.25, 0.30, 0.39, 0.25, 0.30, 0.39])
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    self_mask = torch.eye(6, dtype=torch.bool)
    mask = positive_mask(positions, ids, positions, ids, self_mask, "position", threshold=0.1)
    assert mask[0, 1] and mask[0, 4]  # other volume, 0.05 apart
    assert mask[0, 3]  # own other view
    assert not mask[0, 2] and not mask[0, 5]  # 0.14 apart
    assert mask[1, 2] and mask[2, 1]
    assert not mask.diagonal().any()
    views = positive_mask(positions, ids, positions, ids, self_mask, "views", threshold=0.1)
    assert views.sum(1).tolist() == [1] * 6 and views[0, 3] and views[3, 0]


def test_positive_mask_threshold_edge_is_strict():
    positions = torch.tensor([0.0, 0.5, 0.0, 0.5])
    ids = torch.tensor([0, 1, 0, 1])
    mask = positive_mask(positions, ids, positions, ids, torch.eye(4, dtype=torch.bool), "position", threshold=0.5)
    assert not mask[0, 1]  # |0 - 0.5| == t is not < t
    mask = positive_mask(positions, ids, positions, ids, torch.eye(4, dtype=torch.bool), "position", threshold=0.5001)
    assert mask[0, 1]


def test_loss_is_invariant_to_permuting_the_batch():
    out = random_outputs(n=8)
    positions, ids = batch_meta(4)
    config = MLCLossConfig()
    reference = mlc_loss(out, positions, ids, config, scale=4)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    permuted = mlc_loss({k: v[perm] for k, v in out.items()}, positions[perm], ids[perm], config, scale=4)
    for name in ("global", "dense", "er", "loss"):
        assert float(permuted[name]) == pytest.approx(float(reference[name]), rel=1e-6)


def test_contrastive_term_is_stable_for_extreme_similarities():
    # Temperatures far below 1 push exp() past float32's range; log-sum-exp must keep the loss finite.
    sims = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, 0.9], [-1.0, 0.9, 0.0]], dtype=torch.float32)
    positives = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    positives[2, 1] = True
    self_mask = torch.eye(3, dtype=torch.bool)
    loss = contrastive_term(sims, positives, self_mask, temperature=1e-3)
    assert torch.isfinite(loss)


def test_loss_under_bfloat16_inputs_matches_float32():
    out = random_outputs()
    positions, ids = batch_meta()
    config = MLCLossConfig()
    full = mlc_loss({k: v.float() for k, v in out.items()}, positions.float(), ids, config, scale=4)
    half = mlc_loss({k: v.bfloat16() for k, v in out.items()}, positions.float(), ids, config, scale=4)
    assert half["loss"].dtype == torch.float32
    assert float(half["loss"]) == pytest.approx(float(full["loss"]), rel=2e-2)
