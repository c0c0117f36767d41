//! The foundation of a fleet cluster, end to end (issue 2): machines register and leave,
//! the API answers on the unix socket and on TCP, metadata can be edited, a duplicate machine
//! id is refused, and bad input (config, etcd address, PATCH body, fleetctl flag) is said.
//!
//! Also home of [`Fleet`], the small fleetctl/API driver that `units.rs` and `agent.rs` share.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use functional_tests::{Cluster, bin_dir, wait_until};

/// The conf lines every test cluster uses: a short TTL and grace, so that losing a machine
/// is noticed in seconds instead of the defaults' 30 s + 10 s.
pub(crate) const FAST_CONF: &[&str] = &["agent_ttl=3s", "machine_loss_grace=2"];

/// The API's 503 text, the original's (Documentation/compatibility.md, "API transport and
/// errors").
pub(crate) const UNAVAILABLE: &str = "fleet server unable to communicate with etcd";

/// How long a machine may take to appear or vanish in `list-machines` (TTL 3 s + slack for
/// 2 busy cores).
const MACHINE_DEADLINE: Duration = Duration::from_secs(20);

/// How long a killed machine may stay listed: its lease's TTL (3 s) plus a little.
const LEAVE_DEADLINE: Duration = Duration::from_secs(10);

/// One row of `list-machines --full`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MachineRow {
    pub id: String,
    pub ip: String,
    pub metadata: String,
}

/// One row of `list-units --full`: `unit, active, sub, machine id` (the `/ip` cut off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnitRow {
    pub unit: String,
    pub active: String,
    pub sub: String,
    pub machine: String,
}

/// One row of `list-unit-files --full`: `unit, dstate, state, target machine id, hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnitFileRow {
    pub unit: String,
    pub dstate: String,
    pub state: String,
    pub target: String,
    pub hash: String,
}

/// An HTTP answer: status, Content-Type, body.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Drives fleetctl and the API of one cluster through one host's TCP endpoint.
pub(crate) struct Fleet<'a> {
    pub cluster: &'a Cluster,
    pub endpoint: String,
}

impl<'a> Fleet<'a> {
    /// Talks to the cluster through `host`'s API.
    pub fn new(cluster: &'a Cluster, host: &str) -> anyhow::Result<Fleet<'a>> {
        Ok(Fleet {
            cluster,
            endpoint: cluster.endpoint(host)?,
        })
    }

    /// `fleetctl --endpoint <endpoint> args...`, whatever its exit status.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["--endpoint", self.endpoint.as_str()];
        all.extend_from_slice(args);
        self.cluster.fleetctl(all)
    }

