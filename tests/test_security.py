"""Security with real parts: no credential in any output, and the job on a TLS-only Dask cluster.

Credentials: the console script runs a refresh (which writes every kind of
output: tables, report, manifest, state, caches) and a failing job, against
moto's S3 with secret-looking AWS credentials; every byte it printed or
stored, and the Dask cluster's logs, are searched for them.

TLS: the test makes a certificate authority and a certificate for 127.0.0.1
(the ``cryptography`` package), starts ``dask scheduler`` and ``dask worker``
with ``--tls-*`` options, and submits the job through the console script,
whose Client takes its certificates from Dask's configuration
(``DASK_DISTRIBUTED__COMM__TLS__*`` environment variables). Plain TCP and
TLS without a client certificate are refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import Service, free_port, start_service, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed import Client
from distributed.security import Security
from test_cli import Run, run_cli, succeeded

from numerai_dask.clusters import WorkerSettings
from numerai_dask.pipeline import ScoringParams, run_job
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate

DATASET = {"n_eras": 4, "rows_per_era": 40, "n_features": 5, "n_models": 4, "n_unresolved": 1, "seed": 5}
REFUSAL_TIMEOUT = "3s"
#: How long a TLS connection must stay quiet to count as kept open.
TLS_SILENCE_SECONDS = 2


# ------------------------------------------------------------------ credentials


def secret_environment(endpoint_url: str) -> dict[str, str]:
    """AWS credentials that look real (and are random), for moto, which does not check them."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2Vj" + secrets.token_urlsafe(60),
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_no_credential_in_any_output_log_or_error(s3_server, s3_bucket: str, dask_cluster: str,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    root = f"{s3_bucket}/root"
    generate(root, **DATASET, storage_options=s3_server.storage_options)
    fs = s3_server.filesystem()
    fs.pipe_file(f"{root.removeprefix('s3://')}/submissions/broken.csv", b"id;prediction\nx;0,5\n")
    env = secret_environment(s3_server.endpoint_url)
    refreshed = succeeded(run_cli("refresh", root, "--scheduler", dask_cluster, env=env))
    assert "1 rejection:" in refreshed.stdout
    failed = run_cli("score", "s3://no-such-bucket-for-this-test/root", "--scheduler", dask_cluster,
                     "--storage-option", f"secret={env['AWS_SECRET_ACCESS_KEY']}",
                     "--storage-option", f"token={env['AWS_SESSION_TOKEN']}", env=env)
    assert failed.returncode == 1
    # Credentials written into the root's URL, which S3 does not take: botocore named the bucket, quoted, with
    # them; a secret with a "/" (half of AWS's have one) escaped redaction. Such a root is refused unrepeated.
    bucket = s3_bucket.removeprefix("s3://")
    in_url = run_cli("score", f"s3://{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}@{bucket}/root",
                     "--scheduler", dask_cluster, "--json", env=env)
    slashed = run_cli("score", f"s3://{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SESSION_TOKEN'][:12]}/"
                      f"{env['AWS_SESSION_TOKEN'][12:]}@{bucket}/root", "--scheduler", dask_cluster, env=env)
    for refused in (in_url, slashed):
        assert refused.returncode == 1 and "bucket name holds ':' or '@'" in refused.stderr, refused.stderr
    assert not [part for part in (env["AWS_SESSION_TOKEN"][:12], env["AWS_SESSION_TOKEN"][12:])
                if part in slashed.stdout + slashed.stderr]

    fs.invalidate_cache()
    stored = {path: fs.cat_file(path) for path in fs.find(f"{root.removeprefix('s3://')}/leaderboard")}
    kinds = {path.rsplit(".", 1)[-1] for path in stored}
    assert {"parquet", "csv", "html", "json"} <= kinds and any(p.endswith("/state.json") for p in stored)
    logs = {str(p): p.read_bytes() for p in tmp_path_factory.getbasetemp().glob("dask*/*.log")}
    assert logs, "the Dask cluster's logs were not found"
    outputs = {"stdout": refreshed.stdout.encode(), "stderr": refreshed.stderr.encode(),
               "failed stdout": failed.stdout.encode(), "failed stderr": failed.stderr.encode(),
               "URL stdout": in_url.stdout.encode(), "URL stderr": in_url.stderr.encode(),
               "slashed URL stdout": slashed.stdout.encode(), "slashed URL stderr": slashed.stderr.encode(),
               **stored, **logs}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = env[name].encode()
        leaks = [where for where, data in outputs.items() if value in data]
        assert not leaks, f"{name} appears in {leaks}"


# ------------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class Certificates:
    """A CA certificate, and a certificate and key for 127.0.0.1 that it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def security(self, *, with_client_certificate: bool = True) -> Security:
        return Security(tls_ca_file=str(self.ca), require_encryption=True,
                        tls_client_cert=str(self.cert) if with_client_certificate else None,
                        tls_client_key=str(self.key) if with_client_certificate else None)

    def dask_options(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def client_environment(self) -> dict[str, str]:
        """Dask configuration, as environment variables, that makes every Client use TLS with these files."""
        return {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.ca),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.cert),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.key)}


def make_certificates(folder: Path) -> Certificates:
    """A throwaway CA and a certificate for 127.0.0.1/localhost signed by it, valid for a day."""
    now = dt.datetime.now(dt.timezone.utc)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                    *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(certificate("numerai-dask test CA", ca_key, "numerai-dask test CA", ca_key, ca=True)
                         .public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(certificate("127.0.0.1", key, "numerai-dask test CA", ca_key, ca=False)
                           .public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclass(frozen=True)
class TlsCluster:
    address: str
    certificates: Certificates


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    """``dask scheduler --protocol tls`` and one ``dask worker``, both with the test's certificates."""
    folder = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(folder)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    services: list[Service] = [start_service(
        "tls-scheduler", [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", "tls",
                          "--no-dashboard", *certificates.dask_options()], folder)]
    try:
        services.append(start_service(
            "tls-worker", [*dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                           *certificates.dask_options()], folder, env=WorkerSettings().environment()))
        with Client(address, security=certificates.security(), timeout="60s") as client:
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, services, f"a TLS worker at {address}")
        yield TlsCluster(address, certificates)
    finally:
        for service in reversed(services):
            service.stop()


