"""Behaviour of the networks on tiny CPU configurations."""

import os

import pytest
import torch

from nowcast import models
from nowcast.models import build, paper_loss, scheduled_sampling_ratio

TINY = ["tau-tiny", "stlight-tiny", "mslstm-tiny"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tests run two xdist workers on two cores: one torch thread each avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def moving_blobs(n: int = 2, t: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Radar-like frames ``[n, t, 1, size, size]``: two Gaussian blobs per sample in uniform motion."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    frames = torch.zeros(n, t, 1, size, size)
    for i in range(n):
        for _ in range(2):
            start = size * (0.2 + 0.6 * torch.rand(2, generator=g))
            velocity = 3.0 * (torch.rand(2, generator=g) - 0.5)
            width = 2.0 + 2.0 * torch.rand((), generator=g)
            peak = 0.5 + 0.5 * torch.rand((), generator=g)
            for k in range(t):
                cy, cx = start + velocity * k
                frames[i, k, 0] += peak * torch.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
    return frames


def tiny(name: str, t_in: int = 4, t_out: int = 4, seed: int = 0) -> models.SequenceModel:
    torch.manual_seed(seed)
    return build(name, t_in=t_in, t_out=t_out)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("t_out", [1, 3, 4, 6, 9])
def test_output_shape_for_any_horizon(name, t_out):
    model = tiny(name).eval()
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.no_grad():
        y = model(x, t_out)
    assert y.shape == (2, t_out, 1, 32, 32)
    assert model(x).shape[1] == model.t_out


@pytest.mark.parametrize("name", TINY)
def test_longer_horizon_extends_the_shorter_one(name):
    model = tiny(name, t_in=4, t_out=3).eval()
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.no_grad():
        short, long = model(x, 2), model(x, 8)
    torch.testing.assert_close(long[:, :2], short)


def test_direct_rollout_feeds_back_the_last_t_in_frames():
    model = tiny("stlight-tiny", t_in=4, t_out=3).eval()
    x = torch.rand(1, 4, 1, 32, 32)
    with torch.no_grad():
        y = model(x, 7)
        first = model.predict_block(x)
        second = model.predict_block(torch.cat([x, first], 1)[:, -4:])
        third = model.predict_block(torch.cat([first, second], 1)[:, -4:])
    torch.testing.assert_close(y, torch.cat([first, second, third], 1)[:, :7])


def test_tau_block_has_t_in_frames_and_is_truncated():
    model = tiny("tau-tiny", t_in=4, t_out=2).eval()
    x = torch.rand(1, 4, 1, 32, 32)
    with torch.no_grad():
        block = model.predict_block(x)
        assert block.shape[1] == 4
        torch.testing.assert_close(model(x), block[:, :2])


def test_mslstm_teacher_forcing_equals_observing_the_truth():
    """With sampling ratio 1 the output phase sees true frames: like a longer input."""
    model = tiny("mslstm-tiny").eval()
    seq = moving_blobs(n=2, t=8)
    x, target = seq[:, :4], seq[:, 4:]
    with torch.no_grad():
        forced = model(x, 4, target=target, sampling_ratio=1.0)
        for k in range(4):
            observed = model(seq[:, :4 + k], 1)
            torch.testing.assert_close(forced[:, k], observed[:, 0])
        free = model(x, 4)
        assert torch.equal(model(x, 4, target=target, sampling_ratio=0.0), free)
        assert not torch.allclose(forced[:, 1:], free[:, 1:])
        mixed = model(x, 4, target=target, sampling_ratio=torch.tensor(0.5))
    assert mixed.shape == forced.shape


def test_mslstm_input_phase_outputs_are_one_step_predictions():
    model = tiny("mslstm-tiny").eval()
    seq = moving_blobs(n=2, t=8)
    x, target = seq[:, :4], seq[:, 4:]
    with torch.no_grad():
        every = model(x, 4, input_phase=True)
        assert every.shape == (2, 3 + 4, 1, 32, 32)
        torch.testing.assert_close(every[:, 3:], model(x, 4))
        for k in range(1, 4):  # output k - 1 predicts frame k from frames 0..k-1
            torch.testing.assert_close(every[:, k - 1], model(x[:, :k], 1)[:, 0])
        forced = model(x, 4, target=target, sampling_ratio=1.0, input_phase=True)
    torch.testing.assert_close(forced[:, :3], every[:, :3])


def test_mslstm_accepts_any_input_length():
    model = tiny("mslstm-tiny").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 6, 1, 16, 16), 2).shape == (1, 2, 1, 16, 16)
    with pytest.raises(ValueError):
        model(torch.rand(1, 4, 1, 18, 18))


