//! The API router against a real etcd: every status code of the endpoints and
//! of PUT, pagination, the metadata PATCH, availability and the `Server` header.
//!
//! The router is driven in-process with `tower::ServiceExt::oneshot`, so no
//! socket is involved; the registry behind it is a real etcd started by
//! `fleet_registry::testing::Etcd`, shared by the tests that run at the same
//! time (each test has its own key prefix) and killed when the last one ends.
//! Every test that sends bad input reads the registry back to check that
//! nothing changed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::header::{CONTENT_TYPE, SERVER};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use fleet_api::entities::{
    Machine, MachinePage, Unit, UnitPage, UnitState as UnitStateEntity, UnitStatePage,
};
use fleet_api::server::{ApiState, Availability, router};
use fleet_api::token::PageToken;
use fleet_registry::testing::Etcd;
use fleet_registry::{
    LeaseId, MachineId, MachineState, Placement, Registry, ScheduleChange, TargetState, UnitState,
};
use fleet_systemd::unit::{UnitFile, UnitName};

const VERSION: &str = "9.8.7-test";
const JSON: &str = "application/json";

/// The etcd of the tests running now: started by the first, killed when the
/// last drops its handle (a `static` would never be dropped, leaking etcd).
async fn shared_etcd() -> Arc<Etcd> {
    static SHARED: tokio::sync::Mutex<Weak<Etcd>> = tokio::sync::Mutex::const_new(Weak::new());
    let mut shared = SHARED.lock().await;
    if let Some(etcd) = shared.upgrade() {
        return etcd;
    }
    let etcd = Arc::new(Etcd::start().await);
    *shared = Arc::downgrade(&etcd);
    etcd
}

/// A router over a fresh key prefix, available unless told otherwise.
struct Api {
    registry: Registry,
    router: Router,
    available: Availability,
    /// The shared etcd; `None` when the test owns its etcd.
    _etcd: Option<Arc<Etcd>>,
}

/// A response, body read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn entity<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.json()).expect("body is the expected entity")
    }

    fn content_type(&self) -> Option<&str> {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
    }

    /// Asserts an error entity with this status and message, with the JSON
    /// content type and the `Server` header.
    #[track_caller]
    fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "status of {self:?}");
        assert_eq!(
            self.json(),
            json!({"error": {"code": status, "message": message}}),
            "body of {self:?}"
        );
        assert_eq!(self.content_type(), Some(JSON), "content type of {self:?}");
        assert_eq!(
            self.headers.get(SERVER).map(|v| v.to_str().unwrap()),
            Some(format!("fleetd/{VERSION}").as_str())
        );
    }

    #[track_caller]
    fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status of {self:?}, body {:?}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

impl Api {
    async fn start(test_name: &str, token_limit: u16) -> Api {
        Api::start_on(shared_etcd().await, test_name, token_limit).await
    }

    async fn start_on(etcd: Arc<Etcd>, test_name: &str, token_limit: u16) -> Api {
        let registry = Registry::connect(&etcd.config(&format!("/api-test-{test_name}/")))
            .await
            .expect("connecting to the test etcd");
        let mut api = Api::over(registry, token_limit);
        api._etcd = Some(etcd);
        api
    }

    /// A router over `registry`, available.
    fn over(registry: Registry, token_limit: u16) -> Api {
        let available = Availability::new();
        available.set(true);
        let state = ApiState {
            registry: registry.clone(),
            token_limit,
            version: VERSION.to_owned(),
            available: available.clone(),
        };
        Api {
            registry,
            router: router(state),
            available,
            _etcd: None,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("reading the body")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, uri: &str) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri).await
    }

    /// A request with a body and the given `Content-Type` headers.
    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        content_types: &[&str],
        body: &str,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        for content_type in content_types {
            builder = builder.header(CONTENT_TYPE, *content_type);
        }
        self.send(builder.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    async fn put_unit(&self, name: &str, body: Value) -> Reply {
        self.call_with(
            Method::PUT,
            &format!("/fleet/v1/units/{name}"),
            &[JSON],
            &body.to_string(),
        )
        .await
    }

    async fn patch_machines(&self, body: &str) -> Reply {
        self.call_with(Method::PATCH, "/fleet/v1/machines", &[JSON], body)
            .await
    }

    /// What the registry holds: (name, hash, desired state) of every unit.
    async fn unit_records(&self) -> Vec<(String, String, TargetState)> {
        let units = self.registry.units().await.expect("reading units back");
        units
            .into_iter()
            .map(|unit| {
                (
                    unit.name.to_string(),
                    unit.hash.to_string(),
                    unit.desired_state,
                )
            })
            .collect()
    }

    async fn machines(&self) -> Vec<MachineState> {
        self.registry
            .machines()
            .await
            .expect("reading machines back")
    }

    async fn register_machine(&self, id: &str, metadata: &[(&str, &str)]) -> LeaseId {
        let lease = self
            .registry
            .grant_lease(Duration::from_secs(60))
            .await
            .expect("granting a lease");
        let machine = MachineState {
            id: machine_id(id),
            public_ip: format!("10.0.0.{}", id.len()),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: "0.1.0".to_owned(),
            disable_engine: false,
            disable_agent: false,
            api_url: String::new(),
        };
        self.registry
            .register_machine(&machine, lease)
            .await
            .expect("registering a machine");
        lease
    }
}

fn machine_id(id: &str) -> MachineId {
    MachineId::from_str(id).unwrap()
}

fn unit_name(name: &str) -> UnitName {
    UnitName::from_str(name).unwrap()
}

fn service_options(command: &str) -> Value {
    json!([{"section": "Service", "name": "ExecStart", "value": command}])
}