def test_the_job_on_a_tls_only_cluster_equals_the_plain_run(tls_cluster: TlsCluster, dask_cluster: str,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "root"
    generate(str(root), **DATASET)
    out = tmp_path / "out"
    run = Run.of(out, run_cli("score", str(root), "--scheduler", tls_cluster.address, "--out", str(out),
                              env=tls_cluster.certificates.client_environment()))
    assert f"connected to {tls_cluster.address} (1 worker)" in run.stdout
    with Client(dask_cluster) as client:
        plain = run_job(client, Storage(str(root)), ScoringParams())
    pd.testing.assert_frame_equal(run.table("per_era"), plain.per_era, check_exact=True)
    pd.testing.assert_frame_equal(run.table("leaderboard"), plain.leaderboard, check_exact=True)


def tls_connection_outcome(cluster: TlsCluster, *, with_certificate: bool) -> str:
    """``"open"`` if the scheduler keeps a TLS connection that trusts the CA open, else ``"closed: <why>"``.

    With a certificate the scheduler waits for the client to speak (the read
    times out); without one it ends the handshake with an alert, or simply
    hangs up, depending on timing.
    """
    context = ssl.create_default_context(cafile=str(cluster.certificates.ca))
    if with_certificate:
        context.load_cert_chain(str(cluster.certificates.cert), str(cluster.certificates.key))
    host, port = cluster.address.removeprefix("tls://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=TLS_SILENCE_SECONDS) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return "closed: end of stream" if tls.recv(1) == b"" else "open"
    except TimeoutError:
        return "open"
    except (ssl.SSLError, ConnectionError) as error:
        return f"closed: {error!r}"


def test_the_tls_cluster_refuses_plain_tcp_and_clients_without_a_certificate(tls_cluster: TlsCluster) -> None:
    """A plain-TCP Client never connects; a TLS client that shows no certificate is cut off, one that does is not."""
    with pytest.raises((OSError, TimeoutError)):
        Client(tls_cluster.address.replace("tls://", "tcp://"), timeout=REFUSAL_TIMEOUT)
    assert tls_connection_outcome(tls_cluster, with_certificate=True) == "open"
    assert tls_connection_outcome(tls_cluster, with_certificate=False).startswith("closed: ")
