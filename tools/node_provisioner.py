#!/usr/bin/env python3
"""The test node's storage provisioner: hostPath volumes for claims of the default StorageClass.

Like kind's `standard` class (rancher's local-path-provisioner): for every PersistentVolumeClaim
that the PV controller hands to this provisioner (annotation
`volume.kubernetes.io/storage-provisioner`), once the scheduler has picked the node
(`volume.kubernetes.io/selected-node`, the class binds WaitForFirstConsumer), make a directory
under --storage (mode 0777, so a pod of any uid can write) and create a PersistentVolume for it,
pre-bound to the claim; the PV controller completes the binding. Volumes are never deleted
(the class's reclaim policy is Retain): `tools/cluster.sh down` removes the storage directory.

Polls once a second with kubectl (a test node has a handful of claims); logs one line per volume.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"


def kubectl(args, stdin=None):
    return subprocess.run(
        [ARGS.kubectl, "--kubeconfig", ARGS.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def log(message):
    print(time.strftime("%H:%M:%S"), message, flush=True)


def wanted(claim):
    annotations = claim["metadata"].get("annotations") or {}
    return (
        claim.get("status", {}).get("phase") == "Pending"
        and not claim["spec"].get("volumeName")
        and annotations.get(PROVISIONER_ANNOTATION) == ARGS.provisioner
        and annotations.get(SELECTED_NODE_ANNOTATION, ARGS.node) == ARGS.node
    )


def volume_for(claim, path):
    meta = claim["metadata"]
    spec = claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": ARGS.provisioner},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName", ""),
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": path, "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [ARGS.node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def provision(claim):
    meta = claim["metadata"]
    path = os.path.join(ARGS.storage, f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    result = kubectl(["create", "-f", "-"], stdin=json.dumps(volume_for(claim, path)))
    if result.returncode == 0:
        log(f"provisioned {meta['namespace']}/{meta['name']} at {path}")
    elif "AlreadyExists" not in result.stderr:
        log(f"creating the volume of {meta['namespace']}/{meta['name']} failed: {result.stderr.strip()}")


def main():
    log(f"provisioning {ARGS.provisioner} claims on {ARGS.node} under {ARGS.storage}")
    while True:
        result = kubectl(["get", "persistentvolumeclaims", "--all-namespaces", "-o", "json"])
        if result.returncode != 0:
            log(f"listing claims failed: {result.stderr.strip()}")
        else:
            for claim in json.loads(result.stdout)["items"]:
                if wanted(claim):
                    provision(claim)
        time.sleep(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--provisioner", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--storage", required=True)
    ARGS = parser.parse_args()
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
