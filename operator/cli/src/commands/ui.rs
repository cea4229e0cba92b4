//! `kubectl maestro ui [--port N] [--no-open]`: Maestro's web UI on 127.0.0.1, reaching
//! Kubernetes with the caller's kubeconfig (and its --as, --context...). Only the caller's
//! own machine can reach it; it serves until Ctrl-C.

use std::net::Ipv4Addr;
use std::process::{ExitCode, Stdio};

use maestro_ui::{Access, Settings};

use crate::Target;

/// The port the UI listens on unless told otherwise, so its address can be bookmarked.
pub const DEFAULT_PORT: u16 = 7683;

#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// The port on 127.0.0.1 to serve on (0: any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Only print the URL; do not try to open a browser.
    #[arg(long)]
    pub no_open: bool,
    /// Grafana's address (https://grafana.example): the page links to Maestro's
    /// dashboard there.
    #[arg(long, value_name = "URL")]
    pub grafana_url: Option<String>,
}

pub async fn run(target: &Target, args: UiArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot listen on 127.0.0.1:{}: {error} (--port 0 takes any free port)",
                args.port
            )
        })?;
    let port = listener.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}/");
    println!("Maestro UI: {url}");
    println!(
        "(namespace {}, as your kubeconfig user; Ctrl-C stops it)",
        target.namespace
    );
    if !args.no_open {
        open_browser(&url);
    }
    maestro_ui::serve(
        listener,
        Settings {
            access: Access::Kubeconfig(target.client.clone()),
            default_namespace: target.namespace.clone(),
            allowed_hosts: vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            grafana_url: args.grafana_url,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Opens `url` in the desktop's browser when there is a desktop; otherwise the printed
/// URL is the way in (an SSH session, a container).
fn open_browser(url: &str) {
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    let opener = if cfg!(target_os = "macos") {
        Some("open")
    } else if cfg!(unix) && has_display {
        Some("xdg-open")
    } else {
        None
    };
    let Some(opener) = opener else {
        eprintln!("no desktop to open a browser on: open the URL above");
        return;
    };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = opened {
        eprintln!("cannot start {opener} ({error}): open the URL above");
    }
}
