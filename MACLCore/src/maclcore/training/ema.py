"""An exponential moving average of a network's weights, kept as the model that is saved.

``ema = decay * ema + (1 - decay) * weights`` after every optimizer step, with the warm-up of the decay
``min(decay, (1 + n) / (10 + n))`` (n: updates so far) so that the average is not dominated by the random
initial weights in a short run. BatchNorm running statistics (buffers) are copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn

from ..errors import ConfigError


class ModelEMA:
    """Shadow copy of ``model`` (fp32, on the model's device) updated by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float = 0.99, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ConfigError("ema_decay", f"must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates, self.limit = decay, warmup, 0, 1.0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        decay = min(self.decay, self.limit)
        if not self.warmup:
            return decay
        return min(decay, (1 + self.updates) / (10 + self.updates))

    def fit_to_run(self, total_steps: int) -> None:
        """Let the average span at most the last tenth of a run of ``total_steps``: in a short run a decay of
        0.99 (an average over about 100 steps) would still hold early, poor weights at the end."""
        self.limit = 1.0 - 1.0 / max(1.0, 0.1 * total_steps)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        source = dict(model.named_parameters())
        for name, shadow in self.module.named_parameters():
            shadow.mul_(decay).add_(source[name].detach().to(shadow.dtype), alpha=1 - decay)
        buffers = dict(model.named_buffers())
        for name, shadow in self.module.named_buffers():
            shadow.copy_(buffers[name])

    def state(self) -> Dict[str, Any]:
        """What a resumed run needs: the averaged weights and the number of updates (the decay's warm-up)."""
        return {"weights": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "updates": self.updates}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
