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


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.hidden, self.norm = nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        return self.head(self.norm(torch.relu(self.hidden(self.embed(x)))))


def test_muon_takes_the_hidden_matrices_adamw_the_rest_and_resumes_exactly():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, OptimizerConfig(name="muon", lr=0.02, weight_decay=0.01))
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert muon == {id(model.hidden.weight)}, "embeddings, the output layer, norms and biases stay on AdamW"
    x, y = torch.randint(0, 10, (64,)), torch.randint(0, 10, (64,))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        schedule.step()
        return loss.item()

    first = step()
    assert opt.muon.param_groups[0]["lr"] == 0.01 and opt.adamw.param_groups[0]["lr"] == 0.01, "schedules reach both"
    losses = [step() for _ in range(80)]
    assert losses[-1] < 0.7 * first
    saved, weights = opt.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    after = step()
    model.load_state_dict(weights)
    opt.load_state_dict(saved)
    assert step() == after, "the state dict holds both inner optimizers"


class TallAndWide(TinyLM):
    """Muon's matrices one tall (16x8) and one wide (8x16): the iteration transposes one of them."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))


@pytest.mark.parametrize("has_bf16", [True, False])
def test_muon_orthogonalizes_in_float32_on_a_cpu_without_bf16_and_steps_as_torchs_does(monkeypatch, has_bf16):
    from torch.optim import _muon

    from genlab.training import optim

    torch.manual_seed(0)
    model = TallAndWide()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randint(0, 10, (64,)), torch.randint(0, 10, (64,))
    ours = optim._newton_schulz_float32

    def update(bf16: bool) -> tuple[list[torch.Tensor], int]:
        model.load_state_dict(weights)
        calls = []
        monkeypatch.setattr(optim, "cpu_has_bf16", lambda: bf16)
        monkeypatch.setattr(optim, "_newton_schulz_float32", lambda g, *a: (calls.append(g.shape), ours(g, *a))[1])
        opt = build_optimizer(model, OptimizerConfig(name="muon", lr=0.02))
        assert {p.shape for g in opt.muon.param_groups for p in g["params"]} == {(16, 8), (8, 16)}
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        moved = [model.hidden[i].weight.detach() - weights[f"hidden.{i}.weight"] for i in (0, 2)]
        return moved, len(calls)

    mine, calls = update(has_bf16)
    reference, torchs_calls = update(True)  # torch's own iteration, in bf16
    assert getattr(_muon._zeropower_via_newtonschulz, "genlabs", False)
    assert torchs_calls == 0 and calls == (0 if has_bf16 else 2), "float32 only where the CPU has no bf16 kernels"
    for a, b in zip(mine, reference, strict=True):
        assert a.abs().max() > 0
        # the same update up to bf16's rounding, which the iteration compounds to a few percent
        assert torch.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
        assert abs(a.norm() / b.norm() - 1) < 0.05
        assert has_bf16 or not torch.equal(a, b), "the float32 iteration ran instead"
