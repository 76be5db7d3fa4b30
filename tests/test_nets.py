"""The papers' networks: shapes, gradients, overfitting, export, paper-size structure, registry and CLI."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from kitseg.cli.main import main
from kitseg.errors import KitsegError
from kitseg.nets import (
    NETWORKS,
    build_network,
    check_input_size,
    pool_kernels,
    pool_plan,
    required_divisor,
    size_divisor,
)
from kitseg.nets.blocks import AttentionGate, ConvNormAct, HDCBlock, PreActResBlock, ResBlock, SEBlock
from kitseg.nets.receptive import count_parameters, linearized, receptive_field
from kitseg.nets.unet import UNet

NAMES = list(NETWORKS)


def tiny(name: str) -> nn.Module:
    info = NETWORKS[name]
    torch.manual_seed(0)
    return build_network(name, info.paper_in_channels, info.paper_out_channels, **info.tiny_params)


def net_input(name: str, net: nn.Module, multiples: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Input of size divisor * multiples per axis (with the 2.5D nets' context slices as channels)."""
    info = NETWORKS[name]
    size = tuple(d * m for d, m in zip(required_divisor(net), multiples))
    channels = info.paper_in_channels * getattr(net, "context_slices", 1)
    return torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(seed))


def outputs(y: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


# --- pooling plans -------------------------------------------------------------------------------

def test_pool_plan_follows_the_papers_examples():
    assert pool_plan((80, 160, 160)) == (4, 5, 5)  # Zhang et al. section 2.1
    assert pool_plan((40, 128, 128)) == (3, 5, 5)  # Zhang et al. section 2.2
    assert pool_plan((7, 64, 9)) == (0, 4, 1)
    assert pool_plan((512, 512), max_levels=3) == (3, 3)
    assert size_divisor((4, 5, 5)) == (16, 32, 32)


def test_pool_kernels_early_and_late_orders():
    assert pool_kernels((4, 5, 5)) == [(2, 2, 2)] * 4 + [(1, 2, 2)]
    assert pool_kernels((3, 5, 5), "late") == [(1, 2, 2)] * 2 + [(2, 2, 2)] * 3
    with pytest.raises(KitsegError, match="order"):
        pool_kernels((1, 1), "middle")


# --- registry and errors ------------------------------------------------------------------------

def test_registry_holds_every_network_a_recipe_names():
    """Open-ended: a new network is one file plus one registry line; every registered one is built, run
    and exported by the parametrized tests below (build -> forward shape -> gradients -> TorchScript)."""
    from kitseg.recipes import list_recipes, load_recipe

    named = {s.network.name for r in list_recipes() for s in load_recipe(r).stages}
    assert named <= set(NETWORKS), f"recipes name unregistered networks {sorted(named - set(NETWORKS))}"
    for name, info in NETWORKS.items():
        assert info.dims in (2, 3) and info.activation in ("softmax", "sigmoid"), name
    assert {NETWORKS[n].activation for n in ("tunet_lnet", "tunet_wnet", "tunet_tnet")} == {"sigmoid"}
    assert NETWORKS["resunet_ds_zhang"].paper_in_channels == 2  # CT + stage-1 kidney mask (spatial prior)
    assert NETWORKS["tunet_tnet"].paper_in_channels == 2  # CT + W-Net probability


def test_build_network_names_the_bad_network_or_parameter():
    with pytest.raises(KitsegError, match="unknown network 'unet4d'"):
        build_network("unet4d", 1, 2)
    with pytest.raises(KitsegError, match="'tunet_wnet' has no parameter 'squeeze'"):
        build_network("tunet_wnet", 1, 1, squeeze=True)
    with pytest.raises(KitsegError, match="unet3d_zhang.*pool_counts"):
        build_network("unet3d_zhang", 1, 2, pool_counts=(1, 2))
    with pytest.raises(KitsegError, match="vnet25d_ms"):
        build_network("vnet25d_ms", 1, 2, context_slices=4)
    with pytest.raises(KitsegError, match="in_channels"):
        build_network("unet2d", 0, 2)
    with pytest.raises(KitsegError, match="unet2d.*context_slices"):
        build_network("unet2d", 2, 3, context_slices=2)


def test_unet2d_with_context_slices_reads_neighbours_as_channels():
    """2.5D unet2d: 3 slices x 2 inputs = 6 channels in, the centre slice's 3 classes out; the first convolution
    sees every channel (a neighbour slice changes the output)."""
    net = build_network("unet2d", 2, 3, base_features=4, n_levels=3, context_slices=3).eval()
    assert net.context_slices == 3
    x = torch.randn(1, 6, 32, 32)
    with torch.no_grad():
        y = net(x)
        x2 = x.clone()
        x2[:, 4:] += 1.0  # the last neighbour slice only
        assert y.shape == (1, 3, 32, 32) and not torch.allclose(net(x2), y)


def test_check_input_size_explains_the_divisor():
    net = tiny("unet3d_zhang")
    check_input_size(net, (4, 24, 40))
    with pytest.raises(KitsegError, match=r"divisible by \(4, 8, 8\)"):
        check_input_size(net, (5, 24, 40))


# --- behaviour of every network (tiny configurations) ------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_output_shape_equals_input_shape_on_odd_anisotropic_sizes(name):
    net = tiny(name)
    info = NETWORKS[name]
    assert net.dims == info.dims and isinstance(net.deep_supervision, bool)
    x = net_input(name, net, (1, 3, 5) if info.dims == 3 else (3, 5))
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, info.paper_out_channels, *x.shape[2:])
    net.train()
    ys = outputs(net(x))
    assert len(ys) == len(net.ds_scales) == (len(ys) if net.deep_supervision else 1)
    for out, scale in zip(ys, net.ds_scales):  # deep-supervision heads: input size / their documented scale
        assert out.shape == (1, info.paper_out_channels, *(s // f for s, f in zip(x.shape[2:], scale)))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    net = tiny(name).train()
    x = net_input(name, net, (2,) * NETWORKS[name].dims)
    loss = sum(o.square().mean() for o in outputs(net(x)))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def _synthetic_patch(dims: int, size: int, two_channels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A kidney-like ball with a tumor-like ball inside; intensities overlap through noise."""
    g = torch.Generator().manual_seed(1)
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * dims, indexing="ij")
    r_kidney = sum((a - size * 0.45) ** 2 for a in axes).sqrt()
    r_tumor = sum((a - size * 0.6) ** 2 for a in axes).sqrt()
    label = (r_kidney < size * 0.3).long() + ((r_tumor < size * 0.15) & (r_kidney < size * 0.3)).long()
    image = label.float() + 0.3 * torch.randn(label.shape, generator=g)
    channels = [image, (label > 0).float()] if two_channels else [image]
    return torch.stack(channels)[None], label[None]


@pytest.mark.parametrize("name", NAMES)
def test_tiny_configuration_overfits_one_patch(name):
    info = NETWORKS[name]
    net = tiny(name).train()
    x, label = _synthetic_patch(info.dims, 16, info.paper_in_channels == 2)
    if info.dims == 2:
        x = x.repeat_interleave(getattr(net, "context_slices", 1), dim=1)  # 2.5D: neighbours = the same slice
    if info.activation == "sigmoid":  # one channel per region: TuNet's whole region {1, 2}
        target = (label > 0).float()[:, None]

        def loss_fn(logits):
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
    else:
        target = label.clamp(max=info.paper_out_channels - 1)

        def loss_fn(logits):
            return nn.functional.cross_entropy(logits, target)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn(outputs(net(x))[0])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break
    assert losses[-1] <= 0.1 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_export_gives_the_same_output(name):
    net = tiny(name).eval()
    multiples = (1, 1, 2) if NETWORKS[name].dims == 3 else (1, 2)
    with torch.no_grad():
        traced = torch.jit.trace(net, net_input(name, net, multiples))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        x2 = net_input(name, net, multiples, seed=5)
        torch.testing.assert_close(loaded(x2), net(x2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resunet_ds_zhang"])
def test_torch_export_gives_the_same_output(name):
    net = tiny(name).eval()
    x = net_input(name, net, (1, 1, 2) if NETWORKS[name].dims == 3 else (1, 2))
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(net, (x,)), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    x2 = net_input(name, net, (1, 1, 2) if NETWORKS[name].dims == 3 else (1, 2), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x2), net(x2), rtol=1e-4, atol=1e-5)


# --- the papers' text, at paper size ------------------------------------------------------------

def _paper(name: str) -> nn.Module:
    """The paper-size network on the meta device: its structure and parameter shapes, no memory."""
    info = NETWORKS[name]
    with torch.device("meta"):
        return build_network(name, info.paper_in_channels, info.paper_out_channels, **info.paper_params)


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def test_zhang_stage1_matches_section_2_1():
    net = _paper("unet3d_zhang")
    assert len(net.encoders) == 6 and net.size_divisor == (16, 32, 32)  # five pooled levels + bottleneck
    assert [p.kernel_size for p in net.pools] == [(2, 2, 2)] * 4 + [(1, 2, 2)]
    first = net.encoders[0][0][0]
    assert first.out_channels == 30 and first.kernel_size == (3, 3, 3)
    assert net.encoders[1][0][0].out_channels == 60  # doubling per level
    assert _count(net, nn.InstanceNorm3d) > 0 and _count(net, nn.LeakyReLU) > 0 and _count(net, nn.BatchNorm3d) == 0
    assert _count(net, nn.ConvTranspose3d) == 5


def test_zhang_stage2_matches_section_2_2():
    net = _paper("resunet_ds_zhang")
    assert net.stem.kernel_size == (1, 3, 3) and net.stem.in_channels == 2
    assert _count(net, nn.MaxPool3d) == 0  # strided convolutions downsample
    assert [d.stride for d in net.downs] == [(1, 2, 2)] * 2 + [(2, 2, 2)] * 3
    for block in net.decoders:  # first conv halves the features, 1x1x1 projection on the shortcut
        assert block.conv1.out_channels == block.conv1.in_channels // 2
        assert block.shortcut.kernel_size == (1, 1, 1)
    assert len(net.ds_heads) == len(net.decoders) - 1  # every decoder level below the finest
    assert all(s == (1, 1, 1) for s in net.ds_scales)  # upsampled to the original size
    with torch.device("meta"):
        ablation = build_network("resunet_ds_zhang", 1, 3, deep_supervision=False, residual=False)
    assert not ablation.deep_supervision and not any(b.residual for b in ablation.modules()
                                                     if isinstance(b, PreActResBlock))


def test_tunet_wnet_tnet_input_pyramid_and_se():
    net = _paper("tunet_tnet")
    assert net.encoders[0][0][0].in_channels == 2
    for i in range(1, len(net.encoders)):  # features of the level above + the downsampled input
        assert net.encoders[i][0][0].in_channels == net.encoders[i - 1][1][0].out_channels + 2
    assert _count(net, SEBlock) == 2 * len(net.encoders) - 1
    with torch.device("meta"):
        assert _count(build_network("tunet_wnet", 1, 1, se=False), SEBlock) == 0


def test_resunet3d_has_four_full_size_outputs():
    net = _paper("resunet3d_ds")
    assert len(net.encoders) == 4 and len(net.ds_heads) + 1 == 4 and net.ds_scales == [(1, 1, 1)] * 4


def test_vnet25d_has_multiscale_se_attention_and_hdc():
    net = _paper("vnet25d_ms")
    assert net.context_slices == 3 and net.input_stage.body[0][0].in_channels == 3
    assert _count(net, AttentionGate) == 4 and _count(net, SEBlock) == 4 and len(net.branches) == 4
    hdc = [m for m in net.modules() if isinstance(m, HDCBlock)]
    assert len(hdc) == 1 and [u[0].dilation for u in hdc[0].body] == [(2, 2), (3, 3), (5, 5)]


def test_fcn_ppm_has_13_residual_blocks_39_convs_and_two_poolings():
    """Section II.A.1: "13 residual blocks with a total of 39 convolutional layers in our network":
    counted over every convolution and deconvolution of the whole network as built."""
    net = _paper("fcn_ppm")
    assert len(net.residual_blocks) == 13 and all(isinstance(b, ResBlock) for b in net.residual_blocks)
    assert _count(net, nn.Conv3d) + _count(net, nn.ConvTranspose3d) == len(net.conv_layers) == 39
    assert _count(net, nn.MaxPool3d) == 2 and any(c.dilation == (2, 2, 2) for c in net.modules()
                                                  if isinstance(c, nn.Conv3d))
    assert net.ppm.kernels == (2, 4, 8, 16) and len(net.ppm.branches) == 4
    # the PPM's deconvolutions: one k^3 kernel per channel, not a full channels x channels one
    for k, branch in zip(net.ppm.kernels, net.ppm.branches):
        up = branch[-1]
        assert isinstance(up, nn.ConvTranspose3d) and up.groups == up.in_channels
        assert up.weight.numel() == up.in_channels * k**3
    assert count_parameters(net) < 8_000_000  # "we choose to limit the width"
    with torch.device("meta"):  # the other reading: 39 convs in the bottleneck bodies, 53 in the network
        other = build_network("fcn_ppm", 1, 3, base_features=16, block="bottleneck", ppm_upsample="full")
    assert len(other.residual_blocks) == 13 and len(other.conv_layers) == 53
    assert sum(isinstance(m, nn.Conv3d) for b in other.residual_blocks for m in b.body.modules()) == 39


def test_every_paper_size_configuration_builds():
    for name in NAMES:
        assert count_parameters(_paper(name)) > 50 * count_parameters(tiny(name))


# --- receptive field and CLI --------------------------------------------------------------------

def _brute_force_rf(net: nn.Module, levels: int) -> int:
    """Widest gradient support along x over every output position of one pooling period (2D U-Net)."""
    lin = linearized(net)
    period = 2 ** (levels - 1)
    x = torch.ones(1, 1, period, 512, dtype=torch.float64, requires_grad=True)
    widths = []
    for c in range(256, 256 + period):
        x.grad = None
        lin(x)[0, 0, period // 2, c].backward()
        nz = torch.nonzero(x.grad[0, 0].sum(0) > 0).flatten()
        widths.append(int(nz.max() - nz.min() + 1))
    return max(widths)


def test_receptive_field_matches_analytic_and_brute_force_values():
    seq = nn.Sequential(ConvNormAct(3, 1, 2, 3), ConvNormAct(3, 2, 2, 3, dilation=2), nn.MaxPool3d(2), SEBlock(3, 2),
                        ConvNormAct(3, 2, 1, (1, 3, 3)))
    seq.size_divisor = (2, 2, 2)
    # 3x3 conv: +2, dilated 3x3: +4, pool 2: +1, then a 3x3 conv at stride 2: +4 (only in y, x)
    assert receptive_field(seq, 1, start=32) == (1 + 2 + 4 + 1, 1 + 2 + 4 + 1 + 4, 1 + 2 + 4 + 1 + 4)
    # two-level U-Net by hand: 2 convs (+4), pool (+1), 2 convs at stride 2 (+8), 2 decoder convs (+4)
    assert receptive_field(UNet(2, 1, 1, 1, 1), 1, start=32) == (18, 18)
    # deeper: the support depends on the position within the pooling period; the widest is reported
    assert receptive_field(UNet(2, 1, 1, 1, 3), 1, start=32) == (_brute_force_rf(UNet(2, 1, 1, 1, 3), 4),) * 2
    assert receptive_field(tiny("pspnet2d"), 1, max_size=128) == (None, None)  # global 1x1 pooling bin


def test_cli_lists_networks_with_parameter_counts(capsys):
    assert main(["nets"]) == 0  # the fast table is the default: no receptive field
    out = capsys.readouterr().out
    assert "add --rf" in out
    for name in NAMES:
        assert name in out
    assert f"{count_parameters(_paper('resunet_ds_zhang')):,}" in out


def test_cli_receptive_field_and_markdown(capsys):
    assert main(["nets", "unet2d", "--markdown", "--rf"]) == 0
    out = capsys.readouterr().out
    rf = _brute_force_rf(UNet(2, 1, 1, 1, 4), 5)  # unet2d's paper depth: 5 levels
    assert out.startswith("| network |") and f"| {rf}x{rf} |" in out
    assert main(["nets", "unet5d"]) == 2
    assert "unknown network 'unet5d'" in capsys.readouterr().err
