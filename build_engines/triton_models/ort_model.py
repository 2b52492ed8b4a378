"""Triton Python-backend model: runs the version folder's ONNX with ONNX Runtime.

All requests of one ``execute()`` go to ONNX Runtime in one call (grouped by the shape of their
non-batch axes) and the outputs are split back per request. Dtypes and names come from the model
config, not from this file. A request that fails gets its own error; the others still answer.
An INT8 model refuses to load on a CPU whose integer kernels it was not gated for (cpu_isa.py).
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        if params.get("int8_recipe"):
            sys.path.insert(0, version_dir)
            import cpu_isa

            why = cpu_isa.serving_refusal(params["int8_recipe"], params.get("int8_gated_isa", "unknown"))
            if why:
                raise RuntimeError(f"{args['model_name']}: {why}")
        path = os.path.realpath(os.path.join(version_dir, params.get("onnx_file", "model.onnx")))
        if os.path.dirname(path) != os.path.realpath(version_dir):
            raise RuntimeError(f"{args['model_name']}: parameter onnx_file {params.get('onnx_file')!r} must name a file "
                               f"in the model's version folder")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in cfg["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in cfg["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for idx, req in enumerate(requests):
            try:
                feed = {}
                for name, dtype in self.inputs:
                    t = pb_utils.get_input_tensor_by_name(req, name)
                    feed[name] = t.as_numpy().astype(dtype, copy=False)
                key = tuple(feed[n].shape[1:] for n, _ in self.inputs)
                groups.setdefault(key, []).append((idx, feed))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {e}"))
        for members in groups.values():
            try:
                joined = {n: np.concatenate([f[n] for _, f in members]) for n, _ in self.inputs}
                outs = self.session.run([n for n, _ in self.outputs], joined)
                sizes = np.cumsum([len(f[self.inputs[0][0]]) for _, f in members])[:-1]
                parts = [np.split(o, sizes) for o in outs]
                for k, (idx, _) in enumerate(members):
                    tensors = [pb_utils.Tensor(n, parts[j][k].astype(dt, copy=False)) for j, (n, dt) in enumerate(self.outputs)]
                    responses[idx] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as e:  # noqa: BLE001
                for idx, _ in members:
                    responses[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {e}"))
        return responses
