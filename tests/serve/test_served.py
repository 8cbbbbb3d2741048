"""A real tritonserver on loopback serving the one-step pipeline (ONNX Runtime on the CPU inside
python-backend models), hit with tritonclient over HTTP and gRPC: same images as the in-process
pipeline, concurrent requests, bad requests refused with a clear error while serving goes on."""

from __future__ import annotations

import concurrent.futures
import contextlib

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rsd_deploy.export.serve import triton_server
from rsd_deploy.export.triton_repo import RepositoryPlan, write_triton_repository

MODEL = "rsd_sr"
TIMEOUT_S = 120  # per request: the tiny model answers in well under a second


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo, serve_range, stage_files):
    """The server for this module; always stopped at teardown, even when a test fails."""
    repository = tmp_path_factory.mktemp("served") / "models"
    write_triton_repository(repository, RepositoryPlan.from_pipeline(demo, serve_range), stage_files, backend="python")
    with triton_server(repository) as endpoints:
        yield endpoints


@pytest.fixture
def http(server):
    client = httpclient.InferenceServerClient(server.http, concurrency=4, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    yield client
    client.close()


@pytest.fixture
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


def photo(height: int, width: int, offset: int = 0) -> np.ndarray:
    import skimage.data

    image = skimage.data.astronaut()[::4, ::4]
    return np.ascontiguousarray(image[offset : offset + height, offset : offset + width])


def expected(pipe, image: np.ndarray, seed: int) -> np.ndarray:
    """What the in-process pipeline gives for one HWC uint8 image, as uint8."""
    lr = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    hr = pipe(lr, seed=seed)[0].permute(1, 2, 0).numpy()
    return np.rint(hr * 255).astype(np.uint8)


def request(module, images: np.ndarray, seeds: list[int], image_type: str = "UINT8"):
    inputs = [module.InferInput("IMAGE", list(images.shape), image_type), module.InferInput("SEED", [len(seeds), 1], "INT64")]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(np.array(seeds, np.int64).reshape(-1, 1))
    return inputs


def assert_close(served: np.ndarray, reference: np.ndarray) -> None:
    """Equal up to one 8-bit step (ONNX Runtime vs PyTorch float rounding)."""
    assert served.shape == reference.shape and served.dtype == np.uint8
    difference = np.abs(served.astype(np.int16) - reference.astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_http_matches_the_in_process_pipeline(http, demo):
    image = photo(50, 70)  # not a multiple of 64: padding and the crop back are exercised
    served = http.infer(MODEL, request(httpclient, image[None], [7]), timeout=TIMEOUT_S).as_numpy("HR_IMAGE")
    assert served.shape == (1, 200, 280, 3)
    assert_close(served[0], expected(demo, image, 7))


def test_grpc_batch_matches_per_image_pipeline_runs(grpc, demo):
    images = np.stack([photo(64, 96), photo(64, 96, offset=20)])
    result = grpc.infer(MODEL, request(grpcclient, images, [3, 5]), client_timeout=TIMEOUT_S)
    served = result.as_numpy("HR_IMAGE")
    assert served.shape == (2, 256, 384, 3)
    for index, seed in enumerate([3, 5]):
        assert_close(served[index], expected(demo, images[index], seed))
    # the seed decides the noise: another seed gives another image
    other = grpc.infer(MODEL, request(grpcclient, images[:1], [4]), client_timeout=TIMEOUT_S).as_numpy("HR_IMAGE")
    assert np.abs(other[0].astype(int) - served[0].astype(int)).mean() > 0.5


def test_concurrent_requests_over_both_protocols(server, http, grpc, demo):
    jobs = [(photo(64, 64, offset=8 * i), 100 + i) for i in range(6)]
    references = [expected(demo, image, seed) for image, seed in jobs]

    # tritonclient's HTTP client runs on gevent and must stay on one thread: its requests overlap
    # through async_infer (the client has concurrency=4). The gRPC client is thread-safe, so its
    # calls run from a thread pool at the same time.
    def grpc_call(index: int) -> np.ndarray:
        image, seed = jobs[index]
        return grpc.infer(MODEL, request(grpcclient, image[None], [seed]), client_timeout=TIMEOUT_S).as_numpy("HR_IMAGE")[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        grpc_futures = {i: pool.submit(grpc_call, i) for i in range(1, len(jobs), 2)}
        http_pending = {i: http.async_infer(MODEL, request(httpclient, jobs[i][0][None], [jobs[i][1]]), timeout=TIMEOUT_S)
                        for i in range(0, len(jobs), 2)}
        served = {i: pending.get_result(timeout=4 * TIMEOUT_S).as_numpy("HR_IMAGE")[0] for i, pending in http_pending.items()}
        served.update({i: future.result(timeout=4 * TIMEOUT_S) for i, future in grpc_futures.items()})
    results = [served[i] for i in range(len(jobs))]
    for served, reference in zip(results, references):
        assert_close(served, reference)


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value)


def test_bad_requests_are_refused_and_the_server_keeps_serving(http, grpc, demo, serve_range):
    small = photo(64, 64)
    oversized = np.zeros((1, 200, 300, 3), np.uint8)
    message = _refused(lambda: http.infer(MODEL, request(httpclient, oversized, [0]), timeout=TIMEOUT_S))
    assert f"exceeds the {serve_range.height[2]}x{serve_range.width[2]} LR pixels" in message
    message = _refused(lambda: grpc.infer(MODEL, request(grpcclient, oversized, [0]), client_timeout=TIMEOUT_S))
    assert "exceeds" in message

    too_many = np.repeat(small[None], serve_range.batch[2] + 1, axis=0)
    message = _refused(lambda: http.infer(MODEL, request(httpclient, too_many, [0] * len(too_many)), timeout=TIMEOUT_S))
    assert "batch" in message.lower()

    wrong_type = small[None].astype(np.float32)
    message = _refused(lambda: http.infer(MODEL, request(httpclient, wrong_type, [0], "FP32"), timeout=TIMEOUT_S))
    assert "IMAGE" in message and "UINT8" in message.upper()

    wrong_rank = np.zeros((1, 64, 64), np.uint8)
    message = _refused(lambda: grpc.infer(MODEL, request(grpcclient, wrong_rank, [0]), client_timeout=TIMEOUT_S))
    assert "IMAGE" in message

    only_image = [httpclient.InferInput("IMAGE", [1, 64, 64, 3], "UINT8")]
    only_image[0].set_data_from_numpy(small[None])
    message = _refused(lambda: http.infer(MODEL, only_image, timeout=TIMEOUT_S))
    assert "SEED" in message

    message = _refused(lambda: http.infer("no_such_model", request(httpclient, small[None], [0]), timeout=TIMEOUT_S))
    assert "no_such_model" in message

    # still serving, still right
    assert http.is_server_live() and http.is_model_ready(MODEL)
    served = grpc.infer(MODEL, request(grpcclient, small[None], [11]), client_timeout=TIMEOUT_S).as_numpy("HR_IMAGE")
    assert_close(served[0], expected(demo, small, 11))


def test_server_start_failure_is_loud(tmp_path):
    """A repository Triton cannot load fails the start with the model and the server's log."""
    broken = tmp_path / "models" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
                                          'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
                                          'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n')
    (broken / "1" / "model.py").write_text("raise ImportError('this model cannot be imported')\n")
    with pytest.raises(RuntimeError, match="broken"):
        with contextlib.ExitStack() as stack:
            stack.enter_context(triton_server(tmp_path / "models", startup_timeout_s=60))
