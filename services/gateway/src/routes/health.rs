//! The public `GET /api/health`: the gateway's own readiness and each
//! service's `/ready` (the operational probes are the skeleton's,
//! `commerce_common::service`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode};
use commerce_common::service::Readiness;
use futures::future::join_all;
use paperclip::actix::{Apiv2Schema, api_v2_errors, api_v2_operation, web};
use serde::{Deserialize, Serialize};

use super::{AppState, proxy::ProxyClient};

/// One component's state.
#[derive(Debug, Clone, Serialize, Deserialize, Apiv2Schema)]
pub struct ComponentHealth {
    /// `gateway`, `order`, `payment` or `delivery`.
    pub name: String,
    /// `ok` or `unavailable`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The gateway and every service behind it.
#[derive(Debug, Clone, Serialize, Deserialize, Apiv2Schema)]
pub struct HealthReport {
    /// `ok` when every component is ok, `degraded` otherwise.
    pub status: String,
    pub services: Vec<ComponentHealth>,
}

/// 503 with the same report when any component is not ok.
#[api_v2_errors(
    code = 503,
    description = "Some component is unavailable; the body is a HealthReport"
)]
#[derive(Debug, thiserror::Error)]
#[error("degraded")]
pub struct Degraded(HealthReport);

impl ResponseError for Degraded {
    fn status_code(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::ServiceUnavailable().json(&self.0)
    }
}

/// Health of the gateway and of each service (their `/ready`).
#[api_v2_operation(operation_id = "health", tags(Health))]
pub async fn api_health(
    req: HttpRequest,
    state: web::Data<AppState>,
    readiness: web::Data<Readiness>,
) -> Result<web::Json<HealthReport>, Degraded> {
    let client = ProxyClient::of(&req);
    let timeout = client.probe_timeout;
    let gateway = async {
        // The raw error names hosts, roles and databases: logged, not shown.
        let check = readiness.check().await.map_err(|error| {
            tracing::warn!(%error, "gateway database not ready");
            "database unavailable".to_owned()
        });
        component("gateway", check)
    };
    let services = join_all(
        state
            .upstreams
            .all()
            .map(|(name, base)| probe(&client.client, name, format!("{base}/ready"), timeout)),
    );
    let (gateway, services) = futures::join!(gateway, services);
    let services: Vec<_> = std::iter::once(gateway).chain(services).collect();
    let all_ok = services.iter().all(|s| s.status == "ok");
    let report = HealthReport {
        status: if all_ok { "ok" } else { "degraded" }.into(),
        services,
    };
    if all_ok {
        Ok(web::Json(report))
    } else {
        Err(Degraded(report))
    }
}

async fn probe(
    client: &awc::Client,
    name: &str,
    url: String,
    timeout: Duration,
) -> ComponentHealth {
    let check = match client.get(url).timeout(timeout).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("/ready answered {}", response.status().as_u16())),
        Err(awc::error::SendRequestError::Timeout) => Err("timed out".to_owned()),
        Err(error) => {
            tracing::warn!(service = name, %error, "service unreachable");
            Err("unreachable".to_owned())
        }
    };
    component(name, check)
}

fn component(name: &str, check: Result<(), String>) -> ComponentHealth {
    match check {
        Ok(()) => ComponentHealth {
            name: name.into(),
            status: "ok".into(),
            detail: None,
        },
        Err(detail) => ComponentHealth {
            name: name.into(),
            status: "unavailable".into(),
            detail: Some(detail),
        },
    }
}
