#!/usr/bin/env python3
"""Runs every Deployment of deploy/kubernetes/ the way the kubelet would, with the real image.

For each example: render it with `kubectl kustomize` (what `kubectl apply -k` sends), read the
mllp-proxy container's pod and container securityContext, its volumes, mounts, env, args and
probes; lay the mounted files out as the kubelet does (a timestamped folder, the `..data`
symlink, one symlink per key; owned by root, group `fsGroup` when the pod sets one, with the
given modes, plus group read under fsGroup); start the image with those identities and mounts
in a network namespace of its own (the pod; POD_IP is 127.0.0.2 on its loopback), with stand-in
engines and partners where the configuration points; then check that the proxy starts, answers
its probes as the manifest defines them (path, port, scheme), relays a message end to end, and
stops within terminationGracePeriodSeconds with status 0.

Secrets are cert-manager Certificates, so their files are made here (ECDSA P-256, SEC1 keys as
cert-manager writes them); a ConfigMap key holding a PEM certificate (a partner's CA) is replaced
by the test CA. Needs root, podman with runc, iproute2, openssl and curl.

  python3 deploy/container/podspec.py IMAGE [EXAMPLE ...]
  PODSPEC_SHOW_LOGS=1 …   also prints each proxy's log before it is stopped
"""

import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target/release/mllp-proxy"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
POD_IP = "127.0.0.2"
MESSAGE = (
    "MSH|^~\\&|PODSPEC|TEST|ENGINE|TEST|20261207120000||ADT^A01^ADT_A01|{id}|P|2.5.1\r"
    "PID|1||1^^^T^MR||DOE^J\r"
)


class Failed(Exception):
    pass


def sh(*args, check=True, **kw):
    out = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise Failed(f"{' '.join(map(str, args))}: exit {out.returncode}\n{out.stdout}{out.stderr}")
    return out


