"""`layer_table` and `cifarlab inspect`: hand-computed tables, empirical receptive fields, totals, bad inputs."""
from __future__ import annotations

import copy
import csv
import io
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from cifarlab.analysis import FORMATS, AnalysisError, LayerTable, UnsupportedLayerError, format_table, layer_table
from cifarlab.cli import main
from cifarlab.cli.inspect import FORMATS as CLI_FORMATS
from cifarlab.errors import ConfigError
from cifarlab.layers import NORMS
from cifarlab.models import count_params, create_model, list_models

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Every tensor here is tiny: on two shared cores intra-op threads cost more than they save
    # (an s8-net forward measured 0.39 s with 2 threads under load, 7 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The s8-net table: label -> (k, s, p, N_out, J_out, R_out); None where the column is empty.
S8_REFERENCE = {
    "input": (None, None, None, 32, 1, 1),
    "C1": (3, 1, 0, 30, 1, 3),
    "C2": (3, 1, 0, 28, 1, 5),
    "c3": (1, 1, 0, 28, 1, 5),
    "P1": (2, 2, 0, 14, 2, 6),
    "C3": (3, 1, 1, 14, 2, 10),
    "C4": (3, 1, 1, 14, 2, 14),
    "C5": (3, 1, 1, 14, 2, 18),
    "c6": (1, 1, 0, 14, 2, 18),
    "P2": (2, 2, 0, 7, 4, 20),
    "C7": (3, 1, 1, 7, 4, 28),
    "C8": (3, 1, 1, 7, 4, 36),
    "C9": (3, 1, 1, 7, 4, 44),
    "GAP": (7, 7, 0, 1, 28, 68),
    "C10": (1, 1, 0, 1, 28, 68),
}


def _square(pair):
    if pair is None:
        return None
    assert pair[0] == pair[1], pair
    return pair[0]


@pytest.mark.parametrize("skips", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_s8_net_matches_the_reference_table(norm, skips):
    table = layer_table(create_model("s8-net", norm=norm, skips=skips))
    by_label = {r.label: r for r in table.rows}
    got = {label: tuple(_square(getattr(by_label[label], f))
                        for f in ("kernel", "stride", "padding", "n_out", "j_out", "r_out"))
           for label in S8_REFERENCE}
    assert got == S8_REFERENCE
    ordered = [r.label for r in table.rows if r.label in S8_REFERENCE]
    assert ordered == list(S8_REFERENCE)  # forward order


# ---- hand-made nets for the geometry rules ----

class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, dilation=3), nn.GELU(),
                                  nn.Conv2d(8, 8, (1, 5), padding=(0, 2)))

    def forward(self, x):
        return self.body(x)


class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 5, stride=2, padding=2), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.body(x)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.dw1 = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw2 = nn.Conv2d(12, 12, 3, stride=2, groups=12)
        self.pw = nn.Conv2d(12, 16, 1)

    def forward(self, x):
        return self.pw(self.dw2(F.relu(self.dw1(self.expand(x)))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.down1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(16, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1, stride=2)
        self.norm = nn.BatchNorm2d(16)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.a2(F.relu(self.a1(x)))  # identity shortcut
        y = self.down2(F.relu(self.down1(x)))
        return F.relu(self.norm(y + self.shortcut(x)))  # projection shortcut


class FunctionalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, stride=2, padding=1)
        x = F.avg_pool2d(self.conv2(x), 2)
        return self.head(x.mean((2, 3), keepdim=True)).flatten(1)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.b1, self.b3, self.b5 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 5, padding=2)
        self.out = nn.Conv2d(12, 8, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.out(torch.cat([self.b1(x), self.b3(x), self.b5(x)], dim=1))


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 0, 3))  # (left, right, top, bottom): off-centre fields
        self.same = nn.Conv2d(3, 8, 4, padding="same")  # even kernel: 1 before, 2 after
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) / 10)

    def forward(self, x):
        x = self.same(self.pad(x)) * 2
        return F.conv2d(F.pad(x, (2, 0, 0, 2)), self.weight, stride=2)