@pytest.mark.parametrize("name", ["tau-tiny", "stlight-tiny"])
def test_direct_models_check_their_input(name):
    model = tiny(name)
    with pytest.raises(ValueError):
        model(torch.rand(1, 5, 1, 32, 32))
    with pytest.raises(ValueError):
        model(torch.rand(1, 4, 2, 32, 32))
    with pytest.raises(ValueError):
        model(torch.rand(1, 4, 1, 30, 30))


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_size_multiple_is_the_presets_own_down_sampling(name):
    with torch.device("meta"):
        model = build(name)
    preset = models.PRESETS[name]
    assert model.size_multiple <= 4
    assert preset.height % model.size_multiple == 0 and preset.width % model.size_multiple == 0


@pytest.mark.parametrize("name", TINY)
def test_run_padded_edge_pads_to_the_multiple_and_crops(name):
    model = tiny(name).eval()
    x, target = torch.rand(1, 4, 1, 14, 10), torch.rand(1, 4, 1, 14, 10)
    padded = models.pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (16, 12)
    torch.testing.assert_close(padded[..., 14:, :10], x[..., 13:, :].expand(-1, -1, -1, 2, -1))
    torch.testing.assert_close(padded[..., :14, 10:], x[..., :, 9:].expand(-1, -1, -1, -1, 2))
    assert models.pad_to_multiple(padded, 4) is padded
    with torch.no_grad():
        torch.testing.assert_close(models.run_padded(model, x, 4, 3), model(padded, 3)[..., :14, :10])
        forced = models.run_padded(model, x, 4, target=target, sampling_ratio=1.0)
    assert forced.shape == (1, 4, 1, 14, 10)


def test_stlight_init_is_fan_out_on_encoder_and_mixers_default_on_readout():
    torch.manual_seed(0)
    model = build("stlight-tiny", dim=256)
    mixer = model.mixers[0]
    for conv in (mixer.spatial[0], mixer.spatial[1], mixer.channel[0], model.encoder[0]):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]  # torch's, groups ignored
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    readout = model.readout.weight  # PyTorch default: uniform within 1 / sqrt(fan_in)
    assert readout.abs().max().item() <= readout.shape[1] ** -0.5