/// The hash the registry must hold for a unit PUT with these options.
fn hash_of(options: &Value) -> String {
    let options: Vec<fleet_api::entities::UnitOption> =
        serde_json::from_value(options.clone()).unwrap();
    fleet_api::server::unit_file_from_options(&options)
        .hash()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_503_until_available() {
    let api = Api::start("unavailable", 100).await;
    api.available.set(false);
    for uri in [
        "/fleet/v1/units",
        "/v1-alpha/machines",
        "/metrics",
        "/",
        "/nothing/here",
    ] {
        let reply = api.get(uri).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(
            reply.json(),
            json!({"error": {"code": 503, "message": "fleet server unable to communicate with etcd"}}),
            "{uri}"
        );
        assert_eq!(reply.content_type(), Some(JSON), "{uri}");
        // The original's 503 handler sits outside the `Server` middleware.
        assert!(
            reply.headers.get(SERVER).is_none(),
            "{uri} has a Server header"
        );
    }
    let reply = api
        .put_unit(
            "a.service",
            json!({"desiredState": "loaded", "options": service_options("/bin/true")}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.unit_records().await, vec![], "a 503 PUT must not write");

    api.available.set(true);
    let reply = api.get("/fleet/v1/units").await;
    reply.assert_status(200);
    assert_eq!(
        reply.headers.get(SERVER).unwrap(),
        &format!("fleetd/{VERSION}")
    );
    assert_eq!(reply.json(), json!({}), "an empty page is {{}}");
}

/// etcd down: every registry request is a 503 whose message names the cause
/// (never an empty 500), and nothing is written; etcd back: 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_a_503_that_says_why() {
    let mut etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config("/api-test-etcd-down/"))
        .await
        .expect("connecting to the test etcd");
    let api = Api::over(registry, 100);
    api.get("/fleet/v1/units").await.assert_status(200);

    etcd.stop();
    let unavailable = "fleet server unable to communicate with etcd: ";
    for uri in ["/fleet/v1/units", "/fleet/v1/machines", "/fleet/v1/state"] {
        let reply = api.get(uri).await;
        reply.assert_status(503);
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.starts_with(unavailable) && message.len() > unavailable.len(),
            "{uri}: the message must name the cause: {message:?}"
        );
        assert_eq!(reply.json()["error"]["code"], 503, "{uri}");
    }
    let reply = api
        .put_unit(
            "a.service",
            json!({"desiredState": "loaded", "options": service_options("/bin/true")}),
        )
        .await;
    reply.assert_status(503);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with(unavailable) && message.contains("etcd get unit"),
        "the failed request is named: {message:?}"
    );

    etcd.restart().await;
    api.get("/fleet/v1/units").await.assert_status(200);
    assert_eq!(api.unit_records().await, vec![], "a 503 PUT must not write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_method_rules() {
    let api = Api::start("routes", 100).await;
    for prefix in ["/fleet/v1", "/v1-alpha"] {
        let cases: &[(Method, &str, u16, &str)] = &[
            (
                Method::POST,
                "/units",
                405,
                "only GET supported against this resource",
            ),
            (
                Method::DELETE,
                "/units",
                405,
                "only GET supported against this resource",
            ),
            (
                Method::POST,
                "/units/a.service",
                405,
                "only GET, PUT and DELETE supported against this resource",
            ),
            (
                Method::PATCH,
                "/units/a.service",
                405,
                "only GET, PUT and DELETE supported against this resource",
            ),
            (Method::GET, "/units/", 404, ""),
            (Method::GET, "/units/a/b", 404, ""),
            (Method::PUT, "/units/a/b", 404, ""),
            (Method::GET, "/units/a.service", 404, "unit does not exist"),
            (
                Method::POST,
                "/state",
                405,
                "only GET supported against this resource",
            ),
            (
                Method::DELETE,
                "/state/a.service",
                405,
                "only GET supported against this resource",
            ),
            (
                Method::PUT,
                "/state/a/b",
                405,
                "only GET supported against this resource",
            ),
            (Method::GET, "/state/", 404, ""),
            (Method::GET, "/state/a/b", 404, ""),
            (
                Method::GET,
                "/state/a.service",
                404,
                "unit state does not exist",
            ),
            (
                Method::DELETE,
                "/machines",
                405,
                "only GET and PATCH supported against this resource",
            ),
            (
                Method::PUT,
                "/machines",
                405,
                "only GET and PATCH supported against this resource",
            ),
            (Method::GET, "/machines/x", 404, ""),
            (Method::GET, "/machines/", 404, ""),
            (
                Method::POST,
                "/discovery",
                400,
                "only HTTP GET supported against this resource",
            ),
            (Method::GET, "/discovery/x", 404, ""),
            (Method::GET, "", 405, ""),
            (Method::POST, "", 405, ""),
            (Method::GET, "/", 404, ""),
            (Method::GET, "/nothing", 404, ""),
            (Method::GET, "units", 404, ""),
        ];
        for (method, path, status, message) in cases {
            let uri = format!("{prefix}{path}");
            let reply = api.call(method.clone(), &uri).await;
            assert_eq!(reply.status.as_u16(), *status, "{method} {uri}: {reply:?}");
            reply.assert_error(*status, message);
        }
        for collection in ["/units", "/state", "/machines"] {
            // Unknown query parameters are ignored (the Go client adds `alt=json`).
            let reply = api
                .get(&format!("{prefix}{collection}?alt=json&whatever=1"))
                .await;
            reply.assert_status(200);
            assert_eq!(reply.content_type(), Some(JSON));
            assert_eq!(reply.json(), json!({}));
        }
        let reply = api.get(&format!("{prefix}/discovery")).await;
        reply.assert_status(200);
        assert_eq!(reply.content_type(), Some(JSON));
        let discovery = reply.json();
        assert_eq!(discovery["kind"], "discovery#restDescription");
        assert_eq!(discovery["id"], "fleet:v1");
        assert_eq!(discovery["rootUrl"], "$ENDPOINT/");
        assert_eq!(
            discovery["resources"]["Units"]["methods"]["Set"]["id"],
            "fleet.Unit.Set"
        );
        assert_eq!(
            discovery["resources"]["UnitState"]["methods"]["Get"]["path"],
            "state/{unitName}"
        );
        assert!(
            discovery["resources"]["Machines"]["methods"]
                .get("Patch")
                .is_none()
        );
    }
    for (method, uri, status) in [
        (Method::GET, "/", 405),
        (Method::DELETE, "/", 405),
        (Method::GET, "/fleet", 404),
        (Method::GET, "/fleet/v1units", 404),
        (Method::GET, "/v1-alphax", 404),
    ] {
        let reply = api.call(method.clone(), uri).await;
        reply.assert_error(status, "");
    }
    let metrics = api.get("/metrics").await;
    metrics.assert_status(200);
    assert!(metrics.headers.get(SERVER).is_some());
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("# TYPE fleet_api_requests_total counter"),
        "{text}"
    );
    assert!(text.contains(r#"method="GET",code="404"}"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_follows_the_decision_procedure() {
    let api = Api::start("put", 100).await;
    let options = service_options("/bin/sleep 100");
    let uri = "/fleet/v1/units/hello.service";
    let body = json!({"desiredState": "launched", "options": options}).to_string();

    // Step 1: Content-Type.
    api.call_with(Method::PUT, uri, &[], &body)
        .await
        .assert_error(415, "expected 1 Content-Type, got 0");
    api.call_with(Method::PUT, uri, &[JSON, JSON], &body)
        .await
        .assert_error(415, "expected 1 Content-Type, got 2");
    api.call_with(Method::PUT, uri, &["text/plain"], &body)
        .await
        .assert_error(415, "only acceptable Content-Type is application/json");
    // Step 2: the body.
    api.call_with(Method::PUT, uri, &[JSON], "")
        .await
        .assert_error(400, "unable to decode body: EOF");
    let reply = api.call_with(Method::PUT, uri, &[JSON], "{\"name\":").await;
    reply.assert_status(400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unable to decode body: "),
        "{reply:?}"
    );
    let reply = api
        .call_with(Method::PUT, uri, &[JSON], r#"{"options": 5}"#)
        .await;
    reply.assert_status(400);
    // Step 3: names.
    api.put_unit(
        "hello.service",
        json!({"name": "other.service", "options": options}),
    )
    .await
    .assert_error(
        400,
        r#"name in URL "hello.service" differs from unit name in request body "other.service""#,
    );
    // Step 4: ValidateName.
    api.put_unit("foo.bar", json!({"options": options}))
        .await
        .assert_error(400, r#"invalid unit type: "bar""#);
    api.put_unit("@foo.service", json!({"options": options}))
        .await
        .assert_error(400, r#"unit name cannot start in "@""#);
    // Step 6: create.
    api.put_unit("hello.service", json!({"desiredState": "launched"}))
        .await
        .assert_error(409, "unit does not exist and options field empty");
    let invalid_options = json!([
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
        {"section": "X-Fleet", "name": "MachineID", "value": "abc"},
        {"section": "X-Fleet", "name": "Global", "value": "true"},
    ]);
    api.put_unit("hello.service", json!({"options": invalid_options}))
        .await
        .assert_error(400, "MachineID cannot be used with Global");
    // Fix: an invalid state is a 400 (the original answered 500).
    api.put_unit(
        "hello.service",
        json!({"desiredState": "running", "options": options}),
    )
    .await
    .assert_error(400, r#"invalid value "running" for JobState"#);
    // Fix: a template cannot be launched on create either.
    api.put_unit(
        "tmpl@.service",
        json!({"desiredState": "launched", "options": options}),
    )
    .await
    .assert_error(400, r#"cannot activate template "tmpl@.service""#);
    assert_eq!(
        api.unit_records().await,
        vec![],
        "refused creates must not write"
    );

    // Creates: 201 without a body; the name may come from the body too.
    let reply = api
        .put_unit(
            "hello.service",
            json!({"name": "hello.service", "desiredState": "launched", "options": options}),
        )
        .await;
    reply.assert_status(201);
    assert!(reply.body.is_empty());
    assert_eq!(
        reply.headers.get(SERVER).unwrap(),
        &format!("fleetd/{VERSION}")
    );
    api.put_unit(
        "tmpl@.service",
        json!({"desiredState": "inactive", "options": options}),
    )
    .await
    .assert_status(201);
    api.put_unit("plain.service", json!({"options": options}))
        .await
        .assert_status(201);
    let hash = hash_of(&options);
    let created = vec![
        (
            "hello.service".to_owned(),
            hash.clone(),
            TargetState::Launched,
        ),
        (
            "plain.service".to_owned(),
            hash.clone(),
            TargetState::Inactive,
        ),
        (
            "tmpl@.service".to_owned(),
            hash.clone(),
            TargetState::Inactive,
        ),
    ];
    assert_eq!(api.unit_records().await, created);

    // Step 8 with the same options or none.
    api.put_unit("hello.service", json!({"options": options}))
        .await
        .assert_error(409, "must provide DesiredState to update existing unit");
    api.put_unit("hello.service", json!({}))
        .await
        .assert_error(409, "must provide DesiredState to update existing unit");
    // Fix: the original stored any string here.
    api.put_unit("hello.service", json!({"desiredState": "bogus"}))
        .await
        .assert_error(400, r#"invalid value "bogus" for JobState"#);
    api.put_unit("tmpl@.service", json!({"desiredState": "loaded"}))
        .await
        .assert_error(400, r#"cannot activate template "tmpl@.service""#);
    api.put_unit(
        "tmpl@.service",
        json!({"desiredState": "launched", "options": options}),
    )
    .await
    .assert_error(400, r#"cannot activate template "tmpl@.service""#);
    // Step 7, fixed: a replace validates its options and its state.
    api.put_unit(
        "hello.service",
        json!({"desiredState": "loaded", "options": invalid_options}),
    )
    .await
    .assert_error(400, "MachineID cannot be used with Global");
    api.put_unit(
        "hello.service",
        json!({"desiredState": "nope", "options": service_options("/bin/other")}),
    )
    .await
    .assert_error(400, r#"invalid value "nope" for JobState"#);
    assert_eq!(
        api.unit_records().await,
        created,
        "refused updates must not write"
    );

    api.put_unit("hello.service", json!({"desiredState": "loaded"}))
        .await
        .assert_status(204);
    api.put_unit("tmpl@.service", json!({"desiredState": "inactive"}))
        .await
        .assert_status(204);
    let reply = api
        .put_unit(
            "plain.service",
            json!({"desiredState": "launched", "options": options}),
        )
        .await;
    reply.assert_status(204);
    assert!(reply.body.is_empty());
    assert_eq!(
        api.unit_records().await,
        vec![
            (
                "hello.service".to_owned(),
                hash.clone(),
                TargetState::Loaded
            ),
            (
                "plain.service".to_owned(),
                hash.clone(),
                TargetState::Launched
            ),
            (
                "tmpl@.service".to_owned(),
                hash.clone(),
                TargetState::Inactive
            ),
        ]
    );

    // Replace: new content, desired state reset to the request's (inactive when absent).
    let new_options = service_options("/bin/sleep 200");
    api.put_unit("hello.service", json!({"options": new_options}))
        .await
        .assert_status(201);
    api.put_unit(
        "plain.service",
        json!({"desiredState": "loaded", "options": new_options}),
    )
    .await
    .assert_status(201);
    let new_hash = hash_of(&new_options);
    assert_ne!(new_hash, hash);
    assert_eq!(
        api.unit_records().await,
        vec![
            (
                "hello.service".to_owned(),
                new_hash.clone(),
                TargetState::Inactive
            ),
            (
                "plain.service".to_owned(),
                new_hash.clone(),
                TargetState::Loaded
            ),
            (
                "tmpl@.service".to_owned(),
                hash.clone(),
                TargetState::Inactive
            ),
        ]
    );
    // The name in the URL may be percent-encoded (the Go client escapes it).
    api.call_with(
        Method::PUT,
        "/v1-alpha/units/yes@no%5C.service",
        &[JSON],
        &json!({"options": options}).to_string(),
    )
    .await
    .assert_status(201);
    assert!(
        api.registry
            .unit(&unit_name("yes@no\\.service"))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_canonical_options_and_delete_removes() {
    let api = Api::start("get-delete", 100).await;
    // Options out of canonical order: sections interleaved.
    let options = json!([
        {"section": "Unit", "name": "Description", "value": "first"},
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
        {"section": "Unit", "name": "After", "value": "x.service"},
    ]);
    api.put_unit(
        "get.service",
        json!({"desiredState": "loaded", "options": options}),
    )
    .await
    .assert_status(201);
    let reply = api.get("/fleet/v1/units/get.service").await;
    reply.assert_status(200);
    assert_eq!(reply.content_type(), Some(JSON));
    assert_eq!(
        reply.json(),
        json!({
            "name": "get.service",
            "options": [
                {"section": "Unit", "name": "Description", "value": "first"},
                {"section": "Unit", "name": "After", "value": "x.service"},
                {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
            ],
            "desiredState": "loaded",
            "currentState": "inactive",
        })
    );
    api.get("/fleet/v1/units/missing.service")
        .await
        .assert_error(404, "unit does not exist");
    api.get("/fleet/v1/units/not-a-name")
        .await
        .assert_error(404, "unit does not exist");
    api.call(Method::DELETE, "/fleet/v1/units/missing.service")
        .await
        .assert_error(404, "unit does not exist");
    api.call(Method::DELETE, "/fleet/v1/units/not-a-name")
        .await
        .assert_error(404, "unit does not exist");
    assert_eq!(api.unit_records().await.len(), 1);
    let reply = api
        .call(Method::DELETE, "/v1-alpha/units/get.service")
        .await;
    reply.assert_status(204);
    assert!(reply.body.is_empty());
    assert_eq!(api.unit_records().await, vec![]);
    api.get("/fleet/v1/units/get.service")
        .await
        .assert_error(404, "unit does not exist");
}

/// A unit record in etcd that is not JSON (written by someone else, or
/// damaged) is listed with its name and an error, never hidden; the single
/// GET says the record is corrupt; the usable units are listed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_unit_record_is_reported_not_hidden() {
    let api = Api::start("corrupt-record", 100).await;
    api.put_unit(
        "keep.service",
        json!({"desiredState": "loaded", "options": [
            {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
        ]}),
    )
    .await
    .assert_status(201);
    let junk: UnitName = "junk.service".parse().unwrap();
    fleet_registry::testing::put_raw(&api.registry, &api.registry.keys().unit(&junk), b"not json")
        .await
        .expect("planting a corrupt record");

    let reply = api.get("/fleet/v1/units").await;
    reply.assert_status(200);
    let page: UnitPage = reply.entity();
    let names: Vec<&str> = page.units.iter().map(|unit| unit.name.as_str()).collect();
    assert_eq!(names, ["junk.service", "keep.service"]);
    let listed_junk = &page.units[0];
    assert!(
        listed_junk.error.contains("corrupt"),
        "the listing says what is wrong: {listed_junk:?}"
    );
    assert!(listed_junk.options.is_empty() && listed_junk.desired_state.is_empty());
    assert!(page.units[1].error.is_empty(), "{:?}", page.units[1]);
    assert_eq!(page.units[1].desired_state, "loaded");
    // The original fleetctl's entity has no `error`: the rest is what it read before.
    let raw = reply.json();
    assert_eq!(raw["units"][1].get("error"), None);

    let reply = api.get("/fleet/v1/units/junk.service").await;
    reply.assert_status(500);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("the record of junk.service is corrupt"),
        "the error says the record is corrupt: {message:?}"
    );
    api.get("/fleet/v1/units/keep.service")
        .await
        .assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_and_machine_come_from_placement_and_reported_state() {
    let api = Api::start("current-state", 100).await;
    let lease = api.register_machine("m1", &[]).await;
    let options = service_options("/bin/true");
    for name in ["a.service", "b.service", "c.service"] {
        api.put_unit(
            name,
            json!({"desiredState": "launched", "options": options}),
        )
        .await
        .assert_status(201);
    }
    let global_options = json!([
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
        {"section": "X-Fleet", "name": "Global", "value": "true"},
    ]);
    api.put_unit(
        "g.service",
        json!({"desiredState": "launched", "options": global_options}),
    )
    .await
    .assert_status(201);

    // The engine placed a, b and g on m1; m1 reported a (launched) and g.
    let leadership = api
        .registry
        .campaign(&machine_id("m1"), lease)
        .await
        .unwrap()
        .expect("the only campaigner leads");
    let hash = UnitFile::from_options(Vec::new()).hash(); // any hash: the API does not compare it
    let place = |unit: &str| {
        ScheduleChange::Place(Placement {
            unit: unit_name(unit),
            machine: machine_id("m1"),
            hash,
            target_state: TargetState::Launched,
        })
    };
    api.registry
        .commit_schedule(
            &leadership,
            &[place("a.service"), place("b.service"), place("g.service")],
        )
        .await
        .unwrap();
    let report = |unit: &str, reached: TargetState| UnitState {
        unit: unit_name(unit),
        machine: machine_id("m1"),
        hash,
        load_state: "loaded".to_owned(),
        active_state: "active".to_owned(),
        sub_state: "running".to_owned(),
        reached,
        run: None,
    };
    api.registry
        .put_unit_state(&report("a.service", TargetState::Launched), lease)
        .await
        .unwrap();
    // ... and nothing yet for b. c is not placed; g is global.
    api.registry
        .put_unit_state(&report("g.service", TargetState::Launched), lease)
        .await
        .unwrap();

    let page: UnitPage = api.get("/fleet/v1/units").await.entity();
    let summary: Vec<(&str, &str, &str)> = page
        .units
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                u.current_state.as_str(),
                u.machine_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a.service", "launched", "m1"),
            ("b.service", "inactive", "m1"),
            ("c.service", "inactive", ""),
            // Quirk of the original, kept: the list says inactive for global units.
            ("g.service", "inactive", ""),
        ]
    );
    assert!(
        page.units
            .iter()
            .all(|u| u.desired_state == "launched" && !u.options.is_empty())
    );

    let one: Unit = api.get("/fleet/v1/units/a.service").await.entity();
    assert_eq!(
        (one.current_state.as_str(), one.machine_id.as_str()),
        ("launched", "m1")
    );
    let one: Unit = api.get("/fleet/v1/units/b.service").await.entity();
    assert_eq!(
        (one.current_state.as_str(), one.machine_id.as_str()),
        ("inactive", "m1")
    );
    let one: Unit = api.get("/fleet/v1/units/c.service").await.entity();
    assert_eq!(
        (one.current_state.as_str(), one.machine_id.as_str()),
        ("inactive", "")
    );
    // GET of one global unit omits both fields.
    let global = api.get("/fleet/v1/units/g.service").await.json();
    assert!(
        global.get("currentState").is_none() && global.get("machineID").is_none(),
        "{global}"
    );
    assert_eq!(global["desiredState"], "launched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_are_paginated_by_name() {
    let limit = 2;
    let api = Api::start("unit-pages", limit).await;
    let options = service_options("/bin/true");
    // Created out of order; listed sorted.
    for name in [
        "e.service",
        "b.service",
        "d.service",
        "a.service",
        "c.service",
    ] {
        api.put_unit(name, json!({"options": options}))
            .await
            .assert_status(201);
    }
    let mut names = Vec::new();
    let mut uri = "/fleet/v1/units".to_owned();
    let mut n_pages = 0;
    loop {
        let page: UnitPage = api.get(&uri).await.entity();
        n_pages += 1;
        assert!(page.units.len() <= usize::from(limit));
        names.extend(page.units.into_iter().map(|u| u.name));
        if page.next_page_token.is_empty() {
            break;
        }
        assert_eq!(
            PageToken::decode(&page.next_page_token).unwrap().limit,
            limit
        );
        uri = format!(
            "/fleet/v1/units?alt=json&nextPageToken={}",
            page.next_page_token
        );
        assert!(n_pages < 10, "pagination does not end");
    }
    assert_eq!(n_pages, 3);
    assert_eq!(
        names,
        [
            "a.service",
            "b.service",
            "c.service",
            "d.service",
            "e.service"
        ]
    );

    // Two full pages of four units: the second has no next token.
    api.call(Method::DELETE, "/fleet/v1/units/e.service")
        .await
        .assert_status(204);
    let second = PageToken { limit, page: 2 }.encode();
    let page = api
        .get(&format!("/fleet/v1/units?nextPageToken={second}"))
        .await
        .json();
    assert_eq!(page, json!({"units": page["units"].clone()}));
    assert_eq!(page["units"].as_array().unwrap().len(), 2);
    // Past the end: an empty page.
    let past = PageToken { limit, page: 7 }.encode();
    assert_eq!(
        api.get(&format!("/fleet/v1/units?nextPageToken={past}"))
            .await
            .json(),
        json!({})
    );

    for collection in ["units", "state", "machines"] {
        let base = format!("/fleet/v1/{collection}");
        api.get(&format!(
            "{base}?nextPageToken={second}&nextPageToken={second}"
        ))
        .await
        .assert_error(400, "too many values for page token");
        api.get(&format!("{base}?nextPageToken=ZAABAA=="))
            .await
            .assert_error(400, "token limit must be 2");
        let zero = PageToken { limit, page: 0 }.encode();
        api.get(&format!("{base}?nextPageToken={zero}"))
            .await
            .assert_error(400, "token page must be greater than zero");
        let reply = api.get(&format!("{base}?nextPageToken=basdfasdf")).await;
        reply.assert_status(400);
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("illegal base64 data"),
            "{reply:?}"
        );
        api.get(&format!("{base}?nextPageToken="))
            .await
            .assert_error(400, "EOF");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_are_filtered_and_paginated() {
    let api = Api::start("states", 2).await;
    let lease_m1 = api.register_machine("m1", &[]).await;
    let lease_m2 = api.register_machine("m2", &[]).await;
    let hash = UnitFile::from_options(Vec::new()).hash();
    let report = |unit: &str, machine: &str| UnitState {
        unit: unit_name(unit),
        machine: machine_id(machine),
        hash,
        load_state: "loaded".to_owned(),
        active_state: "active".to_owned(),
        sub_state: format!("sub-{machine}"),
        reached: TargetState::Launched,
        run: None,
    };
    for (unit, machine, lease) in [
        ("b.service", "m2", lease_m2),
        ("a.service", "m2", lease_m2),
        ("b.service", "m1", lease_m1),
        ("a.service", "m1", lease_m1),
        ("c.service", "m2", lease_m2),
    ] {
        api.registry
            .put_unit_state(&report(unit, machine), lease)
            .await
            .unwrap();
    }

    let mut all = Vec::new();
    let mut uri = "/fleet/v1/state".to_owned();
    loop {
        let page: UnitStatePage = api.get(&uri).await.entity();
        assert!(page.states.len() <= 2);
        all.extend(page.states.into_iter().map(|s| (s.name, s.machine_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        uri = format!("/fleet/v1/state?nextPageToken={}", page.next_page_token);
        assert!(all.len() < 20, "pagination does not end");
    }
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(u, m)| (u.to_string(), m.to_string()))
            .collect()
    };
    assert_eq!(
        all,
        pairs(&[
            ("a.service", "m1"),
            ("a.service", "m2"),
            ("b.service", "m1"),
            ("b.service", "m2"),
            ("c.service", "m2")
        ])
    );

    let listed = |reply: Reply| -> Vec<(String, String)> {
        let page: UnitStatePage = reply.entity();
        page.states
            .into_iter()
            .map(|s| (s.name, s.machine_id))
            .collect()
    };
    // Filters apply before paging, so this page of 2 holds m2's first two.
    let m2 = api.get("/fleet/v1/state?machineID=m2").await;
    let m2_page: UnitStatePage = m2.entity();
    assert!(!m2_page.next_page_token.is_empty());
    assert_eq!(
        listed(m2),
        pairs(&[("a.service", "m2"), ("b.service", "m2")])
    );
    assert_eq!(
        listed(api.get("/fleet/v1/state?unitName=b.service").await),
        pairs(&[("b.service", "m1"), ("b.service", "m2")])
    );
    assert_eq!(
        listed(
            api.get("/fleet/v1/state?unitName=b.service&machineID=m1")
                .await
        ),
        pairs(&[("b.service", "m1")])
    );
    // Only the first value of a filter counts.
    assert_eq!(
        listed(
            api.get(
                "/fleet/v1/state?machineID=m1&machineID=m2&unitName=c.service&unitName=a.service"
            )
            .await
        ),
        pairs(&[])
    );
    assert_eq!(
        listed(api.get("/fleet/v1/state?unitName=nope").await),
        pairs(&[])
    );

    let first: UnitStateEntity = api.get("/fleet/v1/state/b.service").await.entity();
    assert_eq!(
        first,
        UnitStateEntity {
            name: "b.service".into(),
            hash: hash.to_string(),
            machine_id: "m1".into(),
            systemd_load_state: "loaded".into(),
            systemd_active_state: "active".into(),
            systemd_sub_state: "sub-m1".into(),
            ..UnitStateEntity::default()
        }
    );
    api.get("/fleet/v1/state/d.service")
        .await
        .assert_error(404, "unit state does not exist");
    api.get("/v1-alpha/state/not-a-name")
        .await
        .assert_error(404, "unit state does not exist");
}

/// The machine entity gains `cordon` only for a cordoned or draining machine: a machine in
/// rotation has exactly the original's fields, which is all the original fleetctl reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_machine_says_so_and_the_others_keep_the_original_fields() {
    let api = Api::start("machine-cordon", 100).await;
    api.register_machine("m1", &[("region", "eu")]).await;
    api.register_machine("m2", &[]).await;
    api.register_machine("m3", &[]).await;
    for (machine, draining) in [("m2", false), ("m3", true)] {
        let cordon = fleet_registry::cordon::Cordon {
            machine: machine_id(machine),
            draining,
            by: "test@host".to_owned(),
            reason: "maintenance".to_owned(),
            since: 1,
        };
        api.registry.put_cordon(&cordon).await.expect("cordoning");
    }
    let reply = api.get("/fleet/v1/machines").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"machines": [
            {"id": "m1", "primaryIP": "10.0.0.2", "metadata": {"region": "eu"}},
            {"id": "m2", "primaryIP": "10.0.0.2", "cordon": "cordoned"},
            {"id": "m3", "primaryIP": "10.0.0.2", "cordon": "draining"},
        ]})
    );
    api.registry
        .delete_cordon(&machine_id("m3"))
        .await
        .expect("uncordoning");
    let page: MachinePage = api.get("/fleet/v1/machines").await.entity();
    assert_eq!(page.machines[2].cordon, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_are_listed_and_patched() {
    let api = Api::start("machines", 2).await;
    api.register_machine("m3", &[("role", "db")]).await;
    api.register_machine("m1", &[("region", "eu")]).await;
    api.register_machine("m2", &[]).await;

    let first: MachinePage = api.get("/fleet/v1/machines").await.entity();
    assert_eq!(
        first
            .machines
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    assert_eq!(
        first.machines[0],
        Machine {
            id: "m1".into(),
            primary_ip: "10.0.0.2".into(),
            metadata: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            cordon: None,
        }
    );
    // The pages after the first are cut from the first page's listing: a
    // machine joining meanwhile does not shift them (read per page, 10,000
    // machines in pages of 100 took seconds).
    api.register_machine("m0", &[]).await;
    let second: MachinePage = api
        .get(&format!(
            "/fleet/v1/machines?nextPageToken={}",
            first.next_page_token
        ))
        .await
        .entity();
    assert_eq!(
        second
            .machines
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["m3"]
    );
    assert!(second.next_page_token.is_empty());

    let metadata = |machines: &[MachineState], id: &str| -> BTreeMap<String, String> {
        machines
            .iter()
            .find(|m| m.id.as_str() == id)
            .map(|m| m.metadata.clone())
            .unwrap_or_default()
    };
    let before = api.machines().await;

    // Errors, each in a list whose earlier ops are valid: nothing is applied.
    let valid = r#"{"op":"add","path":"/m1/metadata/new","value":{"value":"x"}}"#;
    for (op, message) in [
        (
            r#"{"op":"delete","path":"/m1/metadata/a","value":"x"}"#,
            "invalid op: expect add, remove, or replace",
        ),
        (
            r#"{"path":"/m1/metadata/a","value":"x"}"#,
            "invalid op: expect add, remove, or replace",
        ),
        (
            r#"{"op":"add","path":"/m1/meta/a","value":"x"}"#,
            "machine metadata path invalid",
        ),
        (
            r#"{"op":"add","path":"/m1/metadata/a b","value":"x"}"#,
            "machine metadata path invalid",
        ),
        (
            r#"{"op":"add","path":"/m1/metadata/a","value":{"value":""}}"#,
            "invalid value: add and replace require a value",
        ),
        (
            r#"{"op":"replace","path":"/m1/metadata/a"}"#,
            "invalid value: add and replace require a value",
        ),
    ] {
        api.patch_machines(&format!("[{valid},{op}]"))
            .await
            .assert_error(400, message);
    }
    for body in ["", "{", r#"{"op":"add"}"#, r#"[{"op":5}]"#, r#"[1]"#] {
        let reply = api.patch_machines(body).await;
        reply.assert_status(400);
        assert_eq!(reply.content_type(), Some(JSON), "{body}");
    }
    assert_eq!(
        api.machines().await,
        before,
        "refused patches must not write"
    );

    // Both value forms, the outer key in any case; Content-Type not checked.
    let body = r#"[
        {"op":"add","path":"/m1/metadata/nested","value":{"value":"one"}},
        {"op":"add","path":"/m2/metadata/upper","Value":{"value":"two"}},
        {"op":"replace","path":"/m3/metadata/role","value":"web"},
        {"op":"remove","path":"/m1/metadata/region"},
        {"op":"add","path":"/unknown-machine/metadata/k","value":"v"}
    ]"#;
    let reply = api
        .call_with(Method::PATCH, "/v1-alpha/machines", &["text/plain"], body)
        .await;
    reply.assert_status(204);
    assert_eq!(
        reply.content_type(),
        Some(JSON),
        "the 204 of a PATCH says it is JSON"
    );
    assert!(reply.body.is_empty());
    let after = api.machines().await;
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(metadata(&after, "m1"), map(&[("nested", "one")]));
    assert_eq!(metadata(&after, "m2"), map(&[("upper", "two")]));
    assert_eq!(metadata(&after, "m3"), map(&[("role", "web")]));
    // Served merged by the API too.
    let page: MachinePage = api.get("/fleet/v1/machines").await.entity();
    assert_eq!(page.machines[1].id, "m1");
    assert_eq!(page.machines[1].metadata, map(&[("nested", "one")]));
    // An empty list is fine and changes nothing.
    api.patch_machines("[]").await.assert_status(204);
    assert_eq!(api.machines().await, after);
}

/// A restart is a rollout to the content the unit has: no unit file is needed, the spec
/// says `restart` and names the unit's own hash as both old and new content; a missing
/// unit is a 404 and a second restart while the first is not over a conflict.
#[tokio::test]
async fn a_restart_is_stored_as_a_rollout_to_the_same_content() {
    let api = Api::start("restarts", 100).await;
    let restart = |name: &str| {
        let api = &api;
        let body = json!({"name": name, "unitFile": "", "restart": true, "strategy": {
            "maxParallel": 1, "minHealthyTimeMs": 2000, "healthyDeadlineMs": 300000,
            "canary": 0, "autoRevert": true}})
        .to_string();
        async move {
            api.call_with(Method::POST, "/fleet/v1/rollouts", &[JSON], &body)
                .await
        }
    };
    restart("everywhere.service").await.assert_error(
        404,
        "no unit everywhere.service exists; submit or start it first",
    );
    let file =
        UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n[X-Fleet]\nGlobal=true\n").unwrap();
    api.registry
        .create_unit(&unit_name("everywhere.service"), &file, TargetState::Loaded)
        .await
        .unwrap();
    restart("everywhere.service").await.assert_error(
        409,
        "unit everywhere.service is loaded, not launched; start it instead",
    );
    api.registry
        .set_desired_state(&unit_name("everywhere.service"), TargetState::Launched)
        .await
        .unwrap();
    let created = restart("everywhere.service").await;
    created.assert_status(201);
    let rollout: fleet_api::rollout::Rollout = created.entity();
    let hash = file.hash().to_string();
    assert!(rollout.spec.restart);
    assert_eq!(rollout.spec.new_hash, hash);
    assert_eq!(rollout.spec.units.len(), 1);
    assert_eq!(rollout.spec.units[0].old_hash, hash);
    // The unit record is untouched.
    assert_eq!(
        api.unit_records().await,
        [("everywhere.service".to_owned(), hash, TargetState::Launched)]
    );
    restart("everywhere.service").await.assert_error(
        409,
        "a rollout of everywhere.service is pending; abort it or wait for it to end",
    );
}

/// Rolling updates beside v1: bad requests are refused and store nothing; a good one is
/// stored with the old content of every instance; a second one while the first is not over
/// is a conflict; operator actions change the stored spec.
#[tokio::test]
async fn rollouts_are_validated_stored_and_controlled() {
    let api = Api::start("rollouts", 100).await;
    let post = |body: String| {
        let api = &api;
        async move {
            api.call_with(Method::POST, "/fleet/v1/rollouts", &[JSON], &body)
                .await
        }
    };
    let v1 = "[Service]\nExecStart=/bin/sleep 1000\n";
    let v2 = "[Service]\nExecStart=/bin/sleep 2000\n";
    let request = |name: &str, text: &str| {
        json!({"name": name, "unitFile": text, "strategy": {
            "maxParallel": 2, "minHealthyTimeMs": 1000, "healthyDeadlineMs": 5000,
            "canary": 0, "autoRevert": true}})
        .to_string()
    };

    post("{".to_owned()).await.assert_status(400);
    post(request("web@.service", v2)).await.assert_status(404);
    let file = UnitFile::parse(v1).unwrap();
    for name in ["web@.service", "web@1.service", "web@2.service"] {
        api.registry
            .create_unit(
                &UnitName::from_str(name).unwrap(),
                &file,
                TargetState::Inactive,
            )
            .await
            .unwrap();
    }
    post(json!({"name": "web@.service"}).to_string())
        .await
        .assert_status(400);
    post(request("no/such name", v2)).await.assert_status(400);
    post(request("web@.service", v1)).await.assert_status(409);
    assert_eq!(
        api.get("/fleet/v1/rollouts").await.json(),
        json!({"rollouts": []})
    );

    let created = post(request("web@.service", v2)).await;
    created.assert_status(201);
    let rollout: fleet_api::rollout::Rollout = created.entity();
    assert_eq!(rollout.spec.units.len(), 3);
    assert!(
        rollout
            .spec
            .units
            .iter()
            .all(|unit| unit.old_hash == file.hash().to_string())
    );
    assert_eq!(
        rollout.spec.new_hash,
        UnitFile::parse(v2).unwrap().hash().to_string()
    );
    // The new content is stored already (held by the rollout) for the agents to load.
    let new_hash = UnitFile::parse(v2).unwrap().hash();
    assert!(
        api.registry
            .unit_content(&new_hash)
            .await
            .unwrap()
            .is_some()
    );
    post(request("web@.service", v2)).await.assert_error(
        409,
        "a rollout of web@.service is pending; abort it or wait for it to end",
    );

    let act = |action: &str| {
        let api = &api;
        let body = json!({ "action": action }).to_string();
        async move {
            api.call_with(
                Method::POST,
                "/fleet/v1/rollouts/web@.service",
                &[JSON],
                &body,
            )
            .await
        }
    };
    act("explode").await.assert_status(400);
    act("pause").await.assert_status(200);
    let paused: fleet_api::rollout::Rollout =
        api.get("/fleet/v1/rollouts/web@.service").await.entity();
    assert_eq!(paused.spec.control, fleet_api::rollout::Control::Pause);
    act("promote").await.assert_status(200);
    let promoted: fleet_api::rollout::Rollout =
        api.get("/fleet/v1/rollouts/web@.service").await.entity();
    assert!(promoted.spec.promoted);
    api.get("/fleet/v1/rollouts/nothing.service")
        .await
        .assert_status(404);
    api.call(Method::DELETE, "/fleet/v1/rollouts")
        .await
        .assert_status(405);
}
/// The event stream (an addition beside v1).
#[path = "server/events.rs"]
mod events;
/// A JSON unit body of exactly `size` bytes whose options come from
/// `option(i)`, padded in the last option's value.
fn unit_body_of_size(size: usize, option: impl Fn(usize) -> Value) -> String {
    let mut options: Vec<Value> = Vec::new();
    // Leave room for the padding; `option` entries are short. Sizes add up
    // (an entry and its comma), so the body is not serialized per entry.
    let mut estimate = json!({"desiredState": "loaded", "options": []})
        .to_string()
        .len();
    while estimate < size - 200 {
        let entry = option(options.len());
        estimate += entry.to_string().len() + 1;
        options.push(entry);
    }
    let last = options.len() - 1;
    let base = json!({"desiredState": "loaded", "options": options})
        .to_string()
        .len();
    let value = options[last]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    options[last]["value"] = json!(format!("{value}{}", "p".repeat(size - base)));
    let body = json!({"desiredState": "loaded", "options": options}).to_string();
    assert_eq!(body.len(), size);
    body
}

/// The body limit is etcd's request limit: a maximum-size unit made of one-option sections
/// (the worst case for grouping options by section) is stored and read back, one byte more
/// is a 413 that names the limit.
#[tokio::test]
async fn a_maximum_size_unit_is_stored_and_a_larger_body_is_413() {
    let api = Api::start("max-size", 100).await;
    let limit = fleet_api::server::BODY_LIMIT_BYTES;
    let sections = |i: usize| json!({"section": format!("S{i}"), "name": "A", "value": "b"});
    let body = unit_body_of_size(limit, sections);
    let started = std::time::Instant::now();
    let reply = api
        .call_with(Method::PUT, "/fleet/v1/units/big.service", &[JSON], &body)
        .await;
    eprintln!("PUT of a {limit}-byte unit took {:?}", started.elapsed());
    reply.assert_status(201);
    let stored = api.get("/fleet/v1/units/big.service").await;
    stored.assert_status(200);
    let options = stored.json()["options"].as_array().map_or(0, Vec::len);
    assert!(options > 30_000, "{options} options stored");

    let body = unit_body_of_size(limit + 1, sections);
    api.call_with(
        Method::PUT,
        "/fleet/v1/units/bigger.service",
        &[JSON],
        &body,
    )
    .await
    .assert_error(
        413,
        &format!("request body is larger than {limit} bytes (1.5 MiB, etcd's request limit)"),
    );
    assert_eq!(api.get("/fleet/v1/units/bigger.service").await.status, 404);
}

/// A maximum-size unit of `[X-Fleet]` peers and conflicts: matching every peer against every
/// pattern would be some 10^8 glob matches, so such a unit is a 400 that says why.
#[tokio::test]
async fn a_maximum_size_unit_of_requirements_is_refused_with_the_reason() {
    let api = Api::start("max-size-xfleet", 100).await;
    let limit = fleet_api::server::BODY_LIMIT_BYTES;
    let requirements = |i: usize| {
        let (name, value) = if i.is_multiple_of(2) {
            ("MachineOf", format!("p{i}.service"))
        } else {
            ("Conflicts", format!("c{i}*.service"))
        };
        json!({"section": "X-Fleet", "name": name, "value": value})
    };
    let body = unit_body_of_size(limit, requirements);
    let started = std::time::Instant::now();
    let reply = api
        .call_with(Method::PUT, "/fleet/v1/units/req.service", &[JSON], &body)
        .await;
    eprintln!(
        "PUT of a {limit}-byte [X-Fleet] unit took {:?}",
        started.elapsed()
    );
    reply.assert_status(400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("too many [X-Fleet] requirements: "),
        "{message}"
    );
    assert_eq!(api.get("/fleet/v1/units/req.service").await.status, 404);
}

/// The entries of the batch test: every answer of PUT, and names repeated.
fn batch_entries() -> Vec<Value> {
    let options = service_options("/bin/sleep 100");
    let other = service_options("/bin/sleep 200");
    let bad_options = json!([
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
        {"section": "X-Fleet", "name": "MachineID", "value": "abc"},
        {"section": "X-Fleet", "name": "Global", "value": "true"},
    ]);
    let line_break = service_options("/bin/true\nExecStartPre=/bin/evil");
    let mut entries = vec![
        json!({"name": "a.service", "desiredState": "launched", "options": options}),
        json!({"name": "foo.bar", "options": options}),
        json!({"name": "bad.service", "options": bad_options}),
        json!({"name": "tmpl@.service", "desiredState": "launched", "options": options}),
        json!({"name": "tmpl@.service", "desiredState": "inactive", "options": options}),
        json!({"name": "existing.service", "desiredState": "launched", "options": options}),
        json!({"name": "existing.service", "options": options}),
        json!({"name": "a.service", "desiredState": "loaded"}),
        json!({"name": "nope.service", "desiredState": "loaded"}),
        json!({"name": "broken.service", "options": line_break}),
        json!({"name": "b.service", "options": options}),
        json!({"name": "b.service", "desiredState": "launched", "options": other}),
        json!({"name": "c.service", "desiredState": "running", "options": options}),
    ];
    entries.extend([
        json!({"name": "tmpl@.service", "desiredState": "launched"}),
        json!({"name": "a.service"}),
        json!({"name": "w@1.service", "desiredState": "launched"}),
    ]);
    entries.extend((0..40).map(|i| {
        json!({"name": format!("w@{i}.service"), "desiredState": "launched", "options": options})
    }));
    entries
}

/// `POST /fleet/x1/units` answers each unit as v1 `PUT` answers it, in
/// order, and leaves the registry as the PUTs one after another do.
#[tokio::test]
async fn a_batch_answers_and_writes_what_puts_one_by_one_do() {
    let (v1, x1) = (
        Api::start("batch-v1", 100).await,
        Api::start("batch-x1", 100).await,
    );
    for api in [&v1, &x1] {
        let options = service_options("/bin/sleep 100");
        api.put_unit("existing.service", json!({"options": options}))
            .await
            .assert_status(201);
    }
    let entries = batch_entries();
    let mut expected = Vec::new();
    for entry in &entries {
        let name = entry["name"].as_str().unwrap();
        let reply = v1.put_unit(name, entry.clone()).await;
        let message = if reply.body.is_empty() {
            String::new()
        } else {
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        expected.push((name.to_owned(), reply.status.as_u16(), message));
    }
    let body = json!({"units": entries}).to_string();
    let reply = x1
        .call_with(Method::POST, "/fleet/x1/units", &[JSON], &body)
        .await;
    reply.assert_status(200);
    let answer: fleet_api::x1::UnitBatchResponse = reply.entity();
    let results: Vec<(String, u16, String)> = answer
        .results
        .into_iter()
        .map(|result| (result.name, result.code, result.message))
        .collect();
    assert_eq!(results, expected);
    let codes: Vec<u16> = expected.iter().map(|(_, code, _)| *code).take(13).collect();
    assert_eq!(
        codes,
        [
            201, 400, 400, 400, 201, 204, 409, 204, 409, 400, 201, 201, 400
        ],
        "the entries cover every answer"
    );
    assert_eq!(x1.unit_records().await, v1.unit_records().await);
}

/// A body that is not a batch is refused as a whole, and nothing is written.
#[tokio::test]
async fn an_invalid_batch_writes_nothing() {
    let api = Api::start("batch-invalid", 100).await;
    let uri = "/fleet/x1/units";
    let unit = json!({"name": "a.service", "options": service_options("/bin/true")});
    let body = json!({"units": [unit]}).to_string();
    api.call_with(Method::POST, uri, &["text/plain"], &body)
        .await
        .assert_error(415, "only acceptable Content-Type is application/json");
    api.call_with(Method::POST, uri, &[JSON], "")
        .await
        .assert_error(400, "unable to decode body: EOF");
    api.call_with(Method::POST, uri, &[JSON], r#"{"units": [{"name": 5}]}"#)
        .await
        .assert_status(400);
    let too_many = json!({"units": vec![unit; fleet_api::x1::MAX_BATCH_UNITS + 1]}).to_string();
    api.call_with(Method::POST, uri, &[JSON], &too_many)
        .await
        .assert_error(400, "1001 units in one request; the limit is 1000");
    api.call_with(Method::PUT, uri, &[JSON], &body)
        .await
        .assert_error(405, "only POST supported against this resource");
    assert_eq!(api.unit_records().await, vec![]);
}
