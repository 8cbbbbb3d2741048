"""Fused GPU kernels for the Swin blocks of the RSD / ResShift denoiser (issue 5).

- :mod:`rsd_deploy.kernels.window_attention`: the fused shifted-window attention in Triton
  (roll, partition, scale, ``q k^T``, relative position bias, the official shift mask, fp32
  softmax, ``@ v``, reverse and roll back in one kernel), registered as the ``"triton"``
  attention backend; select it with ``UNetModelSwin.set_attention_backend("triton")``.
- :mod:`rsd_deploy.kernels.onnx_custom_op`: the ONNX export mode with one custom node per window
  attention (``export_kwargs()`` and the ``plugin_attention(model)`` context manager).
- :mod:`rsd_deploy.kernels.trt_plugin`: the TensorRT plugin behind those nodes, running the
  Triton kernel compiled ahead of time into the engine.
- :mod:`rsd_deploy.kernels.bench_window_attention`: the benchmark
  (``python -m rsd_deploy.kernels.bench_window_attention``).

Nothing here is imported by the models unless asked for: the default backend stays the plain
PyTorch reference, and CPU inference never needs Triton.
"""