def test_tau_attention_keeps_the_default_init_mlp_is_fan_out():
    torch.manual_seed(0)
    block = models.TAUBlock(64, 64, mlp_ratio=4.0, drop_path=0.0)
    for conv in (block.mlp.fc1, block.mlp.dw, block.mlp.fc2):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    attention = [m for m in block.attn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(attention) == 7
    for layer in attention:  # kaiming_uniform_(a=sqrt(5)): uniform within 1 / sqrt(fan_in)
        fan_in = layer.weight[0].numel()
        assert layer.weight.abs().max().item() <= fan_in ** -0.5
        assert layer.weight.abs().max().item() > 0.9 * fan_in ** -0.5


def test_scheduled_sampling_ratio_is_linear():
    assert scheduled_sampling_ratio(0, 100) == 1.0
    assert scheduled_sampling_ratio(25, 100) == 0.75
    assert scheduled_sampling_ratio(100, 100) == 0.0
    assert scheduled_sampling_ratio(150, 100) == 0.0
    assert scheduled_sampling_ratio(3, 0) == 0.0


def test_differential_divergence():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 4, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    ddr = models.differential_divergence(pred, target, tau=0.1)
    p = torch.softmax((pred[:, 1:] - pred[:, :-1]).reshape(2, 3, -1) / 0.1, -1)
    q = torch.softmax((target[:, 1:] - target[:, :-1]).reshape(2, 3, -1) / 0.1, -1)
    torch.testing.assert_close(ddr, (p * (p / q).log()).mean())
    assert ddr > 0
    assert models.differential_divergence(pred, pred) == pytest.approx(0.0, abs=1e-7)
    assert models.differential_divergence(pred[:, :1], target[:, :1]) == 0.0
    assert models.differential_divergence(pred[:, :2], target[:, :2]) == 0.0  # OpenSTL: 0 for T <= 2
    torch.testing.assert_close(models.tau_loss(pred, target),
                               ((pred - target) ** 2).mean() + 0.1 * ddr)


def test_per_frame_l1_l2_sums_over_pixels():
    pred, target = torch.zeros(2, 3, 1, 4, 4), torch.full((2, 3, 1, 4, 4), 0.5)
    assert models.l1_l2_per_frame(pred, target) == pytest.approx(16 * 0.5 + 16 * 0.25)


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name)
    seq = moving_blobs()
    paper_loss(model)(model(seq[:, :4], target=seq[:, 4:], sampling_ratio=0.5),
                      seq[:, 4:]).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_output(name):
    x = torch.rand(2, 4, 1, 32, 32)
    outputs = []
    for _ in range(2):
        model = tiny(name, seed=7)
        torch.manual_seed(3)
        outputs.append(model(x, target=torch.rand(2, 4, 1, 32, 32), sampling_ratio=0.5))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", TINY)
def test_bf16_autocast_and_channels_last(name):
    model = tiny(name).eval()
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        model.to(memory_format=torch.channels_last)
        last = model(x)
    assert torch.isfinite(low.float()).all()
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.1)
    torch.testing.assert_close(last, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_traces_as_one_graph(name):
    """fullgraph=True fails on graph breaks, i.e. on host syncs or branches on tensor values."""
    model = tiny(name, t_in=2, t_out=2).eval()
    x = torch.rand(1, 2, 1, 16, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, 3), model(x, 3))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NOWCAST_SLOW") != "1",
                    reason="inductor needs minutes on a 2-core CPU; set NOWCAST_SLOW=1")
def test_inductor_compile_matches_eager():
    model = tiny("stlight-tiny").eval()
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,size,overrides", [
    ("tau-tiny", 32, {}),
    ("stlight-tiny", 32, {}),
    ("mslstm-tiny", 16, {"hidden": 4}),  # 7 recurrent steps x 6 cells: kept small for CPU
])
def test_overfits_a_fixed_batch(name, size, overrides):
    """200 Adam steps on two blob sequences cut the paper loss at least tenfold."""
    torch.manual_seed(0)
    model = build(name, t_in=4, t_out=4, **overrides)
    seq = moving_blobs(size=size)
    x, target = seq[:, :4], seq[:, 4:]
    loss_fn = paper_loss(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        optimiser.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())
    assert losses[-1] < losses[0] / 10


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
def test_gpu_amp_channels_last_without_host_sync(name):
    model = tiny(name).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(2, 4, 1, 32, 32, device="cuda")
    target = torch.rand(2, 4, 1, 32, 32, device="cuda")
    model(x, target=target, sampling_ratio=0.5)  # warm-up: lazy init may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x, target=target, sampling_ratio=0.5)
        loss = paper_loss(model)(y, target)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
def test_gpu_compile_matches_eager(name):
    model = tiny(name).cuda().eval()
    x = torch.rand(2, 4, 1, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-2, rtol=1e-2)  # TF32
