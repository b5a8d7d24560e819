//! The web server: one router, handlers that only serialise the [`Live`] snapshot (or call
//! an action), the page's assets embedded in the binary.
//!
//! Access: on a loopback address (the default) requests must name a loopback host (a DNS
//! rebinding page cannot read the workspace); elsewhere only with
//! [`Options::allow_remote`], and then every request (the event stream included) must carry
//! the token generated at start: `?token=` once (answered with a cookie), the cookie, or
//! `Authorization: Bearer`. Actions need [`Options::allow_actions`], a JSON body and, when
//! the browser sends one, an `Origin` equal to the host.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maos_core::{AgentId, Workspace};
use serde::Deserialize;
use tokio::sync::watch;

use crate::live::{Live, Picture};
use crate::snapshot::{Changed, ViewQuery};
use crate::stores::{Remote, Stores};
use crate::{Error, Result, actions};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The cookie carrying the token.
const COOKIE: &str = "maos_dashboard_token";

/// The default address: loopback, port 7420.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// Tasks drawn in the pictures by default (a window around the critical path beyond).
pub const DEFAULT_PICTURE_TASKS: usize = 150;

/// How to serve.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Allow a non-loopback address (then a token is required).
    pub allow_remote: bool,
    /// Allow the actions (release a dead agent's lock, reset a failed task, resolve a
    /// deadlock).
    pub allow_actions: bool,
    /// The agent the dashboard reads and acts as.
    pub actor: AgentId,
}

impl Options {
    /// Loopback on the default port, read-only, acting as `actor`.
    pub fn new(actor: AgentId) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            allow_remote: false,
            allow_actions: false,
            actor,
        }
    }
}

#[derive(Clone)]
struct AppState {
    live: Live,
    ws: Workspace,
    actor: AgentId,
    token: Option<Arc<str>>,
    allow_actions: bool,
    loopback: bool,
    shutdown: watch::Receiver<bool>,
}

/// A bound dashboard server, ready to [`serve`](Server::serve).
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: Option<String>,
    state: AppState,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// A fresh random token (two v4 UUIDs: 244 random bits).
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Server {
    /// Checks the options, binds the socket and takes the first snapshot.
    ///
    /// # Errors
    /// [`Error::NotLoopback`] for a non-loopback address without `allow_remote`;
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn bind(ws: &Workspace, options: Options) -> Result<Self> {
        Self::bind_with(ws, options, None).await
    }

    /// [`Server::bind`] for a workspace whose state is on a server ([`Live::start_remote`]):
    /// the same page, snapshot and actions, through `remote`'s stores.
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub async fn bind_remote(ws: &Workspace, options: Options, remote: Remote) -> Result<Self> {
        Self::bind_with(ws, options, Some(remote)).await
    }

    async fn bind_with(ws: &Workspace, options: Options, remote: Option<Remote>) -> Result<Self> {
        let loopback = options.listen.ip().is_loopback();
        if !loopback && !options.allow_remote {
            return Err(Error::NotLoopback {
                addr: options.listen,
            });
        }
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: options.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
        let token = (!loopback).then(new_token);
        let live = match remote {
            Some(r) => Live::start_remote(ws, options.actor.clone(), r).await?,
            None => Live::start(ws, options.actor.clone()).await?,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        Ok(Self {
            listener,
            addr,
            state: AppState {
                live,
                ws: ws.clone(),
                actor: options.actor,
                token: token.as_deref().map(Arc::from),
                allow_actions: options.allow_actions,
                loopback,
                shutdown: shutdown_rx,
            },
            token,
            shutdown,
        })
    }

    /// The address listened on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token every request must carry (only when not on loopback).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The URL to open (with the token, when one is required: print it once).
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// The live snapshot served.
    pub fn live(&self) -> &Live {
        &self.state.live
    }

    /// Serves until `shutdown` completes; open event streams are ended then.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let app = router(self.state);
        let stop = self.shutdown;
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
        .map_err(Error::Serve)
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/api/view", get(view))
        .route("/api/snapshot", get(snapshot))
        .route("/api/graph.svg", get(graph_svg))
        .route("/api/gantt.svg", get(gantt_svg))
        .route("/api/events", get(events))
        .route("/api/actions/release-lock", post(release_lock))
        .route("/api/actions/reset-task", post(reset_task))
        .route("/api/actions/resolve-deadlock", post(resolve_deadlock))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Access

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

/// Constant-time comparison (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(q: Option<&str>) -> Option<&str> {
    q?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

fn cookie_token(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn bearer_token(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Whether `host` (a Host header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    ) || name
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if s.loopback && !loopback_host(&host) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "host {host:?} is not a loopback name: open the dashboard as http://127.0.0.1:PORT/"
            ),
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &s.token {
        let from_query = query_token(req.uri().query());
        let given = from_query
            .or_else(|| cookie_token(headers))
            .or_else(|| bearer_token(headers));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "this dashboard needs its token: open the URL it printed at start (with ?token=)",
            );
        }
        if from_query.is_some() {
            set_cookie = Some(format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            ));
            if req.uri().path() == "/" {
                // Drop the token from the address bar and the history.
                let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    r.headers_mut().insert(header::SET_COOKIE, c);
                }
                return r;
            }
        }
    }
    if req.method() == axum::http::Method::POST
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && origin != format!("http://{host}")
    {
        return error(
            StatusCode::FORBIDDEN,
            format!("actions are only accepted from the dashboard's own page, not from {origin:?}"),
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page")
}

async fn view(State(s): State<AppState>, Query(q): Query<ViewQuery>) -> Response {
    let snap = s.live.snapshot();
    let mut v = serde_json::to_value(snap.view(&q)).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("actions".into(), s.allow_actions.into());
        o.insert("actor".into(), s.actor.as_str().into());
    }
    axum::Json(v).into_response()
}

