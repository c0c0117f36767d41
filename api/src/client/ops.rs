//! The client of the operations API beside v1 (`/fleet/x1/`, see
//! [`crate::x1`]): cordon, drain, plan and why, and many unit PUTs at once.

use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Client, ClientError, escape_path_segment};
use crate::entities::{ErrorBody, ErrorEntity, Unit};
use crate::x1::{
    self, CordonList, CordonRequest, DrainStatus, Explanation, PlanRequest, PlanResponse,
    UnitBatch, UnitBatchResponse, UnitResult,
};

impl Client {
    /// The x1 base path beside the endpoint's v1 one (`/fleet/v1/` → `/fleet/x1/`).
    pub(super) fn x1_base(&self) -> String {
        let base = self.endpoint.base_path();
        match base.strip_suffix("v1/") {
            Some(prefix) => format!("{prefix}x1/"),
            None => "/fleet/x1/".to_owned(),
        }
    }

    async fn x1<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        self.x1_retrying(method, path, body, idempotent).await
    }

    /// [`Client::x1`], sent again on a 503 when `retry_unavailable`.
    async fn x1_retrying<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        retry_unavailable: bool,
    ) -> Result<T, ClientError> {
        let decode = |detail: String| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail,
        };
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| decode(error.to_string()))?;
        let base = self.x1_base();
        let answer = self
            .request_retrying(&base, method, path, Vec::new(), body, retry_unavailable)
            .await?;
        let answer: &[u8] = if answer.is_empty() { b"null" } else { &answer };
        serde_json::from_slice(answer).map_err(|error| decode(error.to_string()))
    }

    /// Creates or changes `units` with one `POST units` (at most
    /// [`x1::MAX_BATCH_UNITS`]): each answered as its v1 `PUT` would be, in
    /// order. A 404 means the server has no batch API (the original fleetd):
    /// nothing was written, and the units must be PUT one by one.
    ///
    /// # Errors
    /// Any [`ClientError`] of the request as a whole; a [`ClientError::Decode`]
    /// when the answer does not have one result per unit.
    pub async fn put_units(&self, units: &[Unit]) -> Result<Vec<UnitResult>, ClientError> {
        let mut results = self.put_units_once(units).await?;
        // A unit answered 503 inside the batch (etcd timed out on its chunk)
        // is sent again, alone with the others so answered, as its PUT would
        // be: a 503 means nothing of it was written.
        let mut pauses = super::UnavailablePauses::new();
        loop {
            let unavailable: Vec<usize> = (0..results.len())
                .filter(|&index| results[index].code == StatusCode::SERVICE_UNAVAILABLE.as_u16())
                .collect();
            if unavailable.is_empty() || !pauses.wait().await {
                break;
            }
            let again: Vec<Unit> = unavailable
                .iter()
                .map(|&index| units[index].clone())
                .collect();
            let answers = self.put_units_once(&again).await?;
            for (index, answer) in unavailable.into_iter().zip(answers) {
                results[index] = answer;
            }
        }
        Ok(results)
    }

    /// One `POST /fleet/x1/units` of `units` (a 503 to the whole request is
    /// sent again, as a PUT is), with one result per unit.
    async fn put_units_once(&self, units: &[Unit]) -> Result<Vec<UnitResult>, ClientError> {
        let batch = UnitBatch {
            units: units.to_vec(),
        };
        // A 503 to the whole batch (fleetd not registered, etcd unreachable
        // before anything was written) is sent again, as a PUT is.
        let answer: UnitBatchResponse = self
            .x1_retrying(Method::POST, "units", Some(&batch), true)
            .await?;
        if answer.results.len() != units.len() {
            return Err(ClientError::Decode {
                endpoint: self.endpoint.url().to_owned(),
                detail: format!("{} results for {} units", answer.results.len(), units.len()),
            });
        }
        Ok(answer.results)
    }

    /// Every cordoned machine.
    ///
    /// # Errors
    /// Any [`ClientError`] (a 404 from a fleetd without the x1 API).
    pub async fn cordons(&self) -> Result<CordonList, ClientError> {
        self.x1(Method::GET, "cordons", None::<&()>).await
    }

    /// Cordons (or, with `request.draining`, drains) the machine `machine` (a full id).
    ///
    /// # Errors
    /// Any [`ClientError`]; a 404 when no live machine has this id.
    pub async fn cordon(
        &self,
        machine: &str,
        request: &CordonRequest,
    ) -> Result<x1::Cordon, ClientError> {
        let path = format!("machines/{}/cordon", escape_path_segment(machine));
        self.x1(Method::PUT, &path, Some(request)).await
    }

    /// Uncordons `machine` (ends a drain too).
    ///
    /// # Errors
    /// Any [`ClientError`]; a 404 when the machine is not cordoned.
    pub async fn uncordon(&self, machine: &str) -> Result<(), ClientError> {
        let path = format!("machines/{}/cordon", escape_path_segment(machine));
        let _: Option<serde_json::Value> = self.x1(Method::DELETE, &path, None::<&()>).await?;
        Ok(())
    }

    /// What is left on `machine`.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn drain_status(&self, machine: &str) -> Result<DrainStatus, ClientError> {
        let path = format!("machines/{}/drain", escape_path_segment(machine));
        self.x1(Method::GET, &path, None::<&()>).await
    }

    /// Where the scheduler would place `request.units` now; writes nothing.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn plan(&self, request: &PlanRequest) -> Result<PlanResponse, ClientError> {
        self.x1(Method::POST, "plan", Some(request)).await
    }

    /// Where a submitted unit is placed, or why it is not.
    ///
    /// # Errors
    /// Any [`ClientError`]; a 404 when there is no such unit.
    pub async fn why(&self, unit: &str) -> Result<Explanation, ClientError> {
        let path = format!("why/{}", escape_path_segment(unit));
        self.x1(Method::GET, &path, None::<&()>).await
    }
}

impl ClientError {
    /// The error a unit's v1 `PUT` would have returned, read from its result
    /// in a batch; `None` when it succeeded.
    pub fn of_unit_result(result: &UnitResult) -> Option<ClientError> {
        if result.is_success() {
            return None;
        }
        let entity = ErrorEntity {
            error: ErrorBody {
                code: result.code,
                message: result.message.clone(),
            },
        };
        let body = serde_json::to_vec(&entity).unwrap_or_default();
        Some(match StatusCode::from_u16(result.code) {
            Ok(status) => super::api_error(status, &body),
            Err(_) => ClientError::Http {
                code: result.code,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
        })
    }
}
