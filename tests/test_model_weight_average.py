"""The weight average of the fine-tune and self-training stages (model/weight_average.py, TrainConfig.weight_average)."""

import pytest
import torch
from test_model_train import sparse_dataset

from model import checkpoint
from model.config import TrainConfig, preset
from model.train import train
from model.weight_average import WeightAverage


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def naive_average(values: list[list[float]], decay: float) -> list[float]:
    average = list(values[0])
    for n, v in enumerate(values[1:]):
        keep = min(decay, (1 + n) / (10 + n))
        average = [keep * a + (1 - keep) * x for a, x in zip(average, v)]
    return average


def set_weights(module: Tiny, values: list[float], count: int) -> None:
    with torch.no_grad():
        module.w.copy_(torch.tensor(values))
        module.count.fill_(count)


def test_the_average_matches_a_naive_exponential_average_with_warm_up():
    values = [[float(i), float(i * i % 7), -2.0 * i] for i in range(40)]
    module = Tiny()
    average = WeightAverage(module, 0.9)
    for i, v in enumerate(values):
        set_weights(module, v, i)
        average.update()
    assert average.finish() == 40
    assert module.w.tolist() == pytest.approx(naive_average(values, 0.9), rel=1e-5)
    assert int(module.count) == 39  # integer buffers are the last step's, not averaged
    assert average.finish() == 0 and module.w.tolist() == pytest.approx(naive_average(values, 0.9), rel=1e-5)


def test_early_steps_are_not_held_at_the_first_weights():
    module = Tiny()
    average = WeightAverage(module, 0.999)
    for v in ([0.0] * 3, [10.0] * 3):
        set_weights(module, v, 0)
        average.update()
    average.finish()
    assert module.w.tolist() == pytest.approx([9.0] * 3)  # keep = 1 / 10 after one step, not 0.999


def test_a_saved_average_goes_on_as_if_never_interrupted():
    values = [[float(i), 1.0 / (i + 1), 3.0] for i in range(12)]
    module, resumed = Tiny(), Tiny()
    whole, first = WeightAverage(module, 0.8), WeightAverage(module, 0.8)
    for v in values[:5]:
        set_weights(module, v, 0)
        whole.update()
        first.update()
    second = WeightAverage(resumed, 0.8)
    second.load(first.state())
    for v in values[5:]:
        set_weights(module, v, 0)
        whole.update()
        set_weights(resumed, v, 0)
        second.update()
    whole.finish()
    second.finish()
    assert resumed.w.tolist() == pytest.approx(module.w.tolist(), rel=1e-6)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_a_decay_outside_0_to_1_is_refused(value):
    with pytest.raises(ValueError, match="weight_average"):
        TrainConfig.from_dict({"weight_average": value})


def test_each_segmenting_stage_ends_on_its_average_and_the_global_stage_is_untouched(tmp_path):
    images, labels = sparse_dataset(tmp_path / "data", painted=2)
    common = dict(
        images=images,
        labels=labels,
        device="cpu",
        local_stage=False,
        pseudo_stage=True,
        finetune_epochs=2,
        finetune_steps=5,
        pseudo_epochs=1,
        pseudo_steps=4,
    )
    averaged = train(preset("quick", out_dir=str(tmp_path / "avg"), weight_average=0.9, **common))["stages"]
    assert averaged["finetune"]["averaged_steps"] == 10 and averaged["pseudo"]["averaged_steps"] == 4
    assert "averaged_steps" not in averaged["global"]
    last = checkpoint.load(tmp_path / "avg" / "checkpoint.pt")
    assert last["weight_average"] == {"steps": 0, "average": {}}  # nothing left over once the stages ended
    plain = train(preset("quick", out_dir=str(tmp_path / "plain"), **common))["stages"]
    assert all("averaged_steps" not in s for s in plain.values())
    a = checkpoint.load(tmp_path / "avg" / "model.pt")["state_dict"]
    b = checkpoint.load(tmp_path / "plain" / "model.pt")["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the global stage ran before any averaging: both runs share its encoder
    ga, gb = (checkpoint.load(tmp_path / d / "global.pt")["state_dict"] for d in ("avg", "plain"))
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
