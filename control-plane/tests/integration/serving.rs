//! The control plane's own HTTP listeners (the admin API and the session relay) against
//! clients that misbehave on purpose: headers trickled byte by byte, bodies that never
//! arrive; and the relay's TLS with client certificates (made with the `openssl` CLI).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::harness::{TestCp, TestDb, settings};

/// The relay secret of the dev key (what this control plane's Envoys would add).
fn relay_secret() -> String {
    mcpgw::crypto::SecretBox::dev().relay_auth()
}

/// A control plane whose admin API and relay time out request heads and bodies after 1 s.
async fn impatient(db: &TestDb) -> TestCp {
    let mut s = settings(db);
    s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let quick = mcpgw::serving::Timeouts {
        header_read: Duration::from_secs(1),
        request_body: Duration::from_secs(1),
        tls_handshake: Duration::from_secs(1),
    };
    s.api_timeouts = quick;
    s.relay_limits.http = quick;
    TestCp::start(s).await
}

/// Sends `head` and then one more byte every 100 ms, never finishing the request;
/// returns what the server sent before it closed the connection (within 20 s).
async fn trickle(addr: SocketAddr, head: &str) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "{addr} kept a connection open for 20 s while its client trickled bytes; it sent: {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// Slowloris: a client that sends its headers byte by byte forever is cut off by the
/// header-read timeout, on the admin API and on the relay. Before, `axum::serve` had no
/// such timeout and held the connection as long as the client kept sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let db = TestDb::sqlite();
    let cp = impatient(&db).await;
    let relay = cp.relay_addr.expect("relay enabled");
    for addr in [cp.addr, relay] {
        let got = trickle(addr, "GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        // hyper closes without an answer: the request never became one.
        assert!(!got.contains("200 OK"), "{addr}: {got}");
    }
    // The listeners still serve everyone else.
    let (s, _) = cp.get("/health").await;
    assert_eq!(s, 200);
    cp.stop().await;
}

/// Sends a request whose body is announced but never completed; the server's answer
/// (status line, headers and body) once it gives up.
async fn stalled_body(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Value) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n{extra}\r\n{{\"name\":"
    );
    let got = trickle_once(addr, &head).await;
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = body
        .find('{')
        .and_then(|at| serde_json::from_str(&body[at..body.rfind('}')? + 1]).ok())
        .unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), json)
}

/// Sends `head` once and reads until the server closes (within 20 s).
async fn trickle_once(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "{addr} waited 20 s for a body that never came; it sent: {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// A request whose body does not arrive within the request-body timeout gets a 408 in
/// the listener's error format, and its connection is closed. Before, the server waited
/// for the body forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let db = TestDb::sqlite();
    let cp = impatient(&db).await;
    let relay = cp.relay_addr.expect("relay enabled");
    // Authenticated, so the request reaches the body read (a 401 would come first).
    let auth = format!(
        "authorization: Bearer {}\r\n",
        cp.token.as_deref().expect("dev token")
    );
    let (status, head, problem) = stalled_body(cp.addr, "/gateways", &auth).await;
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert_eq!(
        problem["type"], "urn:mcpgw:problem:request-timeout",
        "{problem}"
    );
    let (status, head, error) = stalled_body(
        relay,
        "/servers/s/message?session_id=x",
        &format!("mcpgw-relay-auth: {}\r\n", relay_secret()),
    )
    .await;
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(error["error"]["code"], -32600, "{error}");
    cp.stop().await;
}

/// The request timeouts bound requests, not responses: a legacy SSE stream outlives them
/// (its keepalive comment, 15 s after it opened, still arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_stream_outlives_the_request_timeouts() {
    let db = TestDb::sqlite();
    let cp = impatient(&db).await;
    let relay = cp.relay_addr.expect("relay enabled");
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{relay}/servers/s/sse"))
        .header("mcpgw-relay-auth", relay_secret())
        .header("mcpgw-edge-address", "127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    let keepalive = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(": keepalive") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(keepalive, Ok(true), "the stream ended or stalled: {seen:?}");
    cp.stop().await;
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI (it makes this test's certificates)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name` (`{name}.pem`, `{name}.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `name` signed by CA `ca`, for `usage` (`serverAuth`, `clientAuth`).
fn make_leaf(dir: &Path, ca: &str, name: &str, usage: &str) {
    let (cert, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:{name}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// A client that trusts `ca` and presents `identity` (`{identity}.pem` + `.key`), if any.
fn tls_client(dir: &Path, ca: &str, identity: Option<&str>) -> reqwest::Client {
    let read = |f: String| std::fs::read(dir.join(f)).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(&read(format!("{ca}.pem"))).unwrap()]);
    if let Some(name) = identity {
        let mut pem = read(format!("{name}.pem"));
        pem.extend(read(format!("{name}.key")));
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// With `tls` set, the relay speaks TLS and admits only clients with a certificate from
/// the operator's CA: without one, with one from another CA, or in plaintext, a client
/// does not get an HTTP exchange at all. Before, the relay ignored the setting and served
/// plaintext to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_admits_only_clients_with_a_certificate_from_the_operator_s_ca() {
    mcpgw::tls::install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir, "ca");
    make_ca(dir, "rogue-ca");
    make_leaf(dir, "ca", "relay", "serverAuth");
    make_leaf(dir, "ca", "envoy", "clientAuth");
    make_leaf(dir, "rogue-ca", "intruder", "clientAuth");
    let path = |f: &str| -> PathBuf { dir.join(f) };
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    s.tls = Some(mcpgw::config::ServerTls {
        cert: path("relay.pem"),
        key: path("relay.key"),
        client_ca: path("ca.pem"),
    });
    let cp = TestCp::start(s).await;
    let relay = cp.relay_addr.expect("relay enabled");
    let url = format!("https://127.0.0.1:{}/servers/s/sse", relay.port());
    // An Envoy's certificate: the HTTP exchange happens, and the secret still counts.
    let envoy = tls_client(dir, "ca", Some("envoy"));
    let r = envoy.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = envoy
        .get(&url)
        .header("mcpgw-relay-auth", relay_secret())
        .header("mcpgw-edge-address", "127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // No certificate, a certificate of another CA, or no TLS: refused in the handshake.
    for (name, client) in [
        ("no certificate", tls_client(dir, "ca", None)),
        (
            "another CA's certificate",
            tls_client(dir, "ca", Some("intruder")),
        ),
    ] {
        let r = client
            .get(&url)
            .header("mcpgw-relay-auth", relay_secret())
            .send()
            .await;
        assert!(r.is_err(), "{name}: {:?}", r.map(|r| r.status()));
    }
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{relay}/servers/s/sse"))
        .header("mcpgw-relay-auth", relay_secret())
        .send()
        .await;
    assert!(plain.is_err(), "plaintext: {:?}", plain.map(|r| r.status()));
    cp.stop().await;
}
