//! The mcpgw control plane: owns the registry the filters enforce — store (SQLite or
//! PostgreSQL), admin REST API, federation of upstream MCP servers, operator CLI.

pub mod api;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod federation;
pub mod model;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod transfer;
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::AppState;
use crate::config::Settings;
use crate::federation::Federation;
use crate::store::Store;
use crate::telemetry::Metrics;

/// A running control plane (for embedding and tests).
#[derive(Debug)]
pub struct ControlPlane {
    /// Address the admin API listens on.
    pub addr: SocketAddr,
    /// The store.
    pub store: Store,
    /// The federation service.
    pub federation: Arc<Federation>,
}

/// Opens the store (creating the data directory for SQLite) and runs migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    if let Some(dir) = &settings.data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Store::connect(&settings.database_url)
        .await
        .with_context(|| "opening the registry database".to_owned())
}

/// Serves the admin API on `listener` until `shutdown` resolves, with federation loops
/// running in the background. `ready` is called once the API accepts connections.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(ControlPlane) + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let metrics = Arc::new(Metrics::new());
    let federation = Federation::new(
        store.clone(),
        settings.federation.clone(),
        settings.secrets.clone(),
        metrics.clone(),
    );
    let loops = federation.spawn().await;
    let state = AppState {
        store: store.clone(),
        federation: federation.clone(),
        metrics,
        secrets: settings.secrets.clone(),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = ?store.backend(), "admin API listening");
    ready(ControlPlane {
        addr,
        store: store.clone(),
        federation,
    });
    let result = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    loops.abort();
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
