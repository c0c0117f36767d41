//! One host reached over SSH, and the shell each enrol and disenrol step runs
//! there. Every script is small, says what it does, and runs as root (`sudo
//! -n` when the SSH user is not root); secrets and the package go on stdin.

use std::path::Path;

use crate::ssh::SshError;
use crate::ssh::master::Master;
use crate::ssh::script::{Captured, Input, sh_quote};

use super::conf::Credential;

/// fleet.conf on the host, where fleetd reads it by default.
pub const CONF: &str = "/etc/fleet/fleet.conf";
/// The previous fleet.conf while an enrol runs (restored if it fails).
const BACKUP: &str = "/etc/fleet/.fleet.conf.enrol-backup";

/// A connected host and whether root's commands need sudo.
pub struct Host {
    pub master: Master,
    pub sudo: bool,
}

/// Where `fleetd etcd-auth` on the host finds etcd.
#[derive(Clone, Copy, Debug)]
pub enum EtcdAt<'a> {
    /// As the host's own fleet.conf says (disenrol: fleet is configured there).
    HostConf,
    /// These servers and `--conf` options (enrol: before fleet.conf is written).
    Given {
        servers: &'a [String],
        options: &'a [(String, String)],
    },
}

/// A step that could not be done on the host: the words to print.
#[derive(Debug)]
pub struct Refused(pub String);

impl From<SshError> for Refused {
    fn from(error: SshError) -> Refused {
        Refused(format!("SSH: {error}"))
    }
}

type Result<T> = std::result::Result<T, Refused>;

impl Host {
    /// Runs `script` as the SSH user.
    pub async fn as_user(&self, script: &str) -> Result<Captured> {
        Ok(self
            .master
            .run_script(script, false, Input::Nothing)
            .await?)
    }

    /// Runs `script` as root with `input`.
    pub async fn as_root(&self, script: &str, input: Input<'_>) -> Result<Captured> {
        Ok(self.master.run_script(script, self.sudo, input).await?)
    }

    /// Runs `script` as root; a non-zero exit is refused with `what` and
    /// what the script said last.
    pub async fn must(&self, what: &str, script: &str, input: Input<'_>) -> Result<Captured> {
        let captured = self.as_root(script, input).await?;
        if captured.success() {
            Ok(captured)
        } else {
            Err(Refused(format!("{what}: {}", captured.reason())))
        }
    }

    /// The current fleet.conf, `None` when there is none.
    pub async fn read_conf(&self) -> Result<Option<String>> {
        let script = format!("[ -e {CONF} ] || exit 3; cat {CONF}");
        let captured = self.as_root(&script, Input::Nothing).await?;
        match captured.code {
            0 => Ok(Some(captured.stdout)),
            3 => Ok(None),
            _ => Err(Refused(format!("reading {CONF}: {}", captured.reason()))),
        }
    }

    /// Checks from the host that etcd answers at `urls` (at least one):
    /// `GET /health` with curl, else a TCP connect. An https member that
    /// refuses curl (an etcd that requires client certificates answers no
    /// anonymous request) counts when its port accepts a connection: the
    /// host reaches it, and fleetd proves the credentials when it starts.
    /// Returns the reachable ones.
    pub async fn reachable_etcd(&self, urls: &[String], curl: bool) -> Result<Vec<String>> {
        let mut script = String::new();
        for url in urls {
            let (host, port) = host_port(url);
            let tcp = sh_quote(&format!("exec 3<>/dev/tcp/{host}/{port}"));
            let line = if curl {
                // -k: a reachability probe that sends no secret; fleetd
                // itself verifies etcd's certificate with etcd_cafile.
                let tls_fallback = if url.starts_with("https://") {
                    format!(
                        "if [ \"$code\" != 200 ] && timeout 3 bash -c {tcp} 2>/dev/null; then code=200; fi; "
                    )
                } else {
                    String::new()
                };
                format!(
                    "code=$(curl -s -k -m 3 -o /dev/null -w '%{{http_code}}' {}/health); {tls_fallback}echo \"$code\"\n",
                    sh_quote(url.trim_end_matches('/'))
                )
            } else {
                format!(
                    "if timeout 3 bash -c {tcp} 2>/dev/null; then echo 200; else echo 000; fi\n"
                )
            };
            script.push_str(&line);
        }
        let captured = self.as_user(&script).await?;
        Ok(urls
            .iter()
            .zip(captured.stdout.lines())
            .filter(|(_, code)| code.trim() == "200")
            .map(|(url, _)| url.clone())
            .collect())
    }

    /// Streams the package into a private directory on the host; returns
    /// that directory.
    pub async fn upload(&self, package: &Path, size: u64) -> Result<String> {
        let script = "set -e; umask 077; d=$(mktemp -d /var/tmp/fleet-enrol.XXXXXX); \
                      cat > \"$d/fleet.deb\"; echo \"$d\"; stat -c %s \"$d/fleet.deb\"";
        let captured = self
            .must("copying the package", script, Input::File(package))
            .await?;
        let mut lines = captured.stdout.lines();
        let dir = lines.next().unwrap_or_default().trim().to_owned();
        let got: u64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if !dir.starts_with("/var/tmp/fleet-enrol.") {
            return Err(Refused(format!(
                "copying the package: unexpected answer {:?}",
                captured.stdout
            )));
        }
        if got != size {
            let _ = self.remove_upload(&dir).await;
            return Err(Refused(format!(
                "copying the package: {got} of {size} bytes arrived"
            )));
        }
        Ok(dir)
    }

    pub async fn remove_upload(&self, dir: &str) -> Result<Captured> {
        self.as_root(&format!("rm -rf {}", sh_quote(dir)), Input::Nothing)
            .await
    }

