"""The quickstart's broker: a Redis emulation (fakeredis) on loopback, for trying the service only.

It keeps everything in memory and is gone when it stops. Celery's Redis transport against it
supports what Flower, remote control and redelivery need; production uses RabbitMQ.
"""

import socket

from fakeredis import TcpFakeServer


class NoDelayFakeRedisServer(TcpFakeServer):
    """Disables Nagle's algorithm on every connection: without it each message waits ~40 ms."""

    allow_reuse_address = True
    daemon_threads = True

    def get_request(self):
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


def serve(port: int) -> None:
    server = NoDelayFakeRedisServer(("127.0.0.1", port), server_type="redis")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def wait_until_answering(port: int, timeout: float) -> bool:
    """True once something accepts connections on the port, False at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False
