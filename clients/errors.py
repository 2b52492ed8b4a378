"""Client errors. Every message carries the URL, the model and the timeout where they apply.

    ClientError                root
    ├── ServerUnavailable      nothing answers at the URL (connection refused, DNS, server not ready)
    ├── RequestTimeout         the server did not answer within timeout_s
    ├── ModelNotFound          the server answers but does not serve this model (or it is not ready)
    ├── InvalidInput           inputs do not match the model's metadata (checked before sending)
    ├── Overloaded             the server shed the request (its queue policy: queue full or queued too long)
    └── InferenceFailed        the server answered with an error
    ServerError                the local tritonserver could not be started or stopped
"""


from build_engines.errors import UserError


class ClientError(UserError):
    pass


class ServerUnavailable(ClientError):
    pass


class RequestTimeout(ClientError):
    pass


class ModelNotFound(ClientError):
    pass


class InvalidInput(ClientError):
    pass


class Overloaded(ClientError):
    """Shed by the model's queue policy: retry later, or add capacity (instances, replicas)."""


class InferenceFailed(ClientError):
    pass


class ServerError(UserError):
    pass