HAND_NETS = {"padded": Padded, "dilated": Dilated, "strided": Strided, "depthwise": Depthwise, "residual": Residual,
             "functional-pool": FunctionalPool, "concat": Concat}
NETS = {**{name: (lambda name=name: create_model(name)) for name in list_models()},
        "s8-net-skips": lambda: create_model("s8-net", skips=True), **HAND_NETS}


def _probe(model: nn.Module) -> nn.Module:
    """A float64 copy in which no gradient vanishes by chance: positive weights, identity activations and
    norms, average pools in place of max pools (same window, so the same receptive field)."""
    m = copy.deepcopy(model).double().eval()
    for name, sub in list(m.named_modules()):
        if isinstance(sub, (nn.ReLU, nn.GELU, nn.SiLU, nn.Dropout, nn.BatchNorm2d, nn.GroupNorm)):
            m.set_submodule(name, nn.Identity())
        elif isinstance(sub, nn.MaxPool2d):
            m.set_submodule(name, nn.AvgPool2d(sub.kernel_size, sub.stride, sub.padding, sub.ceil_mode))
        elif isinstance(sub, nn.AdaptiveMaxPool2d):
            m.set_submodule(name, nn.AdaptiveAvgPool2d(sub.output_size))
    with torch.no_grad():
        for p in m.parameters():
            p.abs_().add_(0.01)
    return m.requires_grad_(False)  # only the input gradient is measured; weight gradients cost most of the time


