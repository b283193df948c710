//! The mcpgw control plane: owns the registry the filters enforce — store (SQLite or
//! PostgreSQL), admin REST API, federation of upstream MCP servers, operator CLI.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod edge_config;
pub mod federation;
pub mod k8s;
pub mod model;
pub mod pinning;
pub mod ratelimit;
pub mod relay;
pub mod rules;
pub mod serving;
pub mod snapshot;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transfer;
/// The xDS server, its own crate (`mcpgw-xds`): re-exported so `mcpgw::xds` keeps naming it.
pub use mcpgw_xds as xds;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::AppState;
use crate::config::Settings;
use crate::edge_config::Publisher;
use crate::federation::Federation;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::xds::{AdsServer, XdsConfig};

/// A running control plane (for embedding and tests).
#[derive(Debug)]
pub struct ControlPlane {
    /// Address the admin API listens on.
    pub addr: SocketAddr,
    /// The store.
    pub store: Store,
    /// The federation service.
    pub federation: Arc<Federation>,
    /// Address the xDS server listens on (`None`: xDS disabled).
    pub xds_addr: Option<SocketAddr>,
    /// The xDS server (`None`: xDS disabled).
    pub xds: Option<AdsServer>,
    /// Address the session relay listens on (`None`: no relay).
    pub relay_addr: Option<SocketAddr>,
    /// In `--dev` mode: a platform-admin API token minted at start.
    pub dev_token: Option<String>,
    /// Address the rate-limit service listens on (`None`: no service).
    pub ratelimit_addr: Option<SocketAddr>,
}

/// Opens the store (creating the data directory for SQLite, 0700) and runs migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    if let Some(dir) = &settings.data_dir {
        store::prepare_data_dir(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    let store = Store::connect(&settings.database_url)
        .await
        .with_context(|| "opening the registry database".to_owned())?;
    // Credentials sealed by versions before the binding to gateway and origin, or with a
    // key since rotated.
    store
        .reseal_credentials(&settings.secrets)
        .await
        .with_context(|| "re-sealing stored credentials".to_owned())?;
    Ok(store)
}

