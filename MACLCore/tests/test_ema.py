"""EMA of the weights: the averaging math, the decay warm-up, buffers copied."""

import pytest
import torch
from torch import nn

from maclcore.errors import ConfigError
from maclcore.training.ema import ModelEMA


def test_ema_math():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.1)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.19)
    assert not ema.module.weight.requires_grad


def test_warmup_and_buffers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = ModelEMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    model.train()
    model(torch.randn(4, 1, 8, 8))
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert ema.updates == 1
    with pytest.raises(ConfigError, match="ema_decay"):
        ModelEMA(model, decay=1.0)


def test_the_average_spans_at_most_a_tenth_of_a_short_run():
    import torch
    from maclcore.training.ema import ModelEMA

    ema = ModelEMA(torch.nn.Linear(2, 2), decay=0.99, warmup=False)
    ema.fit_to_run(160)
    assert ema.current_decay() == pytest.approx(1 - 1 / 16)
    ema.fit_to_run(10_000)
    assert ema.current_decay() == pytest.approx(0.99)
