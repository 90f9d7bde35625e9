"""The routes part of bench/growth.sh: 1, 50 and 200 mutual-TLS routes, each its own listener and
engine target, for mllp-proxy and HAProxy. Prints one `routes …` line per server and count.

    python3 bench/growth_routes.py BIN CERTS ENGINE_PORT WORKDIR
"""
import gzip
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

BIN, CERTS, ENGINE, WORK = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
HZ = os.sysconf("SC_CLK_TCK")
IDLE_SECONDS = 30


def free_ports(n):
    """n distinct free ports: all bound at once, then released."""
    held = [socket.socket() for _ in range(n)]
    for s in held:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in held]
    for s in held:
        s.close()
    return ports


def http_get(port, path, gz=False):
    """(status, body bytes, seconds) of GET path on 127.0.0.1:port."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        enc = "Accept-Encoding: gzip\r\n" if gz else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{enc}Connection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(1 << 16):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, time.perf_counter() - start


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ


def proxy_yaml(n, admin, ports, ack_timeout="30s", probes=True):
    out = [f'admin: {{ listen: "127.0.0.1:{admin}" }}', "routes:"]
    for i, port in enumerate(ports):
        ack = ack_timeout if i == 0 else "30s"
        out += [
            f"  - name: r{i:03}",
            f'    listen: "127.0.0.1:{port}"',
            f"    tls: {{ certificate: {CERTS}/server.crt, private_key: {CERTS}/server.key, client_ca: {CERTS}/ca.crt }}",
            f'    upstream: {{ targets: ["127.0.0.1:{ENGINE}"], ack_timeout: {ack}'
            + ("" if probes else ", health_check_interval: 0") + " }",
        ]
    return "\n".join(out) + "\n"


def haproxy_cfg(ports):
    pem = f"{WORK}/haproxy.pem"
    with open(pem, "w") as f:
        f.write(open(f"{CERTS}/server.crt").read() + open(f"{CERTS}/server.key").read())
    out = ["global", "  maxconn 4000", "defaults", "  mode tcp", "  timeout connect 5s",
           "  timeout client 15m", "  timeout server 15m"]
    for i, port in enumerate(ports):
        out += [f"frontend r{i:03}",
                f"  bind 127.0.0.1:{port} ssl crt {pem} ca-file {CERTS}/ca.crt verify required",
                f"  default_backend engine"]
    out += ["backend engine", f"  server e1 127.0.0.1:{ENGINE}"]
    return "\n".join(out) + "\n"


def ready_after(proc, check):
    """Seconds from exec until check() holds (polled every 2 ms)."""
    start = time.perf_counter()
    while not check():
        if proc.poll() is not None or time.perf_counter() - start > 30:
            raise SystemExit(f"not ready: {proc.args}")
        time.sleep(0.002)
    return time.perf_counter() - start


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def reload_seconds(proc, admin):
    """SIGHUP to the applied reload, by the gauge the proxy sets once it has applied it."""
    gauge = "mllp_proxy_config_last_reload_success_timestamp_seconds "

    def stamp():
        text = http_get(admin, "/metrics")[1].decode()
        return float(next(l for l in text.splitlines() if l.startswith(gauge)).split()[1])

    before = stamp()
    sent = time.time()
    proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline:
        now = stamp()
        if now != before:
            return now - sent
        time.sleep(0.05)
    raise SystemExit("reload not applied within 10 s")


def idle_without_probes(n):
    """Idle CPU % of a core with health probes off: the proxy's own cost of quiet routes."""
    admin, *ports = free_ports(n + 1)
    cfg = f"{WORK}/quiet{n}.yaml"
    open(cfg, "w").write(proxy_yaml(n, admin, ports, probes=False))
    proc = subprocess.Popen([BIN, "run", "-c", cfg], stderr=subprocess.DEVNULL)
    try:
        ready_after(proc, lambda: listening(admin) and http_get(admin, "/readyz")[0] == 200)
        time.sleep(1)
        c0 = cpu_s(proc.pid)
        time.sleep(IDLE_SECONDS)
        return (cpu_s(proc.pid) - c0) / IDLE_SECONDS * 100
    finally:
        proc.terminate()
        proc.wait()


def proxy_row(n):
    admin, *ports = free_ports(n + 1)
    cfg = f"{WORK}/routes{n}.yaml"
    open(cfg, "w").write(proxy_yaml(n, admin, ports))
    log = open(f"{WORK}/routes{n}.log", "w")
    proc = subprocess.Popen([BIN, "run", "-c", cfg], stderr=log)
    try:
        ready = ready_after(proc, lambda: listening(admin) and http_get(admin, "/readyz")[0] == 200)
        time.sleep(1)
        rss = rss_kib(proc.pid)
        c0 = cpu_s(proc.pid)
        time.sleep(IDLE_SECONDS)
        idle_pct = (cpu_s(proc.pid) - c0) / IDLE_SECONDS * 100
        plain = [http_get(admin, "/metrics") for _ in range(5)]
        gz = [http_get(admin, "/metrics", gz=True) for _ in range(5)]
        text = plain[-1][1].decode()
        series = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
        route_series = sum(1 for l in text.splitlines() if 'route="r' in l and not l.startswith("#"))
        assert gzip.decompress(gz[-1][1]).startswith(b"#")
        noop = statistics.median(reload_seconds(proc, admin) for _ in range(3))
        changes = []
        for i in range(3):
            open(cfg, "w").write(proxy_yaml(n, admin, ports, ack_timeout=f"{20 + i}s"))
            changes.append(reload_seconds(proc, admin))
        change = statistics.median(changes)
        print(f"routes mllp-proxy n={n} ready_ms={ready * 1e3:.1f} rss_kib={rss} "
              f"idle_cpu_pct={idle_pct:.3f} metrics_bytes={len(plain[-1][1])} "
              f"metrics_gzip_bytes={len(gz[-1][1])} series={series} route_series={route_series} "
              f"scrape_ms={statistics.median(p[2] for p in plain) * 1e3:.2f} "
              f"scrape_gzip_ms={statistics.median(g[2] for g in gz) * 1e3:.2f} "
              f"reload_noop_ms={noop * 1e3:.1f} reload_change_ms={change * 1e3:.1f} "
              f"idle_cpu_noprobe_pct={idle_without_probes(n):.3f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()


def haproxy_row(n):
    ports = free_ports(n)
    cfg = f"{WORK}/haproxy{n}.cfg"
    open(cfg, "w").write(haproxy_cfg(ports))
    proc = subprocess.Popen(["haproxy", "-q", "-f", cfg], stderr=subprocess.DEVNULL)
    try:
        ready = ready_after(proc, lambda: all(listening(p) for p in (ports[-1], ports[0])))
        time.sleep(1)
        rss = rss_kib(proc.pid)
        c0 = cpu_s(proc.pid)
        time.sleep(IDLE_SECONDS)
        idle_pct = (cpu_s(proc.pid) - c0) / IDLE_SECONDS * 100
        print(f"routes haproxy n={n} ready_ms={ready * 1e3:.1f} rss_kib={rss} "
              f"idle_cpu_pct={idle_pct:.3f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()


for n in (1, 50, 200):
    proxy_row(n)
    haproxy_row(n)