/// Serves the admin API on `listener` (and xDS on `settings.xds_listen`) until `shutdown`
/// resolves, with federation loops and the edge configuration publisher running in the
/// background. `ready` is called once both accept connections.
pub async fn serve(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(ControlPlane) + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    // Keys, bootstrap admin and dev token before anything listens.
    let (auth, dev_token) = auth::Auth::start(
        store.clone(),
        settings.secrets.clone(),
        settings.auth.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("starting authentication")?;
    let xds_listener = match settings.xds_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the xDS listener {addr}"))?,
        ),
        None => None,
    };
    let relay_listener = match settings.relay_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the relay listener {addr}"))?,
        ),
        None => None,
    };
    let relay_addr = match &relay_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    // Envoys reach the relay at its advertised address, else where it is bound (the port
    // is known only now when it was 0); with the relay off, they are told of none.
    settings.edge.relay = relay_addr.map(|a| {
        settings
            .relay_advertise
            .clone()
            .unwrap_or_else(|| edge_config::UpstreamEndpoint {
                host: a.ip().to_string(),
                port: a.port(),
                tls: false,
            })
    });
    settings.edge.relay_auth = relay_addr.map(|_| settings.secrets.relay_auth());
    let ratelimit_listener = match settings.ratelimit_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the rate-limit service listener {addr}"))?,
        ),
        None => None,
    };
    let ratelimit_addr = match &ratelimit_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    settings.edge.ratelimit = ratelimit_addr.map(|a| {
        settings
            .ratelimit_advertise
            .clone()
            .unwrap_or_else(|| edge_config::UpstreamEndpoint {
                host: a.ip().to_string(),
                port: a.port(),
                tls: false,
            })
    });
    let ratelimit_service = match &ratelimit_listener {
        Some(_) => Some(ratelimit::RedisRateLimiter::new(&settings.redis_url)?),
        None => None,
    };
    // Build once before xDS accepts anyone: the first Envoy gets the registry, not an
    // empty configuration (and if this build fails, xDS answers nothing until one works).
    let publisher = Publisher::new(
        store.clone(),
        edge_config::EdgeInputs {
            policy: settings.edge_policy.clone(),
            session: Some(snapshot::session_settings(
                &settings.secrets,
                settings.mcp_sessions,
            )),
            settings: settings.edge.clone(),
            secrets: settings.secrets.clone(),
            ssrf: settings.federation.ssrf,
        },
    )
    .with_own_issuer(Arc::clone(&auth));
    let xds_config = XdsConfig {
        tls: match &settings.tls {
            Some(tls) => Some(edge_config::xds_tls(tls)?),
            None => None,
        },
        ..XdsConfig::default()
    };
    let ads = xds_listener
        .as_ref()
        .map(|_| AdsServer::new(publisher.sets(), xds_config));
    let mut metrics = Metrics::new();
    metrics.register_store(store.metrics());
    if let Some(ads) = &ads {
        metrics.register_xds(ads.metrics());
    }
    let relay = relay::Relay::new(settings.secrets.relay_auth(), settings.relay_limits.clone())
        .also_admitting(settings.secrets.relay_auths());
    let relay_tls = match (&settings.tls, &relay_listener) {
        (Some(tls), Some(_)) => Some(
            tls::server_config(&tls.cert, &tls.key, &tls.client_ca, &["http/1.1"])
                .context("the relay listener's TLS")?,
        ),
        _ => None,
    };
    metrics.register_relay(relay.metrics());
    relay.follow_catalogs(publisher.snapshots(), ads.clone());
    let metrics = Arc::new(metrics);
    let first = publisher.publish_counted(&metrics).await;
    let edge = publisher.edge(ads.clone());
    let publishing = publisher.spawn(metrics.clone(), first);
    let federation = Federation::new(
        store.clone(),
        settings.federation.clone(),
        settings.secrets.clone(),
        metrics.clone(),
    );
    let loops = federation.spawn().await;
    // The Kubernetes controller (leader-elected: every replica serves, one writes).
    let controller = match settings.kubernetes.clone() {
        Some(k) => {
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API (in-cluster configuration or KUBECONFIG)",
            )?;
            Some(tokio::spawn(k8s::run(
                client,
                k,
                store.clone(),
                settings.secrets.clone(),
                federation.clone(),
            )))
        }
        None => None,
    };
    let state = AppState {
        store: store.clone(),
        federation: federation.clone(),
        metrics,
        secrets: settings.secrets.clone(),
        edge,
        auth,
    };
    // One shutdown signal, two servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let xds_addr = match &xds_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let xds_task = match (xds_listener, &ads) {
        (Some(l), Some(ads)) => {
            let serving = xds::serve(l, ads.clone(), stopped());
            Some(tokio::spawn(async move {
                let r = serving.await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "xDS server failed; Envoys keep their last configuration");
                }
                r
            }))
        }
        _ => None,
    };
    let relay_task = relay_listener.map(|l| {
        tracing::info!(addr = %relay_addr.map(|a| a.to_string()).unwrap_or_default(), "session relay listening");
        let serving = relay.serve(l, relay_tls, stopped());
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "session relay failed");
            }
        })
    });
    let ratelimit_tls = match (&settings.tls, &ratelimit_listener) {
        (Some(tls), Some(_)) => Some(edge_config::xds_tls(tls)?),
        _ => None,
    };
    let ratelimit_task = match (ratelimit_listener, ratelimit_service) {
        (Some(l), Some(service)) => {
            let serving = ratelimit::serve(l, service, ratelimit_tls, stopped());
            Some(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "rate-limit service failed; filters apply their failure mode");
                }
            }))
        }
        _ => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = ?store.backend(), "admin API listening");
    ready(ControlPlane {
        addr,
        store: store.clone(),
        federation,
        xds_addr,
        xds: ads,
        relay_addr,
        dev_token,
        ratelimit_addr,
    });
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let result = serving::serve(
        listener,
        api::router(state),
        serving::Listener {
            timeouts: settings.api_timeouts,
            tls: None,
            timed_out: |limit| {
                axum::response::IntoResponse::into_response(api::problem::Problem::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    "Request timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        limit.as_secs()
                    ),
                ))
            },
        },
        signal,
    )
    .await;
    if let Some(t) = xds_task {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {} // logged when it happened
            Err(e) => tracing::error!(error = %e, "xDS server task failed"),
        }
    }
    if let Some(t) = ratelimit_task {
        t.abort();
    }
    if let Some(t) = relay_task {
        // Open SSE streams last as long as their clients: do not wait for them.
        t.abort();
    }
    publishing.abort();
    loops.abort();
    if let Some(c) = controller {
        c.abort();
    }
    store.close().await;
    tracing::info!("stopped");
    result.context("serving the admin API")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