def _probe_graph(model: nn.Module, names: list[str]) -> fx.GraphModule:
    """The probe traced with functional ReLUs removed, F.max_pool2d made an average, returning `names`' outputs."""
    gm = fx.symbolic_trace(_probe(model))
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target in (F.relu, torch.relu, "relu"):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target is F.max_pool2d:
            node.target = F.avg_pool2d
            node.kwargs = {k: v for k, v in node.kwargs.items() if k in ("stride", "padding", "ceil_mode")}
    found = {(n.target if n.op == "call_module" else n.name): n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (tuple(found[name] for name in names),)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _field(row, axis: int, unit: int) -> tuple[float, float]:
    centre = row.start_out[axis] + unit * row.j_out[axis]
    return centre - (row.r_out[axis] - 1) / 2, centre + (row.r_out[axis] - 1) / 2


def _probe_units(row, size: int) -> list[tuple[int, int]]:
    """Units whose field fits in the image (first, middle, last), or else the centre unit.

    A field that crosses the border is compared clipped to the image only at the centre: near a border
    the padding of the layers in between can hide a few more pixels (a 3x3 stride-2 unpadded conv
    never reads the last column of a 32-wide image).
    """
    per_axis = []
    for axis in (0, 1):
        inside = [u for u in range(row.n_out[axis])
                  if _field(row, axis, u)[0] >= 0 and _field(row, axis, u)[1] <= size - 1]
        per_axis.append(sorted({inside[0], inside[len(inside) // 2], inside[-1]}) if inside
                        else [(row.n_out[axis] - 1) // 2])
    hs, ws = per_axis
    return [(hs[min(i, len(hs) - 1)], ws[min(i, len(ws) - 1)]) for i in range(max(len(hs), len(ws)))]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("net", NETS)
def test_receptive_field_matches_the_gradient(net):
    model = NETS[net]()
    size = 32
    table = layer_table(model, (3, size, size))
    rows = [r for r in table.rows if r.n_out is not None and r.name != "input"]
    assert rows[-1] == table.last_spatial()
    probes = [(i, unit) for i, row in enumerate(rows) for unit in _probe_units(row, size)]
    # One image per probed unit, so that a single backward pass gives every unit its own input gradient
    # (the probe is in eval mode with identity norms: images in a batch do not interact).
    x = torch.randn(len(probes), 3, size, size, dtype=torch.float64, requires_grad=True)
    outputs = _probe_graph(model, [r.name for r in rows])(x)
    assert [tuple(o.shape[-2:]) for o in outputs] == [r.n_out for r in rows]
    # One position, all channels: after a concatenation each channel sees only its own branch.
    torch.stack([outputs[i][b, :, u[0], u[1]].sum() for b, (i, u) in enumerate(probes)]).sum().backward()
    for b, (i, unit) in enumerate(probes):
        row, seen = rows[i], x.grad[b].abs().sum(0) > 0  # (H, W): input pixels this unit depends on
        for axis in (0, 1):
            hits = seen.any(dim=1 - axis).nonzero().flatten()
            lo, hi = _field(row, axis, unit[axis])
            assert (hits.min().item(), hits.max().item()) == (max(lo, 0), min(hi, size - 1)), (row.name, unit)


def test_global_pool_covers_the_whole_map_and_functional_pools_are_rows():
    rows = {r.name: r for r in layer_table(FunctionalPool()).rows}
    pool = rows["max_pool2d"]
    assert (pool.kernel, pool.stride, pool.padding) == ((3, 3), (2, 2), (1, 1))
    assert rows["avg_pool2d"].n_out == (7, 7)
    assert rows["mean"].kernel == rows["mean"].n_in == (7, 7) and rows["mean"].n_out == (1, 1)


def test_merge_takes_the_largest_branch_field():
    rows = {r.name: r for r in layer_table(Concat()).rows}
    assert rows["cat"].r_out == max(rows[b].r_out for b in ("b1", "b3", "b5")) == (11, 11)
    assert rows["cat"].j_out == (2, 2) and rows["cat"].out_shape == (12, 15, 15)


# ---- totals ----

@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list_models())
def test_parameter_totals_equal_numel_sums(name, norm):
    model = create_model(name, norm=norm)
    model.get_submodule(next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))).requires_grad_(False)
    table = layer_table(model)
    assert table.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert table.non_trainable_params == sum(p.numel() for p in model.parameters() if not p.requires_grad) > 0
    assert sum(r.params for r in table.rows) == sum(p.numel() for p in model.parameters())


def test_layer_norm_is_shown_as_layer_norm_and_group_norm_as_group_norm():
    kinds = {norm: {r.type for r in layer_table(create_model("s8-net", norm=norm)).rows} for norm in ("gn", "ln")}
    assert "LayerNorm2d" in kinds["ln"] and "GroupNorm" not in kinds["ln"]
    assert "GroupNorm" in kinds["gn"] and "LayerNorm2d" not in kinds["gn"]
    # A norm row, not the functional group_norm call inside it, and it keeps the field (pointwise rule).
    rows = {r.label: r for r in layer_table(create_model("s8-net", norm="ln")).rows}
    assert rows["C1.2"].type == "LayerNorm2d" and rows["C1.2"].r_out == rows["C1"].r_out == (3, 3)
    assert rows["C1.2"].params == 2 * 16


def test_subclass_of_a_known_layer_is_one_row_unless_it_overrides_forward():
    class MyConv(nn.Conv2d):  # a user's subclass that only changes __init__
        def __init__(self, c_in, c_out):
            super().__init__(c_in, c_out, 3, padding=1, bias=False)

    class ScaledConv(nn.Conv2d):  # overrides forward: traced into, so its real work is shown
        def forward(self, x):
            return F.conv2d(x, self.weight * 2, None, self.stride, self.padding)

    rows = layer_table(nn.Sequential(MyConv(3, 4), ScaledConv(4, 4, 3))).rows
    assert (rows[1].name, rows[1].type, rows[1].kernel, rows[1].params) == ("0", "MyConv", (3, 3), 108)
    assert "ScaledConv" not in {r.type for r in rows}
    assert [r.kernel for r in rows if r.type == "conv2d"] == [(3, 3)]


def test_unused_parameters_get_their_own_row():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(3, 4, 3), nn.Linear(5, 5)

        def forward(self, x):
            return self.used(x)

    table = layer_table(Unused())
    assert table.rows[-1].name == "(unused)" and table.rows[-1].params == 30
    assert sum(r.params for r in table.rows) == table.trainable_params == 142


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,groups", [
    (3, 16, 3, 1, 0, 1, 1), (16, 32, 5, 2, 2, 1, 1), (8, 8, 3, 1, 2, 2, 1), (8, 16, 3, 1, 1, 1, 4),
    (12, 12, 3, 2, 1, 1, 12), (16, 8, 1, 1, 0, 1, 1)])
def test_conv_macs(c_in, c_out, k, stride, padding, dilation, groups):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    row = layer_table(nn.Sequential(conv), (c_in, 20, 20)).rows[1]
    h, w = row.n_out
    assert row.macs == h * w * c_out * c_in // groups * k * k
    assert row.out_shape == (c_out, h, w) and row.params == count_params(conv)


def test_linear_macs_and_registry_conv_macs():
    table = layer_table(create_model("keras-cnn"))
    linears = [r for r in table.rows if r.type == "Linear"]
    assert [r.macs for r in linears] == [4096 * 512, 512 * 10]
    model = create_model("s8-net")
    for r in layer_table(model).rows:
        if r.type == "Conv2d":
            conv = model.get_submodule(r.name)
            c_out, h, w = r.out_shape
            assert r.macs == h * w * c_out * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


def test_layer_table_leaves_mode_and_weights_alone():
    model = create_model("s8-net", norm="bn").train()
    model.C2.eval()
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    layer_table(model)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- layers it must refuse ----

class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)  # (B, tokens, 8)
        return self.attn(t, t, t)[0]


class Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.up = nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up(self.conv(x))


class JumpMismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fine, self.coarse = nn.Conv2d(3, 4, 17), nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):  # both 16x16, jumps 1 and 2
        return self.fine(x) + self.coarse(x)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):  # squeeze-excitation style: a 1x1 gate broadcast over the map
        x = self.conv(x)
        return x * torch.sigmoid(F.adaptive_avg_pool2d(x, 1))


class UnevenPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(4)

    def forward(self, x):  # 30 -> 4: windows of 7 and 8
        return self.pool(self.conv(x))


class Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.a(x)
        return self.b(y.flatten(2).view(y.shape))


@pytest.mark.parametrize("net,layer,kind,words", [
    (Attention, "attn", "MultiheadAttention", "no rule"),
    (Upsampled, "up", "Upsample", "no rule"),
    (JumpMismatch, "add", "add", "different jumps"),
    (Gate, "mul", "mul", "broadcast"),
    (UnevenPool, "pool", "AdaptiveAvgPool2d", "uneven windows"),
    (Reshaped, "b", "Conv2d", "lost the (C, H, W) layout"),
])
def test_unsupported_layer_is_an_error_naming_it(net, layer, kind, words):
    with pytest.raises(UnsupportedLayerError, match=re.escape(words)) as info:
        layer_table(net())
    assert str(info.value).startswith(f"cannot analyse layer '{layer}' ({kind})")
    assert (info.value.layer, info.value.kind, info.value.exit_code) == (layer, kind, 2)


def test_untraceable_model_and_wrong_input_are_errors():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(AnalysisError, match="cannot trace Branchy"):
        layer_table(Branchy())
    with pytest.raises(AnalysisError, match="does not run on input 1x32x32"):
        layer_table(create_model("s8-net"), (1, 32, 32))
    with pytest.raises(AnalysisError, match=r"\(C, H, W\)"):
        layer_table(create_model("s8-net"), (32, 32))


# ---- formats ----

@pytest.fixture(scope="module")
def s8_table() -> LayerTable:
    return layer_table(create_model("s8-net"))


def test_text_format_aligns_columns(s8_table):
    text = format_table(s8_table, "table")
    lines = text.split("\n\n")[0].splitlines()
    assert len(lines) == len(s8_table.rows) + 2
    # Columns are the spans of the dash rule under the header; outside them there are only spaces.
    rule = lines[1]
    spans, start = [], 0
    for part in rule.split("  "):
        spans.append((start, start + len(part)))
        start += len(part) + 2
    width = spans[-1][1]
    for line in lines:
        padded = line.ljust(width)
        assert all(padded[b:c].strip() == "" for (_, b), (c, _) in zip(spans, spans[1:])), line
    cells = {line[:spans[0][1]].strip(): [line.ljust(width)[a:b].strip() for a, b in spans] for line in lines}
    assert cells["layer"][:12] == ["layer", "type", "k", "s", "p", "d",
                                   "N_in", "N_out", "J_in", "J_out", "R_in", "R_out"]
    assert cells["C2"][:12] == ["C2", "Conv2d", "3", "1", "0", "1", "30", "28", "1", "1", "3", "5"]
    assert cells["C2"][13:] == ["4,608", "3,612,672"]
    assert f"{s8_table.trainable_params:,} trainable" in text


