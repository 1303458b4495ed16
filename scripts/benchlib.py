"""Shared pieces of the comparison benchmarks: free ports, a private nginx-rtmp, CPU timing
of a child process, and a throttling TCP proxy."""
import asyncio
import os
import resource
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONAIR = os.path.join(ROOT, "target", "release", "onair")
MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def require_onair():
    if not os.path.exists(ONAIR):
        raise SystemExit("build first: cargo build --release")


class Nginx:
    """nginx with the RTMP module on a free loopback port, private config, killed on exit."""

    def __enter__(self):
        self.tmp = tempfile.mkdtemp()
        self.port = free_port()
        os.makedirs(f"{self.tmp}/logs")
        with open(f"{self.tmp}/nginx.conf", "w") as f:
            f.write(
                f"load_module {MODULE};\ndaemon off;\nmaster_process off;\nuser root;\n"
                f"error_log {self.tmp}/logs/error.log warn;\npid {self.tmp}/nginx.pid;\n"
                "events { worker_connections 1024; }\n"
                f"rtmp {{ server {{ listen 127.0.0.1:{self.port}; chunk_size 4096;\n"
                "application live { live on; record off; } } }\n"
            )
        self.proc = subprocess.Popen(["/usr/sbin/nginx", "-p", self.tmp, "-c", f"{self.tmp}/nginx.conf"])
        wait_port(self.port)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def cpu_of(cmd):
    """Runs cmd to completion; returns (wall s, cpu s, stderr) of that child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{p.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.stderr.decode(errors="replace")


class ThrottleProxy:
    """A TCP proxy on a free loopback port whose client-to-server rate can be limited."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.port = free_port()
        self.rate = 0  # bytes per second, 0 = unlimited
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result()

    def throttle_kbps(self, kbps):
        self.rate = kbps * 1000 // 8

    async def _serve(self):
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        for s in self.server.sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)

    async def _conn(self, cr, cw):
        sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)
        cw.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)

        async def up():
            base, sent = time.monotonic(), 0
            while True:
                rate = self.rate
                data = await cr.read(4096 if rate == 0 else max(256, min(4096, rate // 50)))
                if not data:
                    break
                sw.write(data)
                await sw.drain()
                if rate == 0:
                    base, sent = time.monotonic(), 0
                    continue
                sent += len(data)
                due = base + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() - base > 2:
                    base, sent = time.monotonic(), 0
            sw.close()

        async def down():
            while True:
                data = await sr.read(4096)
                if not data:
                    break
                cw.write(data)
                await cw.drain()
            cw.close()

        await asyncio.gather(up(), down(), return_exceptions=True)