    /// Like [`Fleet::ctl`], failing unless it exits 0; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.ctl(args)?;
        if !output.status.success() {
            bail!(
                "fleetctl {} failed ({}): stdout {:?}, stderr {:?}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `list-machines --no-legend --full`.
    pub fn machines(&self) -> anyhow::Result<Vec<MachineRow>> {
        let out = self.ctl_ok(&[
            "list-machines",
            "--no-legend",
            "--full",
            "--fields",
            "machine,ip,metadata",
        ])?;
        rows(&out, 3)?
            .into_iter()
            .map(|row| {
                Ok(MachineRow {
                    id: row[0].clone(),
                    ip: row[1].clone(),
                    metadata: row[2].clone(),
                })
            })
            .collect()
    }

    /// `list-units --no-legend --full`.
    pub fn units(&self) -> anyhow::Result<Vec<UnitRow>> {
        let out = self.ctl_ok(&[
            "list-units",
            "--no-legend",
            "--full",
            "--fields",
            "unit,active,sub,machine",
        ])?;
        Ok(rows(&out, 4)?
            .into_iter()
            .map(|row| UnitRow {
                unit: row[0].clone(),
                active: row[1].clone(),
                sub: row[2].clone(),
                machine: cut_ip(&row[3]),
            })
            .collect())
    }

    /// `list-unit-files --no-legend --full`.
    pub fn unit_files(&self) -> anyhow::Result<Vec<UnitFileRow>> {
        let out = self.ctl_ok(&[
            "list-unit-files",
            "--no-legend",
            "--full",
            "--fields",
            "unit,dstate,state,target,hash",
        ])?;
        Ok(rows(&out, 5)?
            .into_iter()
            .map(|row| UnitFileRow {
                unit: row[0].clone(),
                dstate: row[1].clone(),
                state: row[2].clone(),
                target: cut_ip(&row[3]),
                hash: row[4].clone(),
            })
            .collect())
    }

    /// Waits until every unit of `names` is `active` in `list-units` on exactly one machine
    /// (global units excepted: pass them to [`Fleet::wait_units`]); returns unit → machine.
    pub fn wait_active(
        &self,
        names: &[&str],
        deadline: Duration,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut placed = BTreeMap::new();
        wait_until(deadline, &format!("{names:?} active"), || {
            let units = self.units()?;
            placed.clear();
            for name in names {
                let rows: Vec<&UnitRow> = units.iter().filter(|row| row.unit == *name).collect();
                if rows.len() != 1 || rows[0].active != "active" {
                    return Ok(false);
                }
                placed.insert((*name).to_string(), rows[0].machine.clone());
            }
            Ok(true)
        })
        .with_context(|| format!("list-units: {:?}", self.units().unwrap_or_default()))?;
        Ok(placed)
    }

    /// Waits until `condition` holds on `list-units`.
    pub fn wait_units<F>(
        &self,
        deadline: Duration,
        what: &str,
        mut condition: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(&[UnitRow]) -> bool,
    {
        wait_until(deadline, what, || Ok(condition(&self.units()?)))
            .with_context(|| format!("list-units: {:?}", self.units().unwrap_or_default()))
    }

    /// A request to the API over TCP from outside (curl on this machine).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "10", "-X", method]);
        if let Some(content_type) = content_type {
            command.args(["-H", &format!("Content-Type: {content_type}")]);
        }
        if let Some(body) = body {
            command.args(["--data-binary", body]);
        }
        command
            .args(["-w", "\n%{http_code}\n%{content_type}"])
            .arg(format!("{}{path}", self.endpoint))
            .stdin(Stdio::null());
        let output = command.output().context("running curl")?;
        if !output.status.success() {
            bail!(
                "curl {method} {path} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_answer(&String::from_utf8_lossy(&output.stdout))
    }
}

/// The API inside `host`, over `/var/run/fleet.sock` (curl in the host).
pub(crate) fn api_in_host(cluster: &Cluster, host: &str, path: &str) -> anyhow::Result<Answer> {
    let url = format!("http://localhost{path}");
    let out = cluster.exec_ok(
        host,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--unix-socket",
            "/var/run/fleet.sock",
            "-w",
            "\n%{http_code}\n%{content_type}",
            &url,
        ],
    )?;
    parse_answer(&out)
}

/// Splits curl's `body \n code \n content-type` output.
fn parse_answer(out: &str) -> anyhow::Result<Answer> {
    let mut parts = out.rsplitn(3, '\n');
    let content_type = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("no status in curl output {out:?}"))?;
    let body = parts.next().unwrap_or_default().to_string();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// Splits table output into rows of exactly `n_fields` whitespace-separated fields.
fn rows(out: &str, n_fields: usize) -> anyhow::Result<Vec<Vec<String>>> {
    out.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            if fields.len() != n_fields {
                bail!("expected {n_fields} fields in row {line:?}");
            }
            Ok(fields)
        })
        .collect()
}

/// A machine legend without its `/ip`, as the original harness cuts it.
fn cut_ip(legend: &str) -> String {
    legend.split('/').next().unwrap_or_default().to_string()
}

/// Installs fleet with [`FAST_CONF`] on every host and waits until all are listed.
pub(crate) fn install_everywhere(cluster: &Cluster) -> anyhow::Result<()> {
    install_everywhere_with(cluster, &[])
}

/// Installs fleet with [`FAST_CONF`] and then `extra` on every host and waits until all are
/// listed.
pub(crate) fn install_everywhere_with(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<()> {
    let conf: Vec<&str> = FAST_CONF.iter().chain(extra).copied().collect();
    for host in cluster.hosts() {
        cluster.install_fleet(host, &conf)?;
    }
    let fleet = Fleet::new(cluster, &cluster.hosts()[0])?;
    let n_hosts = cluster.hosts().len();
    wait_until(MACHINE_DEADLINE, "every machine listed", || {
        Ok(fleet.machines()?.len() == n_hosts)
    })
}

/// The host whose machine id is `machine_id`.
pub(crate) fn host_of(cluster: &Cluster, machine_id: &str) -> anyhow::Result<String> {
    for host in cluster.hosts() {
        if cluster.machine_id(host)? == machine_id {
            return Ok(host.clone());
        }
    }
    bail!("no host has machine id {machine_id:?}")
}

/// The default `etcd_key_prefix`.
pub(crate) const PREFIX: &str = "/_coreos.com/fleet/";

/// The keys under `P/<sub>` in etcd, read directly with etcdctl.
pub(crate) fn etcd_keys(cluster: &Cluster, sub: &str) -> anyhow::Result<Vec<String>> {
    let endpoint = cluster
        .etcd_url()
        .split(',')
        .next()
        .context("no etcd url")?
        .to_string();
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "get", "--prefix", "--keys-only"])
        .arg(format!("{PREFIX}{sub}"))
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl")?;
    if !output.status.success() {
        bail!(
            "etcdctl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Rewrites `/etc/fleet/fleet.conf` in `host` (from outside, through its root).
fn write_conf(cluster: &Cluster, host: &str, text: &str) -> anyhow::Result<()> {
    let path = cluster.host_root(host).join("etc/fleet/fleet.conf");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_conf(cluster: &Cluster, host: &str) -> anyhow::Result<String> {
    let path = cluster.host_root(host).join("etc/fleet/fleet.conf");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Waits until `host`'s API answers `GET /fleet/v1/machines` with 200.
fn wait_api_up(fleet: &Fleet<'_>) -> anyhow::Result<()> {
    wait_until(MACHINE_DEADLINE, "the API to answer 200", || {
        Ok(fleet.api("GET", "/fleet/v1/machines", None, None)?.status == 200)
    })
}

/// Waits until `fleet`'s API answers 503 with the spec's text.
fn wait_api_unavailable(fleet: &Fleet<'_>) -> anyhow::Result<()> {
    let mut last = None;
    wait_until(MACHINE_DEADLINE, "the API to answer 503", || {
        let answer = fleet.api("GET", "/fleet/v1/machines", None, None)?;
        let ok = answer.status == 503 && answer.body.contains(UNAVAILABLE);
        last = Some(answer);
        Ok(ok)
    })
    .with_context(|| format!("last answer: {last:?}"))
}

/// Three machines register with their IPs and metadata, are served on the unix socket and TCP,
/// edit metadata, leave when killed, refuse a duplicate machine id, and say what is wrong with
/// bad config, an unreachable etcd, a malformed PATCH and an unknown fleetctl flag; reload on
/// SIGHUP and stop cleanly.
#[test]
fn machines_register_leave_and_bad_input_is_said() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let mut ids = BTreeMap::new();
    for host in cluster.hosts() {
        ids.insert(host.clone(), cluster.machine_id(host)?);
    }

    // list-machines from outside: every machine with its IP and metadata.
    let mut machines = fleet.machines()?;
    machines.sort_by(|a, b| a.ip.cmp(&b.ip));
    let mut expected = Vec::new();
    for host in cluster.hosts() {
        expected.push(MachineRow {
            id: ids[host].clone(),
            ip: cluster.ip(host)?,
            metadata: format!("hostname={host}"),
        });
    }
    assert_eq!(machines, expected);

    // The unix socket inside a host: 200 JSON with the same machines.
    let answer = api_in_host(&cluster, "h2", "/fleet/v1/machines")?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    let page: serde_json::Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("machines page {:?}", answer.body))?;
    let listed = page["machines"]
        .as_array()
        .map(|machines| machines.len())
        .unwrap_or_default();
    assert_eq!(listed, 3, "{page}");

    // Metadata PATCH (the original's nested value form) shows up in list-machines.
    let patch = format!(
        r#"[{{"op":"add","path":"/{}/metadata/foo","value":{{"value":"bar"}}}}]"#,
        ids["h1"]
    );
    let answer = fleet.api(
        "PATCH",
        "/fleet/v1/machines",
        Some("application/json"),
        Some(&patch),
    )?;
    assert_eq!(answer.status, 204, "{answer:?}");
    let h1_metadata = || -> anyhow::Result<String> {
        Ok(fleet
            .machines()?
            .into_iter()
            .find(|row| row.id == ids["h1"])
            .map(|row| row.metadata)
            .unwrap_or_default())
    };
    wait_until(Duration::from_secs(10), "foo=bar in h1's metadata", || {
        Ok(h1_metadata()? == "foo=bar,hostname=h1")
    })?;

    // Malformed PATCHes: 400 with a JSON error, and nothing changes.
    let bad_op = format!(
        r#"[{{"op":"noop","path":"/{}/metadata/foo","value":{{"value":"baz"}}}}]"#,
        ids["h1"]
    );
    let bad_path = format!(
        r#"[{{"op":"add","path":"/{}/foo","value":{{"value":"baz"}}}}]"#,
        ids["h1"]
    );
    for body in [bad_op.as_str(), bad_path.as_str(), "this is not json", "{}"] {
        let answer = fleet.api(
            "PATCH",
            "/fleet/v1/machines",
            Some("application/json"),
            Some(body),
        )?;
        assert_eq!(answer.status, 400, "PATCH {body}: {answer:?}");
        assert!(
            answer.content_type.starts_with("application/json"),
            "{answer:?}"
        );
        assert!(answer.body.contains("\"error\""), "{answer:?}");
    }
    assert_eq!(h1_metadata()?, "foo=bar,hostname=h1");

    // remove takes the key away again (an empty value).
    let remove = format!(
        r#"[{{"op":"remove","path":"/{}/metadata/foo","value":{{"value":""}}}}]"#,
        ids["h1"]
    );
    let answer = fleet.api(
        "PATCH",
        "/fleet/v1/machines",
        Some("application/json"),
        Some(&remove),
    )?;
    assert_eq!(answer.status, 204, "{answer:?}");
    wait_until(
        Duration::from_secs(10),
        "foo gone from h1's metadata",
        || Ok(h1_metadata()? == "hostname=h1"),
    )?;

    // A page token for another page size: 400 with a JSON error
    // (Documentation/compatibility.md, "Pagination").
    let answer = fleet.api(
        "GET",
        "/fleet/v1/machines?nextPageToken=EwBMLg==",
        None,
        None,
    )?;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );

    // The endpoint from the environment alone (TestFleetctlWithEnv).
    let output = Command::new(bin_dir().join("fleetctl"))
        .args(["list-machines", "--no-legend"])
        .env("FLEETCTL_ENDPOINT", &fleet.endpoint)
        .stdin(Stdio::null())
        .output()?;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        3,
        "{output:?}"
    );

    // An unknown fleetctl flag: a non-zero exit and a message naming it.
    let output = fleet.ctl(&["list-machines", "--no-such-flag"])?;
    assert!(
        !output.status.success(),
        "unknown flag accepted: {output:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--no-such-flag"), "stderr {stderr:?}");

