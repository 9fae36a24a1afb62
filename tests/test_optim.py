import pytest
import torch
from torch import nn

from genlab.config import OptimizerConfig, ScheduleConfig
from genlab.training.optim import build_optimizer, lr_factor


def test_cosine_with_warmup_shape():
    f = lr_factor(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1), max_steps=110)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)


def test_step_and_constant():
    step = lr_factor(ScheduleConfig(name="step", step_size=5, gamma=0.5), max_steps=100)
    assert [step(i) for i in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(ScheduleConfig(name="constant"), 100)(77) == 1.0


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers_decay_only_matrices(name, cls):
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = build_optimizer(net, OptimizerConfig(name=name, weight_decay=0.1, lr=0.01))
    assert isinstance(opt, cls)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight)}
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_step_gate_fires_once_per_crossed_multiple():
    from genlab.training.callbacks import EveryNSteps

    gate = EveryNSteps(5)
    fired = [s for s in (1, 1, 2, 2, 4, 5, 5, 6, 8, 10, 11, 13, 16) if gate(s)]
    assert fired == [5, 10, 16], "micro-batches repeat a step; two optimizers skip odd ones"
    resumed = EveryNSteps(5)
    assert [s for s in (21, 22, 25) if resumed(s)] == [25], "no extra firing right after a resume"
    assert resumed(26, also=True) and not resumed(26, also=True)
