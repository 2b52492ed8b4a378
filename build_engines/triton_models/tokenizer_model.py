"""Triton Python-backend model: UTF-8 strings -> input_ids / attention_mask with the `tokenizers`
library (tokenizer.json in the version folder). Each request is padded to the bucket of its
longest text (parameter "buckets"), so requests of similar length have equal shapes and the
encoder's dynamic batcher can join them. Texts longer than "max_length" tokens are truncated;
an empty string becomes [CLS] [SEP]; bytes that are not UTF-8 fail that request alone.

The padding is build_engines/triton_models/padding.py, copied beside this file as tck_padding.py (this
file runs inside the model folder, also in the NGC container, where this project is not installed): the
build and the server pad with the same code."""

import json
import os
import sys

import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.max_length = int(params.get("max_length", "128"))
        self.buckets = sorted(int(b) for b in params.get("buckets", "16,32,64,128").split(","))
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        self.tok = Tokenizer.from_file(path)
        self.tok.enable_truncation(self.max_length)
        self.tok.no_padding()
        self.text_name = cfg["input"][0]["name"]
        sys.path.insert(0, os.path.join(args["model_repository"], args["model_version"]))
        import tck_padding

        self.pad = tck_padding.pad

    def execute(self, requests):
        responses = []
        for req in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(req, self.text_name).as_numpy().reshape(-1)
                texts = []
                for i, b in enumerate(raw):
                    try:
                        texts.append(b.decode("utf-8") if isinstance(b, bytes) else str(b))
                    except UnicodeDecodeError as e:
                        raise ValueError(f"text {i} is not valid UTF-8 ({e.reason} at byte {e.start}); send UTF-8 strings") from None
                ids, mask = self.pad([e.ids for e in self.tok.encode_batch(texts)], self.buckets)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]))
            except Exception as e:  # noqa: BLE001 - answer this request with its error, keep serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
