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