def test_markdown_format(s8_table):
    lines = format_table(s8_table, "markdown").splitlines()
    assert lines[0] == ("| layer | type | k | s | p | d | N_in | N_out | J_in | J_out | R_in | R_out | output | params "
                        "| MACs |")
    assert set(lines[1].replace("-", "").replace(":", "")) == {"|"}
    body = lines[2:2 + len(s8_table.rows)]
    assert all(line.startswith("| ") and line.count("|") == 16 for line in body)
    assert "| GAP | AdaptiveAvgPool2d | 7 | 7 | 0 | 1 | 7 | 1 | 4 | 28 | 44 | 68 | 32x1x1 | 0 | 0 |" in body
    assert lines[2 + len(s8_table.rows)] == "" and lines[-1].startswith("- activations per image")


def test_csv_and_json_formats(s8_table):
    rows = list(csv.DictReader(io.StringIO(format_table(s8_table, "csv"))))
    assert [r["name"] for r in rows] == [r.name for r in s8_table.rows]
    assert sum(int(r["params"]) for r in rows) == s8_table.trainable_params
    assert rows[1]["label"] == "C1" and rows[1]["r_out"] == "3" and rows[1]["out_shape"] == "16x30x30"
    data = json.loads(format_table(s8_table, "json"))
    assert data["trainable_params"] == s8_table.trainable_params and data["macs"] == s8_table.macs
    assert data["rows"][1]["r_out"] == [3, 3] and len(data["rows"]) == len(s8_table.rows)


def test_unknown_format_and_format_lists(s8_table):
    with pytest.raises(ConfigError, match="unknown format 'html'"):
        format_table(s8_table, "html")
    assert CLI_FORMATS == FORMATS


# ---- command line ----

def test_cli_prints_the_table(capsys):
    assert main(["inspect", "s8-net"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:2] == ["layer", "type"] and "R_out" in header
    assert any(line.split()[:3] == ["GAP", "AdaptiveAvgPool2d", "7"] for line in out.splitlines())
    assert f"{count_params(create_model('s8-net')):,} trainable" in out


def test_cli_markdown_with_model_options(capsys):
    assert main(["inspect", "s8-net", "--norm", "gn", "-O", "skips=true", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| layer | type |")
    assert any(line.startswith("| add | add |") for line in lines)
    assert any(line.startswith("| C1.2 | GroupNorm |") for line in lines)


def test_cli_over_budget_exits_1(capsys):
    assert main(["inspect", "s8-net", "--max-params", "1000"]) == 1
    captured = capsys.readouterr()
    n = count_params(create_model("s8-net"))
    assert captured.err == (f"cifarlab inspect: error: s8-net has {n:,} trainable parameters, "
                            f"{n - 1000:,} over the budget of 1,000\n")
    assert captured.out.startswith("layer")  # the table still shows where the parameters are
    assert main(["inspect", "s8-net", "--max-params", "50000"]) == 0


@pytest.mark.parametrize("value", ["3x32", "3x32x0", "axbxc", "3*32*32"])
def test_cli_bad_input_shape_exits_2(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["inspect", "s8-net", "--input", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input" in err and value in err


@pytest.mark.parametrize("argv,words", [
    (["inspect", "no-such-net"], "unknown model 'no-such-net'"),
    (["inspect", "keras-cnn", "--input", "3x64x64"], "does not run on input 3x64x64"),
    (["inspect", "s8-net", "-O", "colour=red"], "has no option 'colour'"),
])
def test_cli_user_errors_exit_2(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifarlab inspect: error: ") and words in err and err.count("\n") == 1


def test_cli_other_input_size(capsys):
    assert main(["inspect", "budget-net", "--input", "3x64x64", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 64, 64] and data["rows"][0]["n_out"] == [64, 64]
