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


@pytest.mark.parametrize("size", [(8, 8), (8, 40), (30, 20), (64, 64)])
def test_atrous_conv_skipping_padding_taps_matches_the_full_conv(size):
    """On maps smaller than the dilation the outer taps read only padding: skipping them must give the
    same output and the same gradients (zeros for the skipped taps) as torch's conv."""
    from torch import nn

    from wilss.models.aspp import AtrousConv2d

    torch.manual_seed(0)
    for dilation in (6, 12, 36):
        ref = nn.Conv2d(16, 8, 3, padding=dilation, dilation=dilation, bias=True).double()
        fast = AtrousConv2d.convert_(nn.Conv2d(16, 8, 3, padding=dilation, dilation=dilation, bias=True).double())
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(2, 16, *size, dtype=torch.float64)
        y_ref, y_fast = ref(x), fast(x)
        assert y_fast.shape == y_ref.shape
        torch.testing.assert_close(y_fast, y_ref)
        g = torch.randn_like(y_ref)
        y_ref.backward(g)
        y_fast.backward(g)
        torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad)
    with pytest.raises(ValueError, match="stride 1"):
        AtrousConv2d.convert_(nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2))


def test_aspp_state_dict_is_torchvisions():
    """Checkpoints stay loadable: the atrous branches keep torchvision's parameter names."""
    from torchvision.models.segmentation.deeplabv3 import ASPP

    from wilss.models.aspp import AtrousConv2d, build_aspp

    ours = build_aspp(32, 16, output_stride=8)
    assert sum(isinstance(m, AtrousConv2d) for m in ours.modules()) == 3
    ref = ASPP(32, [12, 24, 36], 16)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)
