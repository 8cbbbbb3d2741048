"""The python-backend models, served: a real tritonserver on loopback (the bundled one, python
stage models with ONNX Runtime on the CPU) hit with tritonclient over HTTP and gRPC: the same
images as the in-process pipeline, concurrent requests, bad requests refused on their own
(INVALID_ARG / HTTP 400, one line) while the good requests batched with them are answered."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "rsd_sr"
TIMEOUT_S = 120  # per request: the tiny model answers in well under a second


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


@pytest.fixture
def http(served):
    client = httpclient.InferenceServerClient(served.http, concurrency=4, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    yield client
    client.close()


@pytest.fixture
def grpc(served):
    client = grpcclient.InferenceServerClient(served.grpc)
    yield client
    client.close()


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


def test_concurrent_requests_over_both_protocols(http, grpc, demo):
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


def refused_with_400(call) -> str:
    """The one-line message of a request refused as a bad request (HTTP 400 / gRPC INVALID_ARGUMENT)."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    error = caught.value
    assert error.status() in ("400", "StatusCode.INVALID_ARGUMENT"), str(error)
    assert "\n" not in error.message() and "Traceback" not in error.message(), error.message()
    return error.message()


def executions(client, model: str) -> tuple[int, int]:
    """(requests, executions) of a model so far: fewer executions than requests means batches."""
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def test_a_bad_request_never_fails_the_good_ones_batched_with_it(grpc, demo):
    good = [(photo(64, 64, offset=8 * i), 200 + i) for i in range(4)]
    references = [expected(demo, image, seed) for image, seed in good]
    bad = [
        (photo(64, 64), -1, "SEED must be 0 .. 2^63-1, got -1"),
        (photo(64, 64), int(np.iinfo(np.int64).min), "SEED must be 0 .. 2^63-1"),
        (np.zeros((0, 0, 3), np.uint8), 0, "empty image 0x0"),
        (np.zeros((4096, 4096, 3), np.uint8), 0, "image 4096x4096 (padded to 4096x4096) exceeds"),
    ]
    jobs = [("good", i) for i in range(len(good))] * 3
    for index in range(len(bad)):  # the bad ones among the good ones, so they share batches
        jobs.insert(3 * index + 1, ("bad", index))
    before = executions(grpc, "rsd_preprocess")

    def call(job):
        kind, index = job
        image, seed = (good[index] if kind == "good" else bad[index][:2])
        return grpc.infer(MODEL, request(grpcclient, image[None], [seed]), client_timeout=TIMEOUT_S)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [(job, pool.submit(call, job)) for job in jobs]
        for (kind, index), future in futures:
            if kind == "good":
                assert_close(future.result(timeout=4 * TIMEOUT_S).as_numpy("HR_IMAGE")[0], references[index])
            else:
                assert bad[index][2] in refused_with_400(lambda: future.result(timeout=4 * TIMEOUT_S))
    requests, runs = (after - start for after, start in zip(executions(grpc, "rsd_preprocess"), before))
    assert requests == len(jobs) and runs < requests  # every request reached the model, in batches: bad ones among good


def infer(client, model: str, tensors: dict[str, np.ndarray]):
    inputs = []
    for name, array in tensors.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "FP32"))
        inputs[-1].set_data_from_numpy(array)
    return client.infer(model, inputs, client_timeout=TIMEOUT_S)


def test_inner_models_refuse_bad_tensors_alone(grpc, stage_files):
    """The stage and python models check every request's tensors; a request ONNX Runtime would
    fail on never takes down the batch it came in."""
    rng = np.random.default_rng(0)

    def generator_inputs(size: int, lq_size: int | None = None) -> dict[str, np.ndarray]:
        lq_size = lq_size or size
        return {"x_t": rng.standard_normal((1, 48, size, size), np.float32), "lq": rng.uniform(-1, 1, (1, 3, lq_size, lq_size)).astype(np.float32),
                "noise_map": rng.standard_normal((1, 1, size, size), np.float32)}

    good = [generator_inputs(64) for _ in range(3)]
    bad = [(generator_inputs(64, lq_size=128), "inputs disagree"), (generator_inputs(192), "outside the exported")]
    session = ort.InferenceSession(str(stage_files["generator"]), providers=["CPUExecutionProvider"])
    references = [session.run(["x0"], feeds)[0] for feeds in good]
    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        good_futures = [pool.submit(infer, grpc, "rsd_generator", feeds) for feeds in good]
        bad_futures = [(pool.submit(infer, grpc, "rsd_generator", feeds), message) for feeds, message in bad]
        for future, reference in zip(good_futures, references):
            np.testing.assert_allclose(future.result(timeout=4 * TIMEOUT_S).as_numpy("x0"), reference, atol=1e-4)
        for future, message in bad_futures:
            assert message in refused_with_400(lambda: future.result(timeout=4 * TIMEOUT_S))

    latent = rng.standard_normal((1, 48, 64, 64), np.float32)
    wide = rng.standard_normal((1, 48, 64, 128), np.float32)
    assert "z_y [1, 48, 64, 64] and eps [1, 48, 64, 128] differ" in refused_with_400(lambda: infer(grpc, "rsd_prior", {"z_y": latent, "eps": wide}))
    hr = rng.uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    assert "does not fit the 64x64 LR image" in refused_with_400(
        lambda: infer(grpc, "rsd_postprocess", {"hr": hr, "lr_size": np.array([[100, 60]], np.int32)}))
    assert "expected multiples of 256" in refused_with_400(
        lambda: infer(grpc, "rsd_postprocess", {"hr": hr[:, :, :100], "lr_size": np.array([[20, 60]], np.int32)}))


def test_http_bad_requests_are_400_with_one_line(http):
    for image, seed, message in [(np.zeros((0, 0, 3), np.uint8), 0, "empty image"),
                                 (np.zeros((4096, 4096, 3), np.uint8), 0, "exceeds the 128x128 LR pixels"),
                                 (photo(64, 64), -1, "SEED must be 0 .. 2^63-1, got -1")]:
        assert message in refused_with_400(lambda: http.infer(MODEL, request(httpclient, image[None], [seed]), timeout=TIMEOUT_S))
    images = np.stack([photo(64, 64)] * 2)  # Triton checks this one itself
    assert "batch size does not match other inputs" in refused_with_400(
        lambda: http.infer(MODEL, request(httpclient, images, [1]), timeout=TIMEOUT_S))
