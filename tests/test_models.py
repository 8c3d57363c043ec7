"""Built-in networks, the (x, t) wrapper and the weight round-trip."""

import pytest
import torch
from torch import nn

from flowsteer.models import MLPVelocity, UNetVelocity, XTModel, build_model, default_model_spec
from flowsteer.errors import ConfigError


@pytest.mark.parametrize("shape", [(2,), (5,), (1, 8, 8)])
def test_mlp_keeps_shape_and_depends_on_time(shape):
    torch.manual_seed(0)
    m = MLPVelocity(shape=shape, hidden=32, depth=2)
    x = torch.randn(4, *shape)
    out0, out1 = m(torch.zeros(4), x), m(torch.ones(4), x)
    assert out0.shape == x.shape
    assert not torch.allclose(out0, out1)


@pytest.mark.parametrize("shape,mult", [((1, 8, 8), (1, 2)), ((3, 16, 16), (1, 2)), ((3, 32, 32), (1, 2, 2))])
def test_unet_keeps_shape(shape, mult):
    torch.manual_seed(0)
    m = UNetVelocity(shape=shape, base_channels=8, channel_mult=mult)
    x = torch.randn(2, *shape)
    assert m(torch.rand(2), x).shape == x.shape


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        UNetVelocity(shape=(1, 6, 6), channel_mult=(1, 2, 2))


@pytest.mark.parametrize("kind,shape", [("mlp", (2,)), ("unet", (1, 8, 8))])
def test_class_conditioning_changes_the_output(kind, shape):
    torch.manual_seed(0)
    m = build_model({**default_model_spec(kind, shape, num_classes=3)})
    x, t = torch.randn(3, *shape), torch.rand(3)
    a = m(t, x, y=torch.tensor([0, 0, 0]))
    b = m(t, x, y=torch.tensor([1, 1, 1]))
    null = m(t, x)
    assert not torch.allclose(a, b)
    assert torch.allclose(null, m(t, x, y=torch.tensor([3, 3, 3])))  # None = the null class


def test_xt_wrapper_swaps_arguments_and_scales_time():
    class XT(nn.Module):
        def forward(self, x, t, y=None):
            return x * t.reshape(-1, 1) + (0 if y is None else y.reshape(-1, 1))

    wrapped = XTModel(XT(), time_scale=1000.0, cond_keys=("y",))
    x = torch.ones(2, 3)
    torch.testing.assert_close(wrapped(torch.tensor([0.5, 0.25]), x), x * torch.tensor([[500.0], [250.0]]))
    torch.testing.assert_close(wrapped(torch.tensor([0.0, 0.0]), x, y=torch.tensor([1.0, 2.0])),
                               torch.tensor([[1.0] * 3, [2.0] * 3]))


def test_spec_errors():
    with pytest.raises(ConfigError, match="unet needs image"):
        default_model_spec("unet", (2,))
    with pytest.raises(ConfigError, match="unknown model"):
        default_model_spec("transformer", (2,))
    with pytest.raises(ConfigError):
        build_model({"kind": "resnet"})
