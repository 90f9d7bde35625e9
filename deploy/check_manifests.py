"""Checks what kubernetes-validate has no schema for (cert-manager, Prometheus Operator and
Kustomize kinds), cross-references in what each kustomization renders (the generated
ConfigMap's hashed name included), and that each proxy container's memory limit follows the
sizing rule of docs/changes.md for its configuration's limits.

  python3 deploy/check_manifests.py deploy/kubernetes RENDERED_DIR
RENDERED_DIR holds `kubectl kustomize FOLDER` of each folder as FOLDER.yaml."""
import pathlib
import re
import sys

import yaml

KNOWN = {
    ("cert-manager.io/v1", "Certificate"): ["secretName", "issuerRef", "dnsNames"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
}
MIB = 1 << 20
UNITS = {"Ki": 1 << 10, "Mi": MIB, "Gi": 1 << 30}


def quantity(text):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text))
    if not m:
        raise ValueError(f"memory quantity {text!r} not understood")
    return int(m.group(1)) * UNITS.get(m.group(2), 1)


def sizing(config):
    """docs/changes.md: 64 MiB + 16 KiB per sender connection + every connection mid-message
    (max_connections x max_message_bytes x 3), summed over the routes, + the buffers of 8
    large messages kept for reuse (8 x the largest max_message_bytes, at most 128 MiB)."""
    need = 64 * MIB
    largest = 0
    for r in config["routes"]:
        conns = r.get("limits", {}).get("max_connections", 1024)
        size = r.get("validation", {}).get("max_message_bytes", 1048576)
        need += conns * (16 << 10) + conns * size * 3
        largest = max(largest, size)
    return need + min(8 * largest, 128 * MIB)


def check_folder(folder, rendered, errors):
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    generated = [f for g in kustomization.get("configMapGenerator", []) for f in g.get("files", [])]
    listed = set(kustomization["resources"]) | set(generated)
    on_disk = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    if listed != on_disk:
        errors.append(f"{folder}: kustomization uses {sorted(listed)}, folder has {sorted(on_disk)}")
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    for doc in docs:
        where = f"{folder.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if not doc.get("apiVersion") or not doc.get("kind") or not doc.get("metadata", {}).get("name"):
            errors.append(f"{where}: apiVersion, kind and metadata.name are required")
        required = KNOWN.get((doc.get("apiVersion"), doc.get("kind")))
        if required is not None:
            missing = [k for k in required if k not in doc.get("spec", {})]
            if missing:
                errors.append(f"{where}: spec lacks {missing}")
    # Cross-references: secrets and config maps mounted by pods exist; monitors find a port.
    secrets = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    service_ports = {p["name"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
    for d in docs:
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            for v in pod.get("volumes", []):
                if "secret" in v and v["secret"]["secretName"] not in secrets:
                    errors.append(f"{folder.name}: secret {v['secret']['secretName']} is not issued by any Certificate")
                if "configMap" in v and v["configMap"]["name"] not in configmaps:
                    errors.append(f"{folder.name}: config map {v['configMap']['name']} is not defined")
            check_memory(folder, pod, configmaps, errors)
        if d["kind"] == "ServiceMonitor":
            for e in d["spec"]["endpoints"]:
                if e["port"] not in service_ports:
                    errors.append(f"{folder.name}: port {e['port']} is not a Service port")
    print(f"{folder.name}: {len(docs)} rendered resources checked")


def check_memory(folder, pod, configmaps, errors):
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if "mllp-proxy" not in c.get("image", ""):
            continue
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        config = next((yaml.safe_load(configmaps[vols[m["name"]]["configMap"]["name"]]["mllp-proxy.yaml"])
                       for m in c.get("volumeMounts", []) if "configMap" in vols[m["name"]]
                       and "mllp-proxy.yaml" in configmaps.get(vols[m["name"]]["configMap"]["name"], {})), None)
        if config is None:
            errors.append(f"{folder.name}: {c['name']} mounts no mllp-proxy.yaml")
            continue
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        need = sizing(config)
        if limit is None or quantity(limit) < need:
            errors.append(f"{folder.name}: {c['name']} memory limit {limit} is below the sizing rule's "
                          f"{need / MIB:.0f} MiB for its max_connections and max_message_bytes")
        else:
            print(f"{folder.name}: memory limit {limit} covers the sizing rule's {need / MIB:.0f} MiB")


def main():
    errors = []
    rendered = pathlib.Path(sys.argv[2])
    for folder in sorted(pathlib.Path(sys.argv[1]).iterdir()):
        if folder.is_dir():
            check_folder(folder, rendered / f"{folder.name}.yaml", errors)
    for e in errors:
        print("ERROR", e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
