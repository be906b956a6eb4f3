"""Throw-away PKI for the test API server, made with the openssl CLI (no Python crypto dependency).

EC P-256 keys throughout: generating them takes milliseconds, which keeps a warm cluster start fast.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# Names and IPs a client may use for the API server: loopback for the tests, the in-cluster service
# names and the first service IP (10.96.0.1) for anything that resolves `kubernetes.default`.
SERVING_SANS = (
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
    "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    sa_key: Path
    sa_pub: Path
    front_proxy_cert: Path
    front_proxy_key: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_pki(directory: Path, days: int = 7) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", str(days), "-subj", "/CN=modelyard-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-subj", "/CN=kube-apiserver",
        "-keyout", str(d / "apiserver.key"), "-out", str(d / "apiserver.csr"),
    )  # fmt: skip
    (d / "apiserver.ext").write_text(
        f"subjectAltName={SERVING_SANS}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(d / "apiserver.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", str(days),
        "-extfile", str(d / "apiserver.ext"), "-out", str(d / "apiserver.crt"),
    )  # fmt: skip
    # The aggregation layer's client identity (kubeadm's front-proxy-client). With it configured,
    # controller-manager and scheduler find the requestheader CA they look up, and APIServices work.
    _openssl(
        "req", "-new", *ec, "-subj", "/CN=front-proxy-client",
        "-keyout", str(d / "front-proxy.key"), "-out", str(d / "front-proxy.csr"),
    )  # fmt: skip
    (d / "front-proxy.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(d / "front-proxy.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", str(days),
        "-extfile", str(d / "front-proxy.ext"), "-out", str(d / "front-proxy.crt"),
    )  # fmt: skip
    # Service-account tokens are signed with ES256 by the API server and verified with the public half.
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "sa.key"))
    _openssl("ec", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
    for key in ("ca.key", "apiserver.key", "sa.key", "front-proxy.key"):
        (d / key).chmod(0o600)
    return Pki(
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        apiserver_cert=d / "apiserver.crt",
        apiserver_key=d / "apiserver.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
        front_proxy_cert=d / "front-proxy.crt",
        front_proxy_key=d / "front-proxy.key",
    )
