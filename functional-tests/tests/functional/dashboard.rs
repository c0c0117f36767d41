//! The dashboard (`/ui/`) in a real headless Chromium against a real cluster: it shows the
//! machines and units the API returns, its start button makes a unit active, and it is
//! photographed (laptop and phone widths) under `target/ui-screenshots/`. Its logs button
//! shows the unit's recent journal lines, read on the unit's machine through the API.
//!
//! Chromium is driven through `chromedriver`'s W3C WebDriver protocol (plain HTTP and JSON,
//! spoken with curl like the rest of these tests), so no browser-automation crate is needed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use functional_tests::{Cluster, wait_until, workspace_root};
use serde_json::{Value, json};

use crate::foundation::{Fleet, install_everywhere};

const DEADLINE: Duration = Duration::from_secs(30);

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> anyhow::Result<Browser> {
        for (tool, package) in [
            ("chromedriver", "chromium-driver"),
            ("chromium", "chromium"),
        ] {
            if Command::new("which").arg(tool).output()?.stdout.is_empty() {
                bail!("{tool} is missing: install Debian's {package} (scripts/setup.sh)");
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
        };
        wait_until(DEADLINE, "chromedriver ready", || {
            Ok(browser
                .call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == true))
        })?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root in a container: Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            }
        }}});
        let session = browser.call("POST", "/session", Some(&capabilities))?;
        browser.session = session["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver request; the `value` of its answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "60", "-X", method]);
        command.args(["-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            command.args(["--data-binary", &body.to_string()]);
        } else if method == "POST" {
            command.args(["--data-binary", "{}"]);
        }
        let output = command.arg(format!("{}{path}", self.base)).output()?;
        if !output.status.success() {
            bail!(
                "WebDriver {method} {path}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let answer: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("WebDriver {method} {path}: not JSON"))?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!(
                "WebDriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }

    fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let rect = json!({"width": width, "height": height});
        self.session_call("POST", "/window/rect", Some(&rect))
            .map(drop)
    }

    fn open(&self, url: &str) -> anyhow::Result<()> {
        self.session_call("POST", "/url", Some(&json!({"url": url})))
            .map(drop)
    }

    /// Runs `script` in the page and returns what it returns.
    fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn click(&self, css: &str) -> anyhow::Result<()> {
        let query = json!({"using": "css selector", "value": css});
        let element = self.session_call("POST", "/element", Some(&query))?;
        let id = element[ELEMENT_KEY].as_str().context("no element id")?;
        self.session_call("POST", &format!("/element/{id}/click"), None)
            .map(drop)
    }

    fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let data = self.session_call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().context("screenshot is not a string")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's tables, read from its DOM.
const READ_TABLES: &str = r#"
const cells = (row) => [...row.cells].map((c) => c.textContent);
return {
  machines: [...document.querySelectorAll('#machines tbody tr')].map(cells),
  units: [...document.querySelectorAll('#units tbody tr')].map(cells),
  events: document.querySelectorAll('#events li').length,
  live: document.getElementById('live').textContent,
};"#;

fn screenshots_dir() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The page lists what the API lists, a start from the page makes the unit active, and the
/// live feed shows the events of that start.
#[test]
fn dashboard_shows_the_cluster_and_starts_a_unit() -> anyhow::Result<()> {
    let cluster = Cluster::start(2)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let hello = workspace_root().join("examples/hello.service");
    fleet.ctl_ok(&["submit", &hello.to_string_lossy()])?;

    let browser = Browser::start()?;
    browser.resize(1280, 900)?;
    browser.open(&format!("{}/ui/", fleet.endpoint))?;
    let machines = fleet.machines()?;
    let mut tables = Value::Null;
    wait_until(
        DEADLINE,
        "the page lists both machines, hello.service and is live",
        || {
            tables = browser.eval(READ_TABLES)?;
            Ok(
                tables["machines"].as_array().map(Vec::len) == Some(machines.len())
                    && tables["units"].as_array().map(Vec::len) == Some(1)
                    && tables["live"] == "live",
            )
        },
    )
    .with_context(|| format!("page tables: {tables}"))?;
    for machine in &machines {
        let row = tables["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row[0] == machine.id.as_str())
            .with_context(|| format!("machine {} not on the page: {tables}", machine.id))?;
        assert_eq!(row[1], machine.ip.as_str(), "{tables}");
    }
    let unit = &tables["units"][0];
    assert_eq!(unit[0], "hello.service", "{tables}");
    assert_eq!(
        unit[1], "inactive",
        "target state of a submitted unit: {tables}"
    );

    // The table is redrawn on every event, so a button found may be gone before the click
    // lands (a stale element): click again until one lands (start is idempotent).
    wait_until(DEADLINE, "the start button clicked", || {
        Ok(browser
            .click("tr[data-unit='hello.service'] button[data-action='start']")
            .is_ok())
    })?;
    let placed = fleet.wait_active(&["hello.service"], DEADLINE)?;
    wait_until(
        DEADLINE,
        "the page shows hello.service active and its events",
        || {
            tables = browser.eval(READ_TABLES)?;
            let row = &tables["units"][0];
            Ok(row[1] == "launched"
                && row[4] == "active"
                && row[5] == "running"
                && tables["events"].as_u64().unwrap_or(0) >= 2)
        },
    )
    .with_context(|| format!("page tables: {tables}"))?;
    assert_eq!(
        tables["units"][0][3],
        placed["hello.service"].as_str(),
        "{tables}"
    );

    show_logs_on_the_unit_machine(&cluster, &browser, &placed)?;

    let dir = screenshots_dir()?;
    browser.screenshot(&dir.join("dashboard-laptop.png"))?;
    browser.resize(390, 844)?;
    browser.screenshot(&dir.join("dashboard-phone.png"))?;
    Ok(())
}

/// Opens the page on the machine that runs hello.service and clicks its logs button until the
/// journal lines the unit prints (`Hello, world`) are shown.
fn show_logs_on_the_unit_machine(
    cluster: &Cluster,
    browser: &Browser,
    placed: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let machine = placed
        .get("hello.service")
        .context("hello.service has no machine")?;
    let mut host = None;
    for name in cluster.hosts() {
        if cluster.machine_id(name)? == *machine {
            host = Some(name.clone());
        }
    }
    let host = host.with_context(|| format!("no host has machine id {machine}"))?;
    browser.open(&format!("{}/ui/", cluster.endpoint(&host)?))?;
    let mut shown = Value::Null;
    wait_until(
        DEADLINE,
        "the page shows hello.service's journal lines",
        || {
            if browser
                .click("tr[data-unit='hello.service'] button[data-action='logs']")
                .is_err()
            {
                return Ok(false); // The table is not drawn yet.
            }
            shown = browser.eval(
                "return { lines: document.getElementById('logs').textContent, \
             problem: document.getElementById('logs-error').textContent };",
            )?;
            Ok(shown["lines"]
                .as_str()
                .is_some_and(|text| text.contains("Hello, world")))
        },
    )
    .with_context(|| format!("logs section: {shown}"))
}
