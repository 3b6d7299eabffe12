//! The gateway on the shared skeleton (`commerce_common::service`): its
//! keys, users database and login limits, the proxy routes to the services,
//! the merged API document with Swagger UI, and its request-id middleware.
//! `/metrics` is served on a listener of its own (`metrics.port`).

use std::{rc::Rc, sync::Arc};

use actix_web::{
    App, HttpResponse,
    body::{BodySize, BoxBody, MessageBody},
    dev::{Service as _, ServiceResponse},
    guard,
    http::{
        StatusCode,
        header::{self, HeaderValue},
    },
    middleware::{ErrorHandlerResponse, ErrorHandlers},
    web::{self as aweb, Data},
};
use commerce_common::{
    auth::JwtVerifier,
    db,
    http::ApiError,
    service::{self, AppFactory, Context, Service},
};
use diesel_migrations::embed_migrations;
use paperclip::actix::web::{self, ServiceConfig};
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

pub type Application = service::Application<Gateway>;

pub struct Gateway {
    config: Config,
    state: Data<AppState>,
    metrics: Data<Metrics>,
    verifier: Data<JwtVerifier>,
    docs: Data<ApiDocs>,
}

impl Service for Gateway {
    type Settings = Config;
    const NAME: &'static str = "gateway";
    const API_TITLE: &'static str = "Commerce API";
    const MIGRATIONS: db::Migrations = db::Migrations::new(
        db::Runtime::Outbox,
        embed_migrations!("../../db/migrations/gateway"),
    );

    async fn new(config: &Config, context: Context<'_>) -> anyhow::Result<Self> {
        let (issuer, verifier) = TokenIssuer::from_config(&config.auth)?;
        let hasher = PasswordHasher::new(config.auth.bcrypt_cost).await?;
        let metrics = Arc::new(Metrics::register(context.registry));
        let state = Data::new(AppState {
            hasher,
            issuer,
            throttle: LoginThrottle::new(&config.login_throttle),
            rate_limits: RateLimits::new(&config.rate_limit),
            clients: ClientAddresses::new(&config.rate_limit.trusted_proxies)?,
            upstreams: config.upstreams.clone(),
            metrics: metrics.clone(),
        });
        Ok(Self {
            config: config.clone(),
            state,
            metrics: Data::from(metrics),
            verifier: Data::new(verifier),
            docs: Data::new(ApiDocs::new(&config.upstreams, config.proxy.spec_cache)),
        })
    }

    fn configure(&self, cfg: &mut aweb::ServiceConfig) {
        let edge_verifier = self
            .config
            .auth
            .verify_at_edge
            .then(|| self.verifier.get_ref().clone());
        cfg.app_data(self.state.clone())
            .app_data(self.metrics.clone())
            .app_data(self.verifier.clone())
            .app_data(self.docs.clone())
            .app_data(ProxyClient::new(&self.config.proxy, edge_verifier));
        for (prefix, name) in proxy::ROUTES {
            let base = self
                .config
                .upstreams
                .all()
                .into_iter()
                .find(|(n, _)| *n == name);
            let base = base.expect("every route names a configured upstream").1;
            let upstream = Upstream {
                name,
                base: Rc::from(base.trim_end_matches('/')),
            };
            cfg.service(
                aweb::resource([prefix.to_owned(), format!("{prefix}/{{tail:.*}}")])
                    .app_data(upstream)
                    .to(proxy::forward),
            );
        }
        cfg.route(
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
                .to(service::unknown_route),
        )
        .route("/openapi.json", aweb::get().to(docs::openapi))
        .route("/swagger-ui.html", aweb::get().to(docs::swagger_ui));
    }

    fn api(&self, cfg: &mut ServiceConfig<'_>) {
        cfg.service(web::resource("/api/register").route(web::post().to(auth::register)))
            .service(web::resource("/api/login").route(web::post().to(auth::login)))
            .service(web::resource("/api/me").route(web::get().to(me::me)))
            .service(web::resource("/api/health").route(web::get().to(health::api_health)));
    }

    /// The gateway's own operations go into the merged document at
    /// `/openapi.json` (routes::docs), and on their own at
    /// `/openapi/gateway.json`; Swagger UI shows the merged one.
    fn document<T: AppFactory>(&self, app: paperclip::actix::App<T>) -> paperclip::actix::App<T> {
        let docs = self.docs.clone();
        app.with_raw_json_spec_v3(move |app, spec| {
            docs.set_gateway(spec);
            app
        })
        .with_json_spec_v3_at("/openapi/gateway.json")
        .with_swagger_ui_at(docs::SWAGGER_ASSETS)
    }

    /// JSON 405s; `X-Request-Id` on every request, response and log line;
    /// no caching of the credential endpoints' answers.
    fn wrap(app: App<impl AppFactory<Body = BoxBody>>) -> App<impl AppFactory> {
        app.wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
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
    }
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
