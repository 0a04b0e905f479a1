"""Every registered model x every norm it supports: shape, finiteness, gradients, exact parameter counts."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import BudgetError, ConfigError
from cifarlab.layers import NORMS, LayerNorm2d, act_layer, norm_layer
from cifarlab.models import check_budget, count_params, create_model, list_models, model_options

pytestmark = pytest.mark.usefixtures("single_thread")

# Norms each model supports; the budget models need a norm to train, the Keras baseline starts without.
MODEL_NORMS = {
    "keras-cnn": ("none", "bn", "gn", "ln"),
    "s8-net": ("bn", "gn", "ln"),
    "budget-net": ("bn", "gn", "ln"),
}
CASES = [(name, norm) for name in MODEL_NORMS for norm in MODEL_NORMS[name]]
BUDGET = 50_000


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = False) -> int:
    """Parameters of a k x k convolution."""
    return c_in * c_out * k * k + (c_out if bias else 0)


def dense(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def norm(c: int) -> int:
    """BN, GN and LN (GroupNorm(1, C)) all carry a per-channel scale and shift."""
    return 2 * c


def test_every_registered_model_is_covered():
    assert sorted(MODEL_NORMS) == list_models()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name,norm_kind", CASES)
def test_forward_shape_finite_and_every_parameter_gets_a_gradient(name, norm_kind):
    model = create_model(name, norm=norm_kind)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.abs().sum() > 0 for p in model.parameters()), "some parameter got an all-zero gradient"


@pytest.mark.parametrize("name,norm_kind", CASES)
def test_eval_mode_is_deterministic(name, norm_kind):
    model = create_model(name, norm=norm_kind).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name,norm_kind", [c for c in CASES if c[0] != "keras-cnn"])
def test_budget_models_fit_50k_parameters_for_every_norm(name, norm_kind):
    assert count_params(create_model(name, norm=norm_kind)) <= BUDGET


# ---------------------------------------------------------------------------------------------
# Exact parameter counts, written out layer by layer.

# keras-cnn default: conv32-conv32-pool-conv64-conv64-pool-flatten(64*8*8)-dense512-dense10, biases everywhere.
KERAS_DEFAULT = (
    conv(3, 32, bias=True) + conv(32, 32, bias=True)  # 896 + 9,248
    + conv(32, 64, bias=True) + conv(64, 64, bias=True)  # 18,496 + 36,928
    + dense(64 * 8 * 8, 512)  # 2,097,664
    + dense(512, 10)  # 5,130
)
# extra_block: a third block of two 128-filter convs; the map is 4x4 at the flatten.
KERAS_EXTRA = (
    conv(3, 32, bias=True) + conv(32, 32, bias=True)
    + conv(32, 64, bias=True) + conv(64, 64, bias=True)
    + conv(64, 128, bias=True) + conv(128, 128, bias=True)  # 73,856 + 147,584
    + dense(128 * 4 * 4, 512)  # 1,049,088
    + dense(512, 10)
)
# wide: 64- and 128-filter blocks.
KERAS_WIDE = (
    conv(3, 64, bias=True) + conv(64, 64, bias=True)  # 1,792 + 36,928
    + conv(64, 128, bias=True) + conv(128, 128, bias=True)  # 73,856 + 147,584
    + dense(128 * 8 * 8, 512)  # 4,194,816
    + dense(512, 10)
)
# keras-cnn with a norm: conv biases go (the norm's shift replaces them), each conv gains a norm.
KERAS_BN = (
    conv(3, 32) + norm(32) + conv(32, 32) + norm(32)
    + conv(32, 64) + norm(64) + conv(64, 64) + norm(64)
    + dense(64 * 8 * 8, 512) + dense(512, 10)
)
# s8-net width 32: C1 16, C2 32, c3 16, C3-C5 28, c6 16, C7-C9 32; 3x3 blocks carry a norm, 1x1s do not.
S8_NET = (
    conv(3, 16) + norm(16)  # C1 (unpadded)       432 + 32
    + conv(16, 32) + norm(32)  # C2 (unpadded)    4,608 + 64
    + conv(32, 16, k=1)  # c3                       512
    + conv(16, 28) + norm(28)  # C3               4,032 + 56
    + conv(28, 28) + norm(28)  # C4               7,056 + 56
    + conv(28, 28) + norm(28)  # C5               7,056 + 56
    + conv(28, 16, k=1)  # c6                       448
    + conv(16, 32) + norm(32)  # C7               4,608 + 64
    + conv(32, 32) + norm(32)  # C8               9,216 + 64
    + conv(32, 32) + norm(32)  # C9               9,216 + 64
    + conv(32, 10, k=1)  # C10                      320
)
# budget-net: stem 20, stages 24/32/36, each stage two 3x3 convs with norms, linear head without bias.
BUDGET_NET = (
    conv(3, 20) + norm(20)  # stem              540 + 40
    + conv(20, 24) + norm(24) + conv(24, 24) + norm(24)  # stage 1   4,320 + 48 + 5,184 + 48
    + conv(24, 32) + norm(32) + conv(32, 32) + norm(32)  # stage 2   6,912 + 64 + 9,216 + 64
    + conv(32, 36) + norm(36) + conv(36, 36) + norm(36)  # stage 3  10,368 + 72 + 11,664 + 72
    + dense(36, 10, bias=False)  # head                  360
)


@pytest.mark.parametrize("name,options,expected,written", [
    ("keras-cnn", {}, KERAS_DEFAULT, 2_168_362),
    ("keras-cnn", {"extra_block": True}, KERAS_EXTRA, 1_341_226),
    ("keras-cnn", {"wide": True}, KERAS_WIDE, 4_460_106),
    ("keras-cnn", {"norm": "bn"}, KERAS_BN, 2_168_554),
    ("s8-net", {"norm": "bn"}, S8_NET, 47_960),
    ("budget-net", {"norm": "bn"}, BUDGET_NET, 48_972),
], ids=["keras-default", "keras-extra-block", "keras-wide", "keras-bn", "s8-net-bn", "budget-net-bn"])
def test_exact_parameter_counts(name, options, expected, written):
    assert expected == written  # the layer-by-layer sum above agrees with the number people quote
    assert count_params(create_model(name, **options)) == expected


@pytest.mark.parametrize("name", ["s8-net", "budget-net"])
@pytest.mark.parametrize("norm_kind", ["gn", "ln"])
def test_gn_and_ln_cost_the_same_as_bn(name, norm_kind):
    # All three norms carry 2*C affine parameters; only BN adds (non-trainable) running statistics.
    model = create_model(name, norm=norm_kind)
    assert count_params(model) == count_params(create_model(name, norm="bn"))
    assert count_params(model, trainable=False) == 0


def test_batchnorm_running_statistics_are_not_trainable_parameters():
    model = create_model("s8-net", norm="bn")
    assert count_params(model, trainable=False) == 0  # buffers, not parameters
    assert sum(b.numel() for n, b in model.named_buffers() if "running" in n) == 456  # mean + var per channel


def test_budget_net_late_pooling_keeps_the_parameters_and_the_output_shape():
    early, late = create_model("budget-net"), create_model("budget-net", pool="late")
    assert count_params(late) == BUDGET_NET
    x = torch.randn(2, 3, 32, 32)
    assert late(x).shape == early(x).shape == (2, 10)
    # Late pooling runs the second conv of every stage on 4x the positions.
    seen = {}
    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape[-1]
        return hook

    hooks = [m.register_forward_hook(record(k)) for k, m in late.named_modules() if k.endswith("conv2")]
    late(x)
    for h in hooks:
        h.remove()
    assert [seen[f"stages.{i}.conv2"] for i in range(3)] == [32, 16, 8]


def test_budget_net_dirac_init_makes_the_first_filters_identities():
    model = create_model("budget-net", dirac=True)
    conv = model.stages[1].conv2  # 32 -> 32
    x = torch.randn(1, 32, 8, 8)
    assert torch.allclose(conv(x), x, atol=1e-6)
    widening = model.stages[0].conv1  # 20 -> 24: the first 20 filters pass the input through
    x = torch.randn(1, 20, 8, 8)
    assert torch.allclose(widening(x)[:, :20], x, atol=1e-6)
    assert widening.weight[20:].abs().sum() > 0  # the extra filters keep their random init
    assert count_params(model) == BUDGET_NET


def test_budget_net_unknown_pool_placement_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pool placement 'middle'"):
        create_model("budget-net", pool="middle")


def test_s8_net_skips_change_no_parameter_count():
    assert count_params(create_model("s8-net", skips=True)) == S8_NET


# ---------------------------------------------------------------------------------------------
# Bad options


def test_unknown_model_is_a_config_error_naming_it_and_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'resnet9'") as exc:
        create_model("resnet9")
    for name in list_models():
        assert name in str(exc.value)


@pytest.mark.parametrize("name", ["keras-cnn", "s8-net", "budget-net"])
def test_unknown_option_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match=f"model '{name}' has no option 'depth'"):
        create_model(name, depth=3)


@pytest.mark.parametrize("name,option,value", [
    ("s8-net", "dropout", "high"),
    ("s8-net", "skips", "yes"),
    ("s8-net", "width", 32.5),
    ("budget-net", "w1", True),
    ("keras-cnn", "wide", 1),
])
def test_option_of_the_wrong_type_is_a_config_error(name, option, value):
    with pytest.raises(ConfigError, match=f"option '{option}' expects"):
        create_model(name, **{option: value})


def test_an_int_is_accepted_where_a_float_is_expected():
    model = create_model("s8-net", dropout=0)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("name", ["keras-cnn", "s8-net", "budget-net"])
def test_unknown_norm_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match="unknown norm 'instance'"):
        create_model(name, norm="instance")


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        act_layer("tanh")


def test_zero_groups_is_a_config_error():
    with pytest.raises(ConfigError, match="groups"):
        create_model("s8-net", norm="gn", groups=0)


def test_every_model_option_has_a_default():
    # `cifarlab models` lists options with defaults, and create_model type-checks against them.
    for name in list_models():
        assert all(v is not inspect.Parameter.empty for v in model_options(name).values())


# ---------------------------------------------------------------------------------------------
# Norm factories


def test_norm_factories_are_called_with_the_channel_count():
    bn, gn, ln = norm_layer("bn")(12), norm_layer("gn", groups=4)(12), norm_layer("ln")(12)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 12
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (4, 12)
    assert isinstance(ln, nn.GroupNorm) and (ln.num_groups, ln.num_channels) == (1, 12)
    assert type(gn) is nn.GroupNorm and type(ln) is LayerNorm2d  # tables can tell LN from GN by the class
    assert norm_layer("none") is None
    assert set(NORMS) == {"bn", "gn", "ln", "none"}


@pytest.mark.parametrize("groups,channels,expected", [
    (4, 10, 2),  # 4 does not divide 10: largest divisor of 10 not above 4
    (4, 28, 4),
    (8, 28, 7),  # 8 does not divide 28 -> 7
    (3, 16, 2),
    (5, 7, 1),  # a prime channel count falls back to one group (= layer norm)
    (64, 16, 16),  # more groups than channels: one channel per group
])
def test_group_norm_falls_back_to_a_divisor_of_the_channels(groups, channels, expected):
    gn = norm_layer("gn", groups=groups)(channels)
    assert gn.num_groups == expected
    assert gn(torch.randn(2, channels, 4, 4)).shape == (2, channels, 4, 4)


def test_layer_norm_normalises_each_sample_over_c_h_w():
    ln = norm_layer("ln")(6)
    x = torch.randn(3, 6, 5, 5) * 4 + 2
    y = ln(x)  # affine starts at scale 1, shift 0
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_layer_norm_is_group_norm_with_one_group_to_the_last_bit():
    # Same computation and the same state_dict keys as GroupNorm(1, C): runs saved before LN had a class
    # of its own load unchanged.
    torch.manual_seed(0)
    ln, gn1 = LayerNorm2d(6), nn.GroupNorm(1, 6)
    with torch.no_grad():
        gn1.weight.normal_(), gn1.bias.normal_()
    ln.load_state_dict(gn1.state_dict())
    assert list(ln.state_dict()) == list(gn1.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(ln(x), gn1(x))


@pytest.mark.parametrize("groups", [3, 5, 7])
def test_gn_with_groups_not_dividing_the_widths_builds_and_runs(groups):
    # s8-net widths 16/32/28 and budget-net widths 20/24/32/36: several are not multiples of these.
    for name in ("s8-net", "budget-net"):
        model = create_model(name, norm="gn", groups=groups)
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                assert m.num_channels % m.num_groups == 0 and m.num_groups <= groups
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Budget


def test_check_budget_passes_at_the_limit_and_fails_one_over():
    model = create_model("s8-net")
    assert check_budget(model, S8_NET) == S8_NET
    assert check_budget(model, None) == S8_NET
    with pytest.raises(BudgetError, match="1 over the budget of 47,959"):
        check_budget(model, S8_NET - 1, "s8-net")


def test_budget_net_whitening_stem_is_frozen_and_whitens_patches_of_the_data():
    model = create_model("budget-net", whiten=True)
    stem = model.stem.conv
    assert not stem.weight.requires_grad
    assert count_params(model, trainable=False) == 24 * 3 * 2 * 2
    assert count_params(model) <= 50_000
    g = torch.Generator().manual_seed(0)
    # Correlated "images": smooth noise, so neighbouring pixels and channels share most of their signal.
    images = F.avg_pool2d(torch.randn(200, 3, 35, 35, generator=g), 4, stride=1)
    images = images + 0.5 * images.mean(1, keepdim=True)
    model.init_from_data(images)
    out = F.conv2d(images, stem.weight[:12])  # the 12 whitening filters (the other 12 are negatives)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    # Whitened: unit variance (up to the eps added to the eigenvalues), no correlation between filters.
    assert torch.allclose(cov, torch.diag(torch.diag(cov)), atol=0.02)
    assert torch.diag(cov).min() > 0.5 and torch.diag(cov).max() < 1.01
    assert torch.equal(stem.weight[12:], -stem.weight[:12])
    assert model(images[:2, :, :32, :32]).shape == (2, 10)
