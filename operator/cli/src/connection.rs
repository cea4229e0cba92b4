//! kubectl's standard connection flags, so `kubectl maestro` reaches the cluster, as the
//! user, exactly as `kubectl` would with the same flags.

use std::{path::PathBuf, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The flags kubectl passes on to every command (`kubectl options`).
#[derive(clap::Args, Debug, Default, Clone, PartialEq)]
pub struct KubeFlags {
    /// Path to the kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Username to impersonate for the operation (a user or a ServiceAccount).
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation; repeat it for several groups.
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_groups: Vec<String>,
    /// How long to wait for one server request before giving up ("0" waits forever); a
    /// number of seconds or a duration such as 30s or 1m.
    #[arg(long, global = true, value_parser = request_timeout, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,
}

impl KubeFlags {
    /// A client configured like kubectl with these flags.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let config = self.config().await?;
        Client::try_from(config).map_err(|error| anyhow::anyhow!("cannot build a client: {error}"))
    }

    async fn config(&self) -> anyhow::Result<Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|error| {
                    anyhow::anyhow!("cannot read kubeconfig {}: {error}", path.display())
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            // No flag names a kubeconfig entry: find the config as kubectl does, or use the
            // pod's ServiceAccount in a cluster.
            None if self.context.is_none() && self.cluster.is_none() && self.user.is_none() => {
                Config::infer()
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?
            }
            None => Config::from_kubeconfig(&options).await?,
        };
        self.apply_overrides(&mut config);
        Ok(config)
    }

    /// The flags that change a loaded config: impersonation and the request timeout.
    fn apply_overrides(&self, config: &mut Config) {
        if let Some(user) = &self.as_user {
            config.auth_info.impersonate = Some(user.clone());
        }
        if !self.as_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(self.as_groups.clone());
        }
        if let Some(timeout) = self.request_timeout {
            // kubectl's "0" means no timeout.
            let timeout = (!timeout.is_zero()).then_some(timeout);
            config.read_timeout = timeout;
            config.write_timeout = timeout;
            config.connect_timeout = timeout;
        }
    }
}

/// kubectl's `--request-timeout`: a number of seconds, or a duration with units.
fn request_timeout(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    maestro_api::parse_duration(text)
        .map_err(|error| format!("{error}; give seconds (30) or a duration (30s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_takes_seconds_or_durations() {
        assert_eq!(request_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(request_timeout("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(request_timeout("0"), Ok(Duration::ZERO));
        assert!(request_timeout("soon").is_err());
    }

    #[test]
    fn impersonation_and_timeout_reach_the_config() {
        let flags = KubeFlags {
            as_user: Some("alice".into()),
            as_groups: vec!["approvers".into(), "dev".into()],
            request_timeout: Some(Duration::from_secs(5)),
            ..KubeFlags::default()
        };
        let mut config = Config::new(http::Uri::from_static("https://127.0.0.1:6443"));
        flags.apply_overrides(&mut config);
        assert_eq!(config.auth_info.impersonate.as_deref(), Some("alice"));
        assert_eq!(
            config.auth_info.impersonate_groups,
            Some(vec!["approvers".to_string(), "dev".to_string()])
        );
        assert_eq!(config.read_timeout, Some(Duration::from_secs(5)));

        let mut config = Config::new(http::Uri::from_static("https://127.0.0.1:6443"));
        KubeFlags {
            request_timeout: Some(Duration::ZERO),
            ..KubeFlags::default()
        }
        .apply_overrides(&mut config);
        assert_eq!(config.read_timeout, None);
    }

    #[tokio::test]
    async fn a_named_context_is_used() -> anyhow::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("maestro-cli-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("config");
        std::fs::write(
            &path,
            r#"apiVersion: v1
kind: Config
current-context: one
clusters:
- name: one
  cluster: {server: "https://10.0.0.1:6443"}
- name: two
  cluster: {server: "https://10.0.0.2:6443"}
users:
- name: u
  user: {token: abc}
contexts:
- name: one
  context: {cluster: one, user: u, namespace: first}
- name: two
  context: {cluster: two, user: u, namespace: second}
"#,
        )?;
        let flags = KubeFlags {
            kubeconfig: Some(path.clone()),
            context: Some("two".into()),
            ..KubeFlags::default()
        };
        let config = flags.config().await?;
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.2:6443/");
        assert_eq!(config.default_namespace, "second");
        let missing = KubeFlags {
            kubeconfig: Some(path),
            context: Some("three".into()),
            ..KubeFlags::default()
        };
        assert!(missing.config().await.is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
