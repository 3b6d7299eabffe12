//! Building the application: keys, database (migrations applied), the HTTP
//! server with its routes; `Application::build` binds (port 0 works) and
//! `run_until_stopped` serves until SIGINT/SIGTERM.

use std::{net::TcpListener, rc::Rc, sync::Arc};

use actix_web::{
    App, HttpResponse, HttpServer,
    body::{BodySize, MessageBody},
    dev::{Server, Service, ServiceResponse},
    guard,
    http::{
        StatusCode,
        header::{self, HeaderValue},
    },
    middleware::{ErrorHandlerResponse, ErrorHandlers},
    web as aweb,
};
use commerce_common::{
    db,
    http::{ApiError, json_config, path_config, query_config},
};
use diesel_migrations::embed_migrations;
use paperclip::{
    actix::{OpenApiExt, web},
    v2::models::{DefaultApiRaw, Info},
};
use tracing::Instrument;

use crate::{
    auth::{
        client::ClientAddresses, password::PasswordHasher, rate_limit::RateLimits,
        throttle::LoginThrottle, tokens::TokenIssuer,
    },
    config::Config,
    metrics::Metrics,
    request_id::{self, X_REQUEST_ID},
    routes::{
        AppState, auth, docs,
        docs::ApiDocs,
        health, me,
        proxy::{self, ProxyClient, Upstream},
    },
};

pub const MIGRATIONS: db::Migrations = db::Migrations::new(
    db::Runtime::Outbox,
    embed_migrations!("../../db/migrations/gateway"),
);

/// Largest JSON body the gateway's own endpoints read.
const JSON_LIMIT: usize = 16 * 1024;

pub struct Application {
    port: u16,
    server: Server,
    metrics_port: Option<u16>,
    metrics_server: Option<Server>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let (issuer, verifier) = TokenIssuer::from_config(&config.auth)?;
        let migration_version = db::migrate(&config.database, MIGRATIONS).await?;
        let pool = db::pool(&config.database)?;
        let hasher = PasswordHasher::new(config.auth.bcrypt_cost).await?;
        let metrics = Arc::new(Metrics::default());
        let state = aweb::Data::new(AppState {
            pool,
            migration_version,
            hasher,
            issuer,
            throttle: LoginThrottle::new(&config.login_throttle),
            rate_limits: RateLimits::new(&config.rate_limit),
            clients: ClientAddresses::new(&config.rate_limit.trusted_proxies)?,
            upstreams: config.upstreams.clone(),
            metrics: metrics.clone(),
        });
        let metrics = aweb::Data::from(metrics);
        let (metrics_port, metrics_server) = match config.metrics.port {
            None => (None, None),
            Some(port) => {
                let (port, server) = metrics_server(&config.metrics.host, port, metrics.clone())?;
                (Some(port), Some(server))
            }
        };
        let verifier = aweb::Data::new(verifier);
        let docs = aweb::Data::new(ApiDocs::new(&config.upstreams, config.proxy.spec_cache));

