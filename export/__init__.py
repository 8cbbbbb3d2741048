"""Export: ONNX graphs of the one-step SR stages, fp16 / INT8 variants, TensorRT engines.

- :mod:`.stages`: the shared description of every exported graph (names, shapes, ranges,
  torch modules); every other module reads it.
- :mod:`.onnx_export`: torch -> ONNX (dynamo exporter, dynamic batch / LR size) + optimisation.
- :mod:`.precision`: fp16 graphs with fragile ops kept in fp32, INT8 Q/DQ graphs (calibrated).
- :mod:`.calibration`: DIV2K-style calibration folders, or scikit-image's bundled photos.
- :mod:`.parity`: ONNX Runtime vs PyTorch errors, PSNR / LPIPS of reduced-precision graphs.
- :mod:`.tensorrt`: strongly typed engine builds, the engine cache, the runner, Polygraphy checks.
- :mod:`.report`: ``report.json`` / ``report.md``; :mod:`.cli`: the ``rsd-export`` command.
"""
