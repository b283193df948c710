//! Test certificates for mutual TLS between Envoy and the control plane's xDS, made by the
//! `openssl` CLI: a CA, a server certificate for a DNS name and 127.0.0.1, and a client
//! certificate (`extendedKeyUsage=clientAuth`), all P-256, valid two days.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

/// Writes into `dir`: `ca.key` and `ca.pem`, `server.key` and `server.pem` (SAN
/// `DNS:{server_name}` and `IP:127.0.0.1`), `envoy.key` and `envoy.pem` (a client
/// certificate). `ca_name` is the CA's common name.
pub fn issue(dir: &Path, ca_name: &str, server_name: &str) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running the openssl CLI (needed to make the xDS certificates)")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=DNS:{server_name},IP:127.0.0.1\n"),
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca_subj = format!("/CN={ca_name}");
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days", "2", "-subj", &ca_subj, "-keyout", "ca.key", "-out", "ca.pem",
    ]);
    openssl(&ca)?;
    for (leaf, ext) in [("server", "server.ext"), ("envoy", "client.ext")] {
        let (key, csr, pem) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.pem"),
        );
        let subj = format!("/CN={leaf}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            &pem,
        ])?;
    }
    Ok(())
}