async fn snapshot(State(s): State<AppState>) -> Response {
    axum::Json(&*s.live.snapshot()).into_response()
}

#[derive(Debug, Deserialize)]
struct PictureQuery {
    limit: Option<usize>,
}

async fn picture(s: &AppState, kind: Picture, q: &PictureQuery) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_PICTURE_TASKS).clamp(1, 2000);
    match s.live.picture(kind, limit).await {
        Ok(svg) => (
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            svg.as_str().to_owned(),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn graph_svg(State(s): State<AppState>, Query(q): Query<PictureQuery>) -> Response {
    picture(&s, Picture::Graph, &q).await
}

async fn gantt_svg(State(s): State<AppState>, Query(q): Query<PictureQuery>) -> Response {
    picture(&s, Picture::Gantt, &q).await
}

/// Server-sent events: `version` with the current version at once, then one per new
/// snapshot; the page fetches `/api/view` on each. Ends when the server shuts down.
async fn events(
    State(s): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<Event, Infallible>>> {
    let rx = s.live.subscribe();
    let stop = s.shutdown.clone();
    let stream =
        futures_util::stream::unfold((rx, stop, true), |(mut rx, mut stop, first)| async move {
            if *stop.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    r = rx.changed() => r.ok()?,
                    _ = stop.wait_for(|v| *v) => return None,
                }
            }
            let v = *rx.borrow_and_update();
            let ev = Event::default()
                .event("version")
                .retry(Duration::from_millis(1000))
                .data(format!("{{\"version\":{v}}}"));
            Some((Ok(ev), (rx, stop, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Debug, Deserialize)]
struct ReleaseLock {
    resource: String,
    owner: String,
    token: u64,
}

#[derive(Debug, Deserialize)]
struct ResetTask {
    id: String,
}

async fn act(
    s: &AppState,
    from: SocketAddr,
    f: impl FnOnce(&Stores, &AgentId, Option<String>) -> Result<actions::ActionRecord> + Send + 'static,
) -> Response {
    if !s.allow_actions {
        return error(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: start it with --allow-actions to act from the page",
        );
    }
    let ws = s.ws.clone();
    let actor = s.actor.clone();
    let stores = s.live.stores().cloned();
    let r = crate::asyncify("an action", move || {
        // On the files, opened for each action (as the CLI does for each command).
        let stores = match stores {
            Some(st) => st,
            None => Stores::files(&ws, &actor)?,
        };
        f(&stores, &actor, Some(from.to_string()))
    })
    .await;
    s.live.hint(Changed::all());
    match r {
        Ok(Ok(rec)) => axum::Json(rec).into_response(),
        Ok(Err(e @ Error::Refused { .. })) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn release_lock(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::Json(b): axum::Json<ReleaseLock>,
) -> Response {
    act(&s, from, move |st, actor, from| {
        actions::release_lock_in(st, actor, &b.resource, &b.owner, b.token, from)
    })
    .await
}

async fn reset_task(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::Json(b): axum::Json<ResetTask>,
) -> Response {
    act(&s, from, move |st, actor, from| {
        actions::reset_task_in(st, actor, &b.id, from)
    })
    .await
}

async fn resolve_deadlock(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    act(&s, from, actions::resolve_deadlock_in).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:7420",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.3.4.5",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:7420",
            "10.0.0.1",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn tokens_are_found_and_compared() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; maos_dashboard_token=t0k"),
        );
        assert_eq!(cookie_token(&h), Some("t0k"));
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
    }
}
