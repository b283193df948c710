//! `mcpgw`: the control plane binary.

use anyhow::Context as _;
use clap::Parser as _;
use mcpgw::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Openapi => {
            print!("{}", mcpgw::api::openapi_json());
            Ok(())
        }
        Command::Crds { dir } => mcpgw::k8s::crd::print_or_write(dir.as_deref()),
        other => mcpgw::cli::run_client(other).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(mut args: mcpgw::config::ServeArgs) -> anyhow::Result<()> {
    let key = std::env::var("MCPGW_ENCRYPTION_KEY").ok();
    args.admin_password = std::env::var("MCPGW_ADMIN_PASSWORD").ok();
    let mut settings = args
        .resolve(key.as_deref())
        .context("invalid configuration")?;
    if let Ok(previous) = std::env::var("MCPGW_PREVIOUS_ENCRYPTION_KEYS") {
        settings.secrets = settings
            .secrets
            .with_previous(&previous)
            .context("invalid configuration")?;
    }
    mcpgw::telemetry::init_tracing(settings.log_format, &settings.log_level)?;
    if settings.dev {
        tracing::warn!("dev mode: credentials are encrypted with a fixed, public key");
    }
    if settings.secrets.previous_keys() > 0 {
        tracing::info!(
            previous_keys = settings.secrets.previous_keys(),
            "key rotation: values sealed or signed with previous keys still open; stored credentials are re-sealed with the current key"
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    mcpgw::serve(settings, listener, mcpgw::shutdown_signal(), |_| {}).await
}
