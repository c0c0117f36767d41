//! The API of a worker: reads only.
//!
//! With one etcd identity per machine, only control-plane machines may write
//! units and metadata. A worker's fleetd wraps its router with
//! [`read_only`]: GETs are served as usual, and every other method gets a
//! 403 that names the control-plane machines to send it to. The worker never
//! forwards the write: a machine that relays writes could forge them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use http::{Method, StatusCode};

use fleet_registry::{MachineId, MachineState, Registry};

struct Worker {
    registry: Registry,
    machine: MachineId,
}

/// `router`, refusing every request but GET and HEAD. `machine` is this
/// worker (named in the refusal).
pub fn read_only(router: Router, registry: Registry, machine: MachineId) -> Router {
    let worker = Arc::new(Worker { registry, machine });
    router.layer(middleware::from_fn_with_state(worker, refuse_writes))
}

async fn refuse_writes(
    State(worker): State<Arc<Worker>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    // Naming the control plane is best effort: the refusal stands either way.
    let machines = worker.registry.machines().await.unwrap_or_default();
    let message = refusal(&worker.machine, &machines);
    tracing::info!(
        target: "fleet::audit",
        method = %request.method(),
        path = request.uri().path(),
        status = 403,
        "Refused a write on a worker's API."
    );
    super::error_response(StatusCode::FORBIDDEN, &message)
}

/// The refusal's message: who we are and where writes go.
pub fn refusal(machine: &MachineId, machines: &[MachineState]) -> String {
    let control_plane: Vec<String> = machines
        .iter()
        .filter(|state| !state.disable_engine)
        .map(|state| {
            if state.public_ip.is_empty() {
                state.id.to_string()
            } else {
                format!("{} ({})", state.id, state.public_ip)
            }
        })
        .collect();
    let targets = if control_plane.is_empty() {
        "none is registered now".to_owned()
    } else {
        control_plane.join(", ")
    };
    format!(
        "machine {machine} is a worker: its etcd identity may not write units or metadata, and it does not forward writes; send them to a control-plane machine's API: {targets}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, ip: &str, disable_engine: bool) -> MachineState {
        MachineState {
            id: id.parse().expect("valid id"),
            public_ip: ip.to_owned(),
            metadata: Default::default(),
            version: "0".to_owned(),
            disable_engine,
            disable_agent: false,
            api_url: String::new(),
        }
    }

    #[test]
    fn the_refusal_names_the_control_plane_only() {
        let me: MachineId = "w1".parse().expect("valid id");
        let machines = [
            state("cp1", "10.0.0.1", false),
            state("w1", "10.0.0.2", true),
            state("cp2", "", false),
        ];
        let message = refusal(&me, &machines);
        assert!(message.starts_with("machine w1 is a worker"), "{message}");
        assert!(
            message.ends_with("control-plane machine's API: cp1 (10.0.0.1), cp2"),
            "{message}"
        );
        assert!(refusal(&me, &[]).ends_with("none is registered now"));
    }
}
