"""The Triton runner against the bundled tritonserver on loopback: what it reads from the server,
the chain through the served stage models equal to the in-process ONNX Runtime chain over HTTP
and gRPC, requests in flight, and one-line errors for refused requests, bad URLs and absent
servers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.runners import OnnxRuntimeRunner, RunnerUnavailable, TritonRunner
from rsd_deploy.export.runners.triton_runner import ServerRequestError, parse_server_url
from rsd_deploy.export.triton_server import free_port

TIMEOUT_S = 120


def url(served, protocol: str) -> str:
    return f"{protocol}://{getattr(served, protocol)}"


@pytest.fixture(scope="module")
def local(stage_files):
    """The in-process reference: the same graphs in ONNX Runtime."""
    return OnnxRuntimeRunner(stage_files, "fp32")


def chain_inputs(batch: int, height: int, width: int, seed: int):
    """LR images (any size) and the noise at their padded size, as rsd-upscale makes them."""
    generator = torch.Generator().manual_seed(seed)
    lr = torch.rand(batch, 3, height, width, generator=generator)
    padded = chain.padded_size(height), chain.padded_size(width)
    eps = torch.randn(batch, 48, *padded, generator=generator)
    noise_map = torch.randn(batch, 1, *padded, generator=generator)
    return lr, eps, noise_map


def test_everything_the_client_needs_comes_from_the_server(served, demo, serve_range):
    with TritonRunner(url(served, "grpc")) as runner:
        assert runner.stages == chain.STAGE_NAMES and runner.name == "triton" and runner.precision == "fp32"
        assert (runner.scale, runner.latent_channels, runner.noise_channels) == (demo.codec.scale, demo.codec.latent_channels, 1)
        assert runner.prior_scale == pytest.approx(demo.schedule.prior_scale, rel=1e-12)
        assert runner.shape_range == serve_range
        assert "rsd_encoder" in runner.notes and runner.device == torch.device("cpu")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_served_chain_is_the_in_process_chain(served, local, demo, protocol):
    lr, eps, noise_map = chain_inputs(2, 50, 70, seed=1)  # padded to 64 x 128: the padding and the crop back are exercised
    with TritonRunner(url(served, protocol)) as runner:
        hr = chain.upscale(runner.stage_fn(), lr, eps, noise_map, runner.prior_scale, runner.scale)
    reference = chain.upscale(local.stage_fn(), lr, eps, noise_map, demo.schedule.prior_scale, demo.codec.scale)
    assert hr.shape == (2, 3, 200, 280)
    torch.testing.assert_close(hr, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_several_requests_in_flight(served, local, demo, protocol):
    tiles = [chain_inputs(1, 64, 64, seed=10 + i) for i in range(6)]
    lq = [chain.to_model_range(lr) for lr, _, _ in tiles]
    with TritonRunner(url(served, protocol), max_in_flight=3) as runner:
        # one stage, submitted: futures of its outputs, at most 3 on the wire
        futures = [runner.submit("encoder", {"lq_up": chain.upsample(x, 4)}) for x in lq]
        for x, future in zip(lq, futures):
            torch.testing.assert_close(future.result(timeout=TIMEOUT_S)["z_y"], local.run("encoder", {"lq_up": chain.upsample(x, 4)})["z_y"],
                                       rtol=0, atol=1e-6)
        # whole chains side by side, as the tiled upscaler runs tile batches
        with ThreadPoolExecutor(runner.max_in_flight) as pool:
            pending = [pool.submit(chain.run, runner.stage_fn(), x, eps, noise_map, runner.prior_scale, runner.scale)
                       for x, (_, eps, noise_map) in zip(lq, tiles)]
            served_hr = [job.result(timeout=TIMEOUT_S)["hr"] for job in pending]
    for x, (_, eps, noise_map), hr in zip(lq, tiles, served_hr):
        reference = chain.run(local.stage_fn(), x, eps, noise_map, demo.schedule.prior_scale, demo.codec.scale)["hr"]
        torch.testing.assert_close(hr, reference, rtol=0, atol=1e-6)


def test_a_refused_request_is_one_line_and_the_runner_goes_on(served):
    with TritonRunner(url(served, "http")) as runner:
        too_large = torch.zeros(1, 3, 4 * 192, 4 * 192)  # LR 192 > the 128 the graphs were exported for
        with pytest.raises(ServerRequestError) as caught:
            runner.run("encoder", {"lq_up": too_large})
        message = str(caught.value)
        assert message.startswith(f"rsd_encoder at {runner.url}: 400: ") and "outside the exported" in message and "\n" not in message
        assert runner.run("encoder", {"lq_up": torch.zeros(1, 3, 256, 256)})["z_y"].shape == (1, 48, 64, 64)


def test_bad_urls_absent_servers_and_missing_models(served):
    for bad in ("localhost:8001", "grpc://host", "https://host:8000", "grpc://host:0", "http://host:8000/v2"):
        with pytest.raises(ValueError, match="expected http://HOST:PORT or grpc://HOST:PORT"):
            parse_server_url(bad)
    assert parse_server_url("grpc://[::1]:8001") == ("grpc", "[::1]:8001")
    with pytest.raises(RunnerUnavailable, match="no Triton server answers"):
        TritonRunner(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RunnerUnavailable, match="model x4_encoder is not ready there"):
        TritonRunner(url(served, "grpc"), prefix="x4")
