"""Typed helpers over tritonclient, and the local tritonserver adapter."""

from clients.client import AsyncTritonClient, ModelMeta, TensorMeta, TritonClient
from clients.errors import (ClientError, InferenceFailed, InvalidInput, ModelNotFound, Overloaded, RequestTimeout,
                            ServerError, ServerUnavailable)
from clients.server import LocalTriton

__all__ = ["AsyncTritonClient", "ClientError", "InferenceFailed", "InvalidInput", "LocalTriton", "ModelMeta",
           "ModelNotFound", "Overloaded", "RequestTimeout", "ServerError", "ServerUnavailable", "TensorMeta", "TritonClient"]
