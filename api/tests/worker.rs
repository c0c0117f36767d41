//! A worker's API against a real etcd with auth on: reads are served with the
//! worker's own etcd credential, writes are refused with a 403 that names the
//! control-plane machines, and nothing is written.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use fleet_api::server::{ApiState, Availability, router, worker};
use fleet_registry::auth::EtcdAdmin;
use fleet_registry::testing::Etcd;
use fleet_registry::{MachineId, MachineState, Registry};

fn machine(id: &str, ip: &str, disable_engine: bool) -> MachineState {
    MachineState {
        id: id.parse().expect("valid id"),
        public_ip: ip.to_owned(),
        metadata: BTreeMap::new(),
        version: "0".to_owned(),
        disable_engine,
        disable_agent: false,
        api_url: String::new(),
    }
}

async fn send(router: &axum::Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("reading the body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_worker_serves_reads_and_refuses_writes_naming_the_control_plane() {
    let prefix = "/api-worker/";
    let etcd = Etcd::start_auth(prefix).await;
    let admin = EtcdAdmin::connect(&etcd.root_config(prefix))
        .await
        .expect("connecting as root");
    let cp_id: MachineId = "cp".parse().expect("valid id");
    let w1_id: MachineId = "w1".parse().expect("valid id");
    let cp = admin.add_machine(&cp_id, true).await.expect("add cp");
    let w1 = admin.add_machine(&w1_id, false).await.expect("add w1");
    let connect = |username: String, password: String| {
        let config = etcd.config_as(prefix, &username, &password);
        async move { Registry::connect(&config).await.expect("connecting") }
    };
    let cp_registry = connect(cp.username, cp.password).await;
    let w1_registry = connect(w1.username, w1.password).await;
    let lease = cp_registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    cp_registry
        .register_machine(&machine("cp", "10.0.0.1", false), lease)
        .await
        .expect("cp registers");
    let w1_lease = w1_registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    w1_registry
        .register_machine(&machine("w1", "10.0.0.2", true), w1_lease)
        .await
        .expect("w1 registers");

    let available = Availability::new();
    available.set(true);
    let api = worker::read_only(
        router(ApiState {
            registry: w1_registry.clone(),
            token_limit: 100,
            version: "0".to_owned(),
            available,
        }),
        w1_registry.clone(),
        w1_id,
    );

    let (status, machines) = send(&api, Method::GET, "/fleet/v1/machines", "").await;
    assert_eq!(status, StatusCode::OK, "{machines}");
    assert_eq!(machines["machines"].as_array().map(Vec::len), Some(2));
    let (status, _) = send(&api, Method::GET, "/fleet/v1/units", "").await;
    assert_eq!(status, StatusCode::OK);

    let unit = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    let metadata = r#"[{"op":"add","path":"/w1/metadata/role","value":"web"}]"#;
    let batch = format!(
        r#"{{"units":[{}]}}"#,
        unit.replacen('{', r#"{"name":"a.service","#, 1)
    );
    for (method, uri, body) in [
        (Method::PUT, "/fleet/v1/units/a.service", unit),
        (Method::POST, "/fleet/x1/units", batch.as_str()),
        (Method::DELETE, "/fleet/v1/units/a.service", ""),
        (Method::PATCH, "/fleet/v1/machines", metadata),
    ] {
        let (status, error) = send(&api, method.clone(), uri, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("machine w1 is a worker")
                && message.ends_with("control-plane machine's API: cp (10.0.0.1)"),
            "{method} {uri}: {message}"
        );
    }
    assert!(
        w1_registry.units().await.expect("units").is_empty(),
        "a refused write was stored"
    );
}
