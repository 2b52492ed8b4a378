"""Code that runs inside Triton's Python backend, copied into each model's version folder by
build_engines.repository: ort_model.py (ONNX Runtime), tokenizer_model.py (strings -> tokens), and
the helpers that travel beside them (padding.py as tck_padding.py; build_engines/isa.py as cpu_isa.py).
The two model files import triton_python_backend_utils and are never imported here."""
