"""Checks what kubernetes-validate has no schema for (cert-manager, Prometheus Operator and
Kustomize kinds), and cross-references between the manifests of each folder."""
import pathlib
import sys

import yaml

KNOWN = {
    ("cert-manager.io/v1", "Certificate"): ["secretName", "issuerRef", "dnsNames"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
}
errors = []
for folder in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    if not folder.is_dir():
        continue
    docs = []
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((folder / name).read_text()):
            if doc:
                docs.append((name, doc))
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    if listed != on_disk:
        errors.append(f"{folder}: kustomization lists {sorted(listed)}, folder has {sorted(on_disk)}")
    for name, doc in docs:
        where = f"{folder.name}/{name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if not doc.get("apiVersion") or not doc.get("kind") or not doc.get("metadata", {}).get("name"):
            errors.append(f"{where}: apiVersion, kind and metadata.name are required")
        required = KNOWN.get((doc.get("apiVersion"), doc.get("kind")))
        if required is not None:
            missing = [k for k in required if k not in doc.get("spec", {})]
            if missing:
                errors.append(f"{where}: spec lacks {missing}")
    # Cross-references: secrets and config maps mounted by pods exist; monitors find a port.
    secrets = {d["spec"]["secretName"] for _, d in docs if d["kind"] == "Certificate"}
    configmaps = {d["metadata"]["name"] for _, d in docs if d["kind"] == "ConfigMap"}
    service_ports = {p["name"] for _, d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
    for name, d in docs:
        if d["kind"] == "Deployment":
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in v and v["secret"]["secretName"] not in secrets:
                    errors.append(f"{folder.name}/{name}: secret {v['secret']['secretName']} is not issued by any Certificate")
                if "configMap" in v and v["configMap"]["name"] not in configmaps:
                    errors.append(f"{folder.name}/{name}: config map {v['configMap']['name']} is not defined")
        if d["kind"] == "ServiceMonitor":
            for e in d["spec"]["endpoints"]:
                if e["port"] not in service_ports:
                    errors.append(f"{folder.name}/{name}: port {e['port']} is not a Service port")
    print(f"{folder.name}: {len(docs)} resources checked")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
