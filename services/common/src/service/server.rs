//! The HTTP servers of a service: the one on its port, whose app every
//! worker builds the same way (the operational routes, the service's own
//! app data and routes, its OpenAPI document, the 404 for the rest, its
//! middleware around it all), and the `/metrics` one when it has its own
//! listener. Signals are the running service's, not actix's.

use std::net::{TcpListener, ToSocketAddrs};

use actix_web::{App, HttpServer, dev::Server, web};
use anyhow::Context as _;
use paperclip::actix::OpenApiExt;

use super::{
    Service,
    operational::{self, MetricsRegistry, Operational, unknown_route},
};
use crate::auth::JwtVerifier;

/// How the server on the service's port is set up.
pub(super) struct Public {
    pub listener: TcpListener,
    pub workers: usize,
    /// Registered as `web::Data<JwtVerifier>` when the service verifies tokens.
    pub verifier: Option<web::Data<JwtVerifier>>,
    /// `/metrics` is served here (not on a listener of its own).
    pub metrics: bool,
}

pub(super) fn public<S: Service>(
    service: web::Data<S>,
    operational: Operational,
    public: Public,
) -> anyhow::Result<Server> {
    let Public {
        listener,
        workers,
        verifier,
        metrics,
    } = public;
    let server = HttpServer::new(move || {
        let mut app = S::wrap(App::new())
            .configure(|cfg| operational.configure(cfg))
            .app_data(service.clone());
        if let Some(verifier) = &verifier {
            app = app.app_data(verifier.clone());
        }
        if metrics {
            app = app.route("/metrics", web::get().to(operational::metrics::<S>));
        }
        let app = app
            .configure(|cfg| service.configure(cfg))
            .wrap_api_with_spec(operational::api_spec(S::API_TITLE, S::API_DESCRIPTION))
            .configure(|cfg| service.api(cfg));
        service
            .document(app)
            .default_service(web::to(unknown_route))
            .build()
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// `/metrics` alone, one worker.
pub(super) fn metrics<S: Service>(
    service: web::Data<S>,
    registry: web::Data<MetricsRegistry>,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .app_data(registry.clone())
            .route("/metrics", web::get().to(operational::metrics::<S>))
            .default_service(web::to(unknown_route))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Binds a listener (port 0 allowed); returns it with the bound port.
pub(super) fn bind(
    address: impl ToSocketAddrs + std::fmt::Debug,
) -> anyhow::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(&address).with_context(|| format!("binding {address:?}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}
