"""Tuning of the TCP connections a node serves: bus links and HTTP clients."""


def tune_socket_io(transport: object, read_size: int, send_size: int) -> None:
    """Read and send in larger pieces, and send small writes at once, on a TCP
    transport and on the TCP transport under a TLS one; a transport without
    Twisted's knobs is left as it is.

    The size knobs are the class attributes `bufferSize` (read size, and how much
    unsent data pauses a producer) and `SEND_LIMIT` of Twisted's file
    descriptors, set here on the one instance.

    Nagle's algorithm is turned off: a request or reply is written whole, so
    holding its last small segment back only delays it, by the peer's delayed
    acknowledgement (40 ms on Linux). A push's small record writes after its
    chunks waited so, one closing a 50 MB push took 43 ms instead of 1.
    """
    for layer in (transport, getattr(transport, "transport", None)):
        if hasattr(layer, "bufferSize") and hasattr(layer, "SEND_LIMIT"):
            layer.bufferSize = read_size
            layer.SEND_LIMIT = send_size
        set_no_delay = getattr(layer, "setTcpNoDelay", None)
        if callable(set_no_delay):
            set_no_delay(True)