    pub async fn dpkg_install(&self, dir: &str) -> Result<Captured> {
        let script = format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i {}/fleet.deb",
            sh_quote(dir)
        );
        self.must("dpkg -i", &script, Input::Nothing).await
    }

    pub async fn dpkg_purge(&self) -> Result<Captured> {
        self.must(
            "dpkg -P fleet",
            "DEBIAN_FRONTEND=noninteractive dpkg -P fleet",
            Input::Nothing,
        )
        .await
    }

    /// `fleetd etcd-auth` on the host with etcd's root credentials (the
    /// password on stdin), finding etcd as `at` says.
    pub async fn etcd_auth(
        &self,
        root: &Credential,
        at: EtcdAt<'_>,
        command: &str,
    ) -> Result<Captured> {
        let (servers, config) = match at {
            // The root user and password override the machine's own credential.
            EtcdAt::HostConf => (String::new(), ""),
            // Nothing of a fleet.conf on the host is read: the servers and the etcd
            // options enrol writes (etcd_key_prefix, the TLS files), as FLEET_* variables.
            EtcdAt::Given { servers, options } => {
                let mut env = format!("FLEET_ETCD_SERVERS={} ", sh_quote(&servers.join(",")));
                for (key, value) in options.iter().filter(|(key, _)| key.starts_with("etcd_")) {
                    env.push_str(&format!(
                        "FLEET_{}={} ",
                        key.to_uppercase(),
                        sh_quote(value)
                    ));
                }
                (env, " --config /dev/null")
            }
        };
        let script = format!(
            "IFS= read -r FLEET_ETCD_PASSWORD; export FLEET_ETCD_PASSWORD; \
             FLEET_ETCD_USERNAME={} {servers}fleetd etcd-auth{config} {command}",
            sh_quote(&root.username)
        );
        let input = format!("{}\n", root.password);
        self.must(
            &format!("fleetd etcd-auth {command}"),
            &script,
            Input::Bytes(input.as_bytes()),
        )
        .await
    }

    /// Writes fleet.conf atomically (a 0600 file renamed over the old one),
    /// keeping the old one aside until [`Host::keep_conf`] or
    /// [`Host::restore_conf`]. `Ok(true)` when it had to create /etc/fleet.
    pub async fn write_conf(&self, text: &str) -> Result<bool> {
        let script = format!(
            "set -e; umask 077; [ -d /etc/fleet ] || {{ mkdir -p /etc/fleet; echo made-dir; }}; \
             if [ -e {CONF} ]; then cp -p {CONF} {BACKUP}; fi; \
             cat > {CONF}.enrol-new; chmod 0600 {CONF}.enrol-new; mv -f {CONF}.enrol-new {CONF}"
        );
        let written = self
            .must(
                &format!("writing {CONF}"),
                &script,
                Input::Bytes(text.as_bytes()),
            )
            .await?;
        Ok(written.stdout.contains("made-dir"))
    }

    /// Drops the kept old fleet.conf (the enrol succeeded).
    pub async fn keep_conf(&self) -> Result<Captured> {
        self.as_root(&format!("rm -f {BACKUP}"), Input::Nothing)
            .await
    }

    /// Puts the old fleet.conf back, or removes ours when there was none
    /// (and /etc/fleet when this run made it).
    pub async fn restore_conf(&self, had_one: bool, made_dir: bool) -> Result<Captured> {
        let script = match (had_one, made_dir) {
            (true, _) => format!("mv -f {BACKUP} {CONF}"),
            (false, false) => format!("rm -f {CONF} {BACKUP}"),
            (false, true) => format!("rm -f {CONF} {BACKUP}; rmdir /etc/fleet"),
        };
        self.must("restoring fleet.conf", &script, Input::Nothing)
            .await
    }

    /// Whether fleet.socket and fleet.service are enabled and fleet.service runs.
    pub async fn fleet_running(&self) -> Result<bool> {
        let captured = self
            .as_user("systemctl is-enabled fleet.socket fleet.service; systemctl is-active fleet.service")
            .await?;
        Ok(captured.stdout.lines().map(str::trim).collect::<Vec<_>>()
            == ["enabled", "enabled", "active"])
    }

    /// Enables and (re)starts fleet.
    pub async fn start_fleet(&self, restart: bool) -> Result<Captured> {
        let verb = if restart { "restart" } else { "start" };
        let script = format!(
            "set -e; systemctl daemon-reload; systemctl enable fleet.socket fleet.service; \
             systemctl start fleet.socket; systemctl {verb} fleet.service"
        );
        self.must("starting fleet", &script, Input::Nothing).await
    }

    pub async fn stop_fleet(&self) -> Result<Captured> {
        self.must(
            "stopping fleet",
            "systemctl disable --now fleet.service fleet.socket",
            Input::Nothing,
        )
        .await
    }

    /// The last lines fleetd logged (to show why it did not report in).
    pub async fn fleet_journal(&self) -> String {
        match self
            .as_root(
                "journalctl -u fleet.service -n 5 --no-pager -o cat",
                Input::Nothing,
            )
            .await
        {
            Ok(captured) => captured.stdout,
            Err(Refused(why)) => why,
        }
    }
}

/// `host` and `port` of `http(s)://host:port[/]` (port 2379 when absent).
fn host_port(url: &str) -> (String, String) {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() => {
            (host.trim_matches(['[', ']']).to_owned(), port.to_owned())
        }
        _ => (rest.to_owned(), "2379".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_give_host_and_port() {
        assert_eq!(
            host_port("http://10.0.0.1:2379"),
            ("10.0.0.1".into(), "2379".into())
        );
        assert_eq!(host_port("https://e/"), ("e".into(), "2379".into()));
        assert_eq!(
            host_port("http://[fd00::1]:4001"),
            ("fd00::1".into(), "4001".into())
        );
    }
}