class Pki:
    """A test CA and the certificates an example needs, made with openssl."""

    def __init__(self, folder):
        self.dir = folder
        self.dir.mkdir(parents=True)
        self.key("ca")
        sh("openssl", "req", "-x509", "-new", "-key", self.path("ca.key"), "-subj", "/CN=podspec test CA",
           "-days", "2", "-out", self.path("ca.crt"),
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def path(self, name):
        return str(self.dir / name)

    def key(self, name):
        # SEC1 ("EC PRIVATE KEY"), as cert-manager writes an ECDSA key by default.
        sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.path(f"{name}.key"))

    def issue(self, name, san, usage):
        """NAME.crt and NAME.key: a leaf for `san` (openssl subjectAltName syntax)."""
        self.key(name)
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n")
        sh("openssl", "req", "-new", "-key", self.path(f"{name}.key"), "-subj", f"/CN={name}",
           "-out", self.path(f"{name}.csr"))
        sh("openssl", "x509", "-req", "-in", self.path(f"{name}.csr"), "-CA", self.path("ca.crt"),
           "-CAkey", self.path("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
           "-out", self.path(f"{name}.crt"))
        return self.path(f"{name}.crt"), self.path(f"{name}.key")


def kubelet_layout(folder, files, mode, fs_group):
    """Writes `files` ({key: bytes}) as the kubelet's atomic writer does, then applies fsGroup
    the way its volume ownership management does for a read-only volume."""
    stamp = folder / time.strftime("..%Y_%m_%d_%H_%M_%S.000000001")
    stamp.mkdir(parents=True)
    for key, content in files.items():
        (stamp / key).write_bytes(content)
        os.chmod(stamp / key, mode)
        os.symlink(f"..data/{key}", folder / key)
    os.symlink(stamp.name, folder / "..data")
    os.chmod(stamp, 0o755)
    os.chmod(folder, 0o777)
    for path in [folder, stamp, *(stamp / k for k in files)]:
        os.chown(path, 0, fs_group if fs_group is not None else 0)
        if fs_group is not None:
            extra = 0o2550 if path.is_dir() else 0o440
            os.chmod(path, os.stat(path).st_mode | extra)


def render(example):
    out = sh("kubectl", "kustomize", str(example))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def proxy_container(pod):
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if "mllp-proxy" in c.get("image", ""):
            return c
    raise Failed("no mllp-proxy container")


def pick(*values):
    return next((v for v in values if v is not None), None)


class Pod:
    """One example's Deployment running: its network namespace, stand-ins and the container."""

    def __init__(self, example, docs, image, work):
        self.name = example.name
        self.work = work
        self.image = image
        deploy = next(d for d in docs if d["kind"] == "Deployment")
        self.configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        self.pod = deploy["spec"]["template"]["spec"]
        self.container = proxy_container(self.pod)
        self.netns = f"mllp-podspec-{self.name}"
        self.cname = f"mllp-podspec-{self.name}"
        self.children = []
        self.pki = Pki(work / "pki")
        self.hosts = []

    # -- set-up ---------------------------------------------------------------------------

    def config(self):
        args = self.container.get("args", [])
        path = args[args.index("-c") + 1] if "-c" in args else "/etc/mllp-proxy/mllp-proxy.yaml"
        for m in self.container.get("volumeMounts", []):
            vol = next(v for v in self.pod["volumes"] if v["name"] == m["name"])
            if "configMap" in vol and path.startswith(m["mountPath"].rstrip("/") + "/"):
                key = path[len(m["mountPath"].rstrip("/")) + 1:]
                return yaml.safe_load(self.configmaps[vol["configMap"]["name"]][key])
        raise Failed(f"{path} is not on a mounted ConfigMap")

    def volume_files(self, vol):
        if "configMap" in vol:
            data = self.configmaps[vol["configMap"]["name"]]
            ca = Path(self.pki.path("ca.crt")).read_bytes()
            return {k: (ca if "BEGIN CERTIFICATE" in v else v.encode()) for k, v in data.items()}
        if "secret" in vol:
            # A cert-manager Certificate's Secret: the leaf for what this pod presents.
            crt, key = self.leaf
            return {"tls.crt": Path(crt).read_bytes(), "tls.key": Path(key).read_bytes(),
                    "ca.crt": Path(self.pki.path("ca.crt")).read_bytes()}
        raise Failed(f"volume {vol['name']}: only configMap and secret volumes are modelled")

    def start(self):
        cfg = self.config()
        self.routes = cfg["routes"]
        egress = any(r.get("upstream", {}).get("tls") for r in self.routes)
        self.leaf = (self.pki.issue("client", "DNS:adt-feed.hospital.example", "clientAuth") if egress
                     else self.pki.issue("server", f"DNS:localhost,IP:{POD_IP}", "serverAuth"))
        psc, csc = self.pod.get("securityContext", {}), self.container.get("securityContext", {})
        uid = pick(csc.get("runAsUser"), psc.get("runAsUser"))
        gid = pick(csc.get("runAsGroup"), psc.get("runAsGroup"))
        fs_group = psc.get("fsGroup")
        run = [*PODMAN, "run", "-d", "--name", self.cname, *LIMITS,
               "--network", f"ns:/run/netns/{self.netns}"]
        if uid is not None:
            run += ["--user", f"{uid}:{pick(gid, uid)}"]
        for g in [fs_group, *psc.get("supplementalGroups", [])]:
            if g is not None:
                run += ["--group-add", str(g)]
        if csc.get("readOnlyRootFilesystem"):
            run.append("--read-only")
        if "ALL" in csc.get("capabilities", {}).get("drop", []):
            run += ["--cap-drop", "ALL"]
        if csc.get("allowPrivilegeEscalation") is False:
            run += ["--security-opt", "no-new-privileges"]
        for m in self.container.get("volumeMounts", []):
            vol = next(v for v in self.pod["volumes"] if v["name"] == m["name"])
            source = vol.get("configMap") or vol.get("secret")
            folder = self.work / "volumes" / m["name"]
            kubelet_layout(folder, self.volume_files(vol), source.get("defaultMode", 0o644), fs_group)
            run += ["-v", f"{folder}:{m['mountPath']}:ro"]
        for e in self.container.get("env", []):
            ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            run += ["-e", f"{e['name']}={POD_IP if ref == 'status.podIP' else e.get('value', '')}"]
        # Leftovers of an interrupted run would make these fail.
        self.close()
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        self.stand_ins()
        run += [f"--add-host={h}:{ip}" for h, ip in self.hosts]
        if "command" in self.container:
            run += ["--entrypoint", self.container["command"][0]]
        sh(*run, self.image, *self.container.get("command", [])[1:], *self.container.get("args", []))

    def in_pod(self, *args, **kw):
        return ["ip", "netns", "exec", self.netns, *args]

    def stand_ins(self):
        """An engine (or, over TLS, a partner) for each route's first target. An address target
        (the sidecar's 127.0.0.1) is served inside the pod; a named one (a Service, a partner)
        by another host: a namespace of its own joined to the pod by a veth pair on the RFC 2544
        test range, which reaches nothing outside these two namespaces."""
        self.engine_logs = []
        for i, route in enumerate(self.routes):
            up = route["upstream"]
            host, port = up["targets"][0].rsplit(":", 1)
            netns = self.netns
            try:
                ipaddress.ip_address(host)
                ip = host
            except ValueError:
                netns, ip = self.other_host(), f"198.18.0.{10 + i}"
                sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "svc")
                self.hosts.append((host, ip))
            log = self.work / f"engine-{i}.log"
            cmd = [str(BINARY), "ack-server", "--listen", f"{ip}:{port}", "--log", str(log)]
            if up.get("tls"):
                name = up["tls"].get("server_name") or host
                crt, key = self.pki.issue(f"partner-{i}", f"DNS:{name}", "serverAuth")
                cmd += ["--cert", crt, "--key", key, "--client-ca", self.pki.path("ca.crt")]
            self.children.append(subprocess.Popen(["ip", "netns", "exec", netns, *cmd],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.engine_logs.append(log)
            wait_listening(netns, ip, port)

    def other_host(self):
        """The namespace of the hosts the pod reaches by name, made once."""
        other = f"{self.netns}-svc"
        if other not in sh("ip", "netns", "list").stdout:
            sh("ip", "netns", "add", other)
            sh("ip", "-n", other, "link", "set", "lo", "up")
            sh("ip", "-n", self.netns, "link", "add", "pod", "type", "veth", "peer", "svc", "netns", other)
            sh("ip", "-n", self.netns, "addr", "add", "198.18.0.1/24", "dev", "pod")
            sh("ip", "-n", self.netns, "link", "set", "pod", "up")
            sh("ip", "-n", other, "link", "set", "svc", "up")
        return other

    # -- checks ---------------------------------------------------------------------------

    def probe(self, spec):
        get = spec["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in self.container["ports"] if p.get("name") == port)
        scheme = get.get("scheme", "HTTP").lower()
        url = f"{scheme}://{POD_IP}:{port}{get['path']}"
        return sh(*self.in_pod("curl", "-ksS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                               str(spec.get("timeoutSeconds", 1)), url), check=False).stdout

    def wait_started(self):
        startup = self.container.get("startupProbe") or self.container.get("readinessProbe")
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if self.probe(startup) == "200":
                return
            state = sh(*PODMAN, "inspect", "--format", "{{.State.Status}}", self.cname).stdout.strip()
            if state != "running":
                raise Failed(f"the container {state} before its startup probe passed:\n{self.logs()}")
            time.sleep(0.2)
        raise Failed(f"startup probe not passed within {budget} s:\n{self.logs()}")

    def logs(self):
        return sh(*PODMAN, "logs", self.cname, check=False).stderr[-3000:]

    def relay(self):
        for i, route in enumerate(self.routes):
            listen = route["listen"].replace("${POD_IP}", POD_IP)
            host, port = listen.rsplit(":", 1)
            host = POD_IP if host in ("0.0.0.0", "[::]") else host.strip("[]")
            cid = f"PODSPEC-{self.name}-{i}"
            args = ["--to", f"{host}:{port}", "--id", cid]
            if route.get("tls"):
                crt, key = self.pki.issue(f"sender-{i}", sender_san(route), "clientAuth")
                args += ["--ca", self.pki.path("ca.crt"), "--cert", crt, "--key", key]
            trusted = route.get("proxy_protocol", {}).get("trusted", [])
            if trusted:
                # Connections come from the balancer: from an address of its range, with a header.
                source = str(next(ipaddress.ip_network(trusted[0], strict=False).hosts()))
                sh("ip", "-n", self.netns, "addr", "add", f"{source}/32", "dev", "lo")
                args += ["--from", source]
            out = sh(*self.in_pod(sys.executable, __file__, "--send", *args), check=False)
            if out.stdout.strip() != f"AA {cid}":
                raise Failed(f"route {route['name']}: {out.stdout}{out.stderr}\n{self.logs()}")
            if cid not in self.engine_logs[i].read_text():
                raise Failed(f"route {route['name']}: {cid} did not reach the engine")

    def stop(self):
        grace = self.pod.get("terminationGracePeriodSeconds", 30)
        started = time.monotonic()
        sh(*PODMAN, "stop", "-t", str(grace), self.cname)
        took = time.monotonic() - started
        code = sh(*PODMAN, "inspect", "--format", "{{.State.ExitCode}}", self.cname).stdout.strip()
        if code != "0" or took >= grace:
            raise Failed(f"stopped with status {code} after {took:.1f} s (grace {grace} s):\n{self.logs()}")
        return took

    def close(self):
        sh(*PODMAN, "rm", "-f", "-t", "0", self.cname, check=False)
        for c in self.children:
            c.kill()
            c.wait()
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "netns", "del", f"{self.netns}-svc", check=False)


def wait_listening(netns, ip, port):
    for _ in range(100):
        out = sh("ip", "netns", "exec", netns, "ss", "-Htln", f"src {ip}:{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise Failed(f"the stand-in on {ip}:{port} did not listen")


def sender_san(route):
    """A subjectAltName that the route's first allowed_clients matcher admits."""
    for m in route.get("allowed_clients", []):
        if "uri" in m:
            return f"URI:{m['uri']}"
        if "dns" in m:
            return "DNS:" + m["dns"].replace("*.", "sender.")
        if "email" in m:
            return f"email:{m['email']}"
    return "DNS:sender.hospital.example"


def send(argv):
    """Inside the pod: one message over MLLP (TLS with --ca), after a PROXY v1 header when
    --from names the balancer's address; prints MSA-1 and MSA-2 of the answer."""
    opts = dict(zip(argv[::2], argv[1::2]))
    host, port = opts["--to"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10,
                                    source_address=(opts["--from"], 0) if "--from" in opts else None)
    if "--from" in opts:
        sock.sendall(f"PROXY TCP4 192.0.2.50 {host} 40000 {port}\r\n".encode())
    if "--ca" in opts:
        ctx = ssl.create_default_context(cafile=opts["--ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(opts["--cert"], opts["--key"])
        sock = ctx.wrap_socket(sock)
    sock.sendall(b"\x0b" + MESSAGE.format(id=opts["--id"]).encode() + b"\x1c\x0d")
    answer = b""
    while not answer.endswith(b"\x1c\x0d"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    msa = next((s for s in answer.strip(b"\x0b\x1c\r").split(b"\r") if s.startswith(b"MSA")), b"")
    print(" ".join(msa.decode(errors="replace").split("|")[1:3]))


def main():
    if sys.argv[1:2] == ["--send"]:
        return send(sys.argv[2:])
    image, wanted = sys.argv[1], sys.argv[2:]
    examples = sorted(p.parent for p in (ROOT / "deploy/kubernetes").glob("*/kustomization.yaml"))
    failures = 0
    for example in examples:
        if wanted and example.name not in wanted:
            continue
        work = Path(tempfile.mkdtemp(prefix=f"podspec-{example.name}-"))
        pod = None
        try:
            pod = Pod(example, render(example), image, work)
            pod.start()
            pod.wait_started()
            probes = {k: pod.probe(pod.container[k]) for k in ("readinessProbe", "livenessProbe")
                      if k in pod.container}
            if any(code != "200" for code in probes.values()):
                raise Failed(f"probes: {probes}")
            pod.relay()
            if os.environ.get("PODSPEC_SHOW_LOGS"):
                print(pod.logs())
            took = pod.stop()
            print(f"{example.name}: started as the kubelet runs it, probes {probes}, "
                  f"a message relayed, stopped in {took:.1f} s with status 0")
        except Failed as e:
            failures += 1
            print(f"{example.name}: FAILED: {e}")
        finally:
            if pod:
                pod.close()
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
