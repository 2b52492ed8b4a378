"""Against the real local Triton (session fixture): no mocks."""

import asyncio
import time

import numpy as np

import pytest

from build_engines.gate import outputs_of
from clients import (AsyncTritonClient, InvalidInput, LocalTriton, ModelNotFound, ServerError, ServerUnavailable,
                     TritonClient)
from clients.server import free_port


@pytest.fixture(scope="module")
def images(digits_spec):
    inputs, labels = digits_spec.resolve("evaluation")()
    return inputs["image"], labels


@pytest.mark.parametrize("variant,artifact", [("fp32", "onnx"), ("fp16", "onnx"), ("int8", "cpu")])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_match_onnxruntime_in_process(triton, digits_build, images, variant, artifact, protocol):
    res, _ = digits_build
    x, labels = images
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonClient(url, f"digits_{variant}", protocol) as c:
        served = np.concatenate([c.infer({"image": x[i:i + 64]})["logits"] for i in range(0, len(x), 64)])
    local = outputs_of(res.artifacts[variant][artifact], {"image": x})
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-5)
    assert (served.argmax(1) == labels).mean() >= 0.95


def test_async_clients_under_concurrency_get_batched_answers(triton, digits_build, images):
    res, _ = digits_build
    x, _ = images
    local = outputs_of(res.artifacts["fp32"]["onnx"], {"image": x[:48]})

    async def run(protocol, url):
        async with AsyncTritonClient(url, "digits_fp32", protocol) as c:
            outs = await asyncio.gather(*(c.infer({"image": x[i:i + 1]}) for i in range(48)))
        return np.concatenate([o["logits"] for o in outs])

    for protocol, url in (("grpc", triton.grpc_url), ("http", triton.http_url)):
        np.testing.assert_allclose(asyncio.run(run(protocol, url)), local, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ({"image": np.zeros((2, 8, 8), np.float32)}, "shape"),
    ({"image": np.zeros((2, 1, 8, 8), np.float64)}, "dtype"),
    ({"image": np.zeros((65, 1, 8, 8), np.float32)}, "max_batch_size"),
    ({"pixels": np.zeros((2, 1, 8, 8), np.float32)}, "takes"),
])
def test_bad_inputs_get_clear_errors_and_the_server_stays_ready(triton, bad, match):
    with TritonClient(triton.http_url, "digits_fp32") as c:
        with pytest.raises(InvalidInput, match=match) as e:
            c.infer(bad)
        assert triton.http_url in str(e.value) and "digits_fp32" in str(e.value)
        assert c.server_ready()
        assert c.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})["logits"].shape == (1, 10)


def test_server_side_refusal_is_wrapped(triton):
    """Skip the client-side check: the server's own 400 comes back as InvalidInput, server still ready."""
    import tritonclient.http as th
    with TritonClient(triton.http_url, "digits_fp32") as c:
        c.metadata()
        i = th.InferInput("image", [1, 3, 3], "FP32")
        i.set_data_from_numpy(np.zeros((1, 3, 3), np.float32))
        with pytest.raises(InvalidInput, match="server refused"):
            c._call("infer", c._c.infer, "digits_fp32", [i], headers=triton.infer_headers)
        assert c.server_ready()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model(triton, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonClient(url, "no_such_model", protocol) as c:
        with pytest.raises(ModelNotFound, match="no_such_model"):
            c.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_not_running(protocol):
    url = f"127.0.0.1:{free_port()}"
    with TritonClient(url, "digits_fp32", protocol, timeout_s=3) as c:
        with pytest.raises(ServerUnavailable) as e:
            c.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})
    assert url in str(e.value) and "digits_fp32" in str(e.value) and "timeout 3 s" in str(e.value)


def test_async_server_not_running():
    async def go():
        async with AsyncTritonClient(f"127.0.0.1:{free_port()}", "digits_fp32", "grpc", timeout_s=3) as c:
            await c.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(ServerUnavailable):
        asyncio.run(go())


def test_broken_model_folder_is_refused_before_triton_loads_it(copy_repo):
    (copy_repo / "digits_fp16" / "1" / "model.py").unlink()
    with pytest.raises(ServerError, match="model.py is missing"):
        LocalTriton(copy_repo).start()


def test_explicit_model_control_loads_and_unloads_over_both_protocols(copy_repo, images, monkeypatch):
    """The admin key goes in each protocol's own header (gRPC: triton-grpc-protocol-triton-admin-key);
    a missing or wrong key is said as such, not as an unreachable server."""
    from clients.errors import InferenceFailed
    from clients.server import _ADMIN_KEYS
    x, _ = images
    with LocalTriton(copy_repo, model_control="explicit") as srv:
        for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
            with TritonClient(url, "digits_int8", protocol=protocol) as c:
                with pytest.raises(ModelNotFound):
                    c.metadata()
                c.load_model()
                assert c.infer({"image": x[:4]})["logits"].shape == (4, 10)
                c.unload_model()
                time.sleep(1.5)          # unload returns at once and finishes about 1 s later
                for key, said in ((None, "no key was sent"), ("wrong", "a wrong key was sent")):
                    monkeypatch.delitem(_ADMIN_KEYS, url)
                    if key:
                        monkeypatch.setitem(_ADMIN_KEYS, url, key)
                    with pytest.raises(InferenceFailed, match=f"admin key and {said}"):
                        c.load_model()
                    monkeypatch.setitem(_ADMIN_KEYS, url, srv.admin_key)


def test_server_memory_counts_the_model_stubs_and_their_peak(copy_repo, images):
    """Instances are sized on this figure: what a loaded model adds must be in it, and the peak is never
    below what is resident now."""
    x, _ = images
    with LocalTriton(copy_repo, model_control="explicit") as srv:
        bare = srv.rss_gib(peak=False)
        with TritonClient(srv.http_url, "digits_int8") as c:
            c.load_model()
            c.infer({"image": x[:4]})
            loaded = srv.rss_gib(peak=False)
            assert loaded > bare > 0
            assert srv.rss_gib() >= loaded
