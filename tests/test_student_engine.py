import pytest
import torch

from wilss import engine
from wilss.config import ModelConfig, TrainConfig
from wilss.errors import ConfigError, WilssError
from wilss.methods.base import default_param_groups, poly
from wilss.models import create_student
from wilss.models.student import TINY_WEIGHTS


def test_student_grows_and_every_parameter_gets_gradient():
    model = create_student(ModelConfig(), [11])
    model.add_head(5)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 16, 32, 32) and model.n_classes == 16
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_shipped_tiny_weights_load_through_the_file_path():
    assert TINY_WEIGHTS.is_file() and TINY_WEIGHTS.stat().st_size < 10e6
    a = create_student(ModelConfig(pretrained="synthetic"), [3])
    b = create_student(ModelConfig(pretrained=str(TINY_WEIGHTS)), [3])
    for (k, va), vb in zip(a.backbone.state_dict().items(), b.backbone.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ConfigError, match="does not exist"):
        create_student(ModelConfig(pretrained="/nope.pt"), [3])


def test_optimizer_groups_and_poly():
    model = create_student(ModelConfig(), [3])
    cfg = TrainConfig(lr=0.1, head_lr_mult=10)
    opt = engine.make_optimizer(default_param_groups(model, 0.1, cfg), cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(1.0)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly(10, 0.9))
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = create_student(ModelConfig(), [3])
    path = tmp_path / "ck.pt"
    engine.save_checkpoint(path, model, {"task": "10-5", "n_classes": 3})
    other = create_student(ModelConfig(), [3])
    engine.load_checkpoint(path, other, {"task": "10-5"})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(WilssError, match="made for task='10-5'"):
        engine.load_checkpoint(path, other, {"task": "5-5"})
    with pytest.raises(WilssError, match="does not fit the model"):
        engine.load_checkpoint(path, create_student(ModelConfig(), [4]))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WilssError, match="truncated"):
        engine.load_checkpoint(path, other)