        let listener = TcpListener::bind(config.http.address())?;
        let port = listener.local_addr()?.port();
        let workers = config.http.worker_threads();
        let server = HttpServer::new(move || {
            let edge_verifier = config.auth.verify_at_edge.then(|| (**verifier).clone());
            let proxy_client = ProxyClient::new(&config.proxy, edge_verifier);
            let mut app = App::new()
                .app_data(json_config(JSON_LIMIT))
                .app_data(query_config())
                .app_data(path_config())
                .app_data(state.clone())
                .app_data(metrics.clone())
                .app_data(verifier.clone())
                .app_data(docs.clone())
                .app_data(proxy_client);
            for (prefix, name) in proxy::ROUTES {
                let base = config.upstreams.all().into_iter().find(|(n, _)| *n == name);
                let base = base.expect("every route names a configured upstream").1;
                let upstream = Upstream {
                    name,
                    base: Rc::from(base.trim_end_matches('/')),
                };
                app = app.service(
                    aweb::resource([prefix.to_owned(), format!("{prefix}/{{tail:.*}}")])
                        .app_data(upstream)
                        .to(proxy::forward),
                );
            }
            app.route(
                docs::SWAGGER_ASSETS,
                aweb::get().to(|| async {
                    HttpResponse::PermanentRedirect()
                        .insert_header((header::LOCATION, "/swagger-ui.html"))
                        .finish()
                }),
            )
            .service(
                // paperclip's asset handler panics on unknown names: stop them here.
                aweb::resource(format!("{}/{{file:.*}}", docs::SWAGGER_ASSETS))
                    .guard(guard::fn_guard(|ctx| {
                        !docs::is_swagger_asset(ctx.head().uri.path())
                    }))
                    .to(|| async { route_not_found() }),
            )
            .route("/health", aweb::get().to(health::health))
            .route("/ready", aweb::get().to(health::ready))
            .route("/openapi.json", aweb::get().to(docs::openapi))
            .route("/swagger-ui.html", aweb::get().to(docs::swagger_ui))
            .wrap_api_with_spec(gateway_spec())
            .service(web::resource("/api/register").route(web::post().to(auth::register)))
            .service(web::resource("/api/login").route(web::post().to(auth::login)))
            .service(web::resource("/api/me").route(web::get().to(me::me)))
            .service(web::resource("/api/health").route(web::get().to(health::api_health)))
            .with_raw_json_spec_v3(|app, spec| {
                docs.set_gateway(spec);
                app
            })
            .with_json_spec_v3_at("/openapi/gateway.json")
            .with_swagger_ui_at(docs::SWAGGER_ASSETS)
            .default_service(aweb::to(|| async { route_not_found() }))
            .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
            .wrap_fn(|mut req, srv| {
                let id = request_id::resolve(req.headers().get(X_REQUEST_ID));
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                let span = tracing::info_span!(
                    "request",
                    request_id = id.to_str().unwrap_or_default(),
                    method = %req.method(),
                    path = req.path(),
                );
                // Answers of the credential endpoints carry tokens (or say
                // whether credentials were right): never cached.
                let no_store = matches!(req.path(), "/api/register" | "/api/login");
                let call = srv.call(req);
                async move {
                    let mut response = call.await?;
                    response.headers_mut().insert(X_REQUEST_ID, id);
                    if no_store {
                        let headers = response.headers_mut();
                        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                    }
                    tracing::debug!(status = response.status().as_u16(), "answered");
                    Ok(response)
                }
                .instrument(span)
            })
            .build()
        })
        .workers(workers)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            metrics_port,
            metrics_server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port `/metrics` is served on (`metrics.port`), if any.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        match self.metrics_server {
            None => self.server.await,
            Some(metrics) => {
                let handle = metrics.handle();
                let metrics = tokio::spawn(metrics);
                let result = self.server.await;
                handle.stop(true).await;
                let _ = metrics.await;
                result
            }
        }
    }
}

/// `/metrics` on its own listener (`metrics.host`:`metrics.port`), one
/// worker: not on the public port, where anyone could read it.
fn metrics_server(
    host: &str,
    port: u16,
    metrics: aweb::Data<Metrics>,
) -> anyhow::Result<(u16, Server)> {
    let listener = TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .route("/metrics", aweb::get().to(health::metrics))
            .default_service(aweb::to(|| async { route_not_found() }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((port, server))
}

/// actix answers a wrong method with an empty 405; give it the common shape.
fn method_not_allowed<B: MessageBody>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if response.response().body().size() != BodySize::Sized(0) {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let (req, res) = response.into_parts();
    let mut json = actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this route",
    ));
    if let Some(allow) = res.headers().get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, json).map_into_right_body(),
    ))
}

fn route_not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route",
    ))
}

fn gateway_spec() -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: "Commerce API".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        },
        ..Default::default()
    }
}