    // A killed machine leaves the list once its lease (agent_ttl=3s) expires.
    cluster.break_host("h3", "kill")?;
    wait_until(LEAVE_DEADLINE, "h3 to leave list-machines", || {
        Ok(fleet.machines()?.iter().all(|row| row.id != ids["h3"]))
    })?;
    assert_eq!(fleet.machines()?.len(), 2);

    // A duplicate machine id: h2 takes h1's id. h1's record stays, h2's API says 503.
    let h2 = Fleet::new(&cluster, "h2")?;
    let h2_root = cluster.host_root("h2");
    std::fs::write(h2_root.join("etc/machine-id"), format!("{}\n", ids["h1"]))?;
    cluster.exec_ok("h2", &["systemctl", "restart", "--no-block", "fleet"])?;
    wait_api_unavailable(&h2)?;
    let output = h2.ctl(&["list-machines"])?;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(UNAVAILABLE), "stderr {stderr:?}");
    let h1_row = fleet
        .machines()?
        .into_iter()
        .find(|row| row.id == ids["h1"])
        .context("h1 vanished from list-machines")?;
    assert_eq!(h1_row.ip, cluster.ip("h1")?, "h2 took over h1's record");
    // fleet itself stays up in h2: it waits (systemd may still call it `activating`, since
    // READY=1 waits for the registration), it does not crash-loop.
    let show = cluster.exec_ok(
        "h2",
        &["systemctl", "show", "-p", "ActiveState,NRestarts", "fleet"],
    )?;
    assert!(
        show.contains("NRestarts=0")
            && (show.contains("ActiveState=active") || show.contains("ActiveState=activating")),
        "fleet in h2: {show}"
    );

    // h2 gets its own id back and registers again.
    std::fs::write(h2_root.join("etc/machine-id"), format!("{}\n", ids["h2"]))?;
    cluster.exec_ok("h2", &["systemctl", "restart", "fleet"])?;
    wait_until(MACHINE_DEADLINE, "h2 listed again", || {
        Ok(fleet.machines()?.iter().any(|row| row.id == ids["h2"]))
    })?;

    // A config value that does not parse: fleet refuses to start and names the option.
    let conf = read_conf(&cluster, "h2")?;
    write_conf(&cluster, "h2", &format!("{conf}agent_ttl=banana\n"))?;
    let restart = cluster.exec("h2", &["systemctl", "restart", "fleet"])?;
    assert!(
        !restart.status.success(),
        "fleet started with agent_ttl=banana"
    );
    let journal = cluster.exec_ok("h2", &["journalctl", "--no-pager", "-u", "fleet"])?;
    assert!(
        journal.contains("agent_ttl") && journal.contains("banana"),
        "the journal does not name the bad option: {journal}"
    );

    // An etcd nobody listens on: fleet runs, and its API says 503.
    let unreachable = conf.replace(cluster.etcd_url(), "http://10.231.0.1:1");
    assert_ne!(unreachable, conf, "fleet.conf has no etcd_servers line");
    write_conf(&cluster, "h2", &unreachable)?;
    cluster.exec_ok("h2", &["systemctl", "reset-failed", "fleet"])?;
    cluster.exec_ok("h2", &["systemctl", "restart", "--no-block", "fleet"])?;
    wait_api_unavailable(&h2)?;

    // Restored, h2 works again.
    write_conf(&cluster, "h2", &conf)?;
    cluster.exec_ok("h2", &["systemctl", "restart", "fleet"])?;
    wait_api_up(&h2)?;
    wait_until(MACHINE_DEADLINE, "h2 listed after the restore", || {
        Ok(h2.machines()?.iter().any(|row| row.id == ids["h2"]))
    })?;

    // SIGHUP (TestReconfigureServer): the config is reloaded and the API keeps serving.
    cluster.exec_ok("h2", &["systemctl", "kill", "-s", "SIGHUP", "fleet"])?;
    wait_until(Duration::from_secs(10), "the reload logged", || {
        let journal = cluster.exec_ok("h2", &["journalctl", "--no-pager", "-u", "fleet"])?;
        Ok(journal.contains("Reloading configuration"))
    })?;
    wait_api_up(&h2)?;
    h2.ctl_ok(&["list-units"])?;
    let journal = cluster.exec_ok("h2", &["journalctl", "--no-pager", "-u", "fleet"])?;
    assert!(
        !journal.contains("Failed serving HTTP on listener:"),
        "{journal}"
    );

    // A clean stop (TestShutdown): exit 0 on SIGTERM, and the machine leaves at once (it
    // revokes its lease instead of letting it expire).
    cluster.exec_ok("h2", &["systemctl", "stop", "fleet"])?;
    let show = cluster.exec_ok(
        "h2",
        &["systemctl", "show", "-p", "ActiveState,Result", "fleet"],
    )?;
    assert!(
        show.contains("ActiveState=inactive") && show.contains("Result=success"),
        "fleet in h2 after stop: {show}"
    );
    let machines = fleet.machines()?;
    assert!(
        machines.iter().all(|row| row.id != ids["h2"]),
        "h2 still listed right after a clean stop: {machines:?}"
    );
    Ok(())
}
