// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The abstraction and implementation interface for service application logic

pub mod http_app;

use crate::server::ShutdownWatch;
use async_trait::async_trait;
use bytes::BytesMut;
use log::{debug, error};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::protocols::http::v2::server;
use crate::protocols::http::{ReusableHttpStream, ServerSession};
use crate::protocols::Digest;
use crate::protocols::Stream;
use crate::protocols::ALPN;

// https://datatracker.ietf.org/doc/html/rfc9113#section-3.4
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
/// This trait defines the interface of a transport layer (TCP or TLS) application.
pub trait ServerApp {
    /// Whenever a new connection is established, this function will be called with the established
    /// [`Stream`] object provided.
    ///
    /// The application can do whatever it wants with the `session`.
    ///
    /// After processing the `session`, if the `session`'s connection is reusable, This function
    /// can return it to the service by returning `Some(session)`. The returned `session` will be
    /// fed to another [`Self::process_new()`] for another round of processing.
    /// If not reusable, `None` should be returned.
    ///
    /// The `shutdown` argument will change from `false` to `true` when the server receives a
    /// signal to shutdown. This argument allows the application to react accordingly.
    async fn process_new(
        self: &Arc<Self>,
        mut session: Stream,
        // TODO: make this ShutdownWatch so that all task can await on this event
        shutdown: &ShutdownWatch,
    ) -> Option<Stream>;

    /// This callback will be called once after the service stops listening to its endpoints.
    async fn cleanup(&self) {}
}
#[non_exhaustive]
#[derive(Clone, Debug, Default)]
/// HTTP Server options that control how the server handles some transport types.
pub struct HttpServerOptions {
    /// Allow HTTP/2 for plaintext.
    pub h2c: bool,

    /// Allow proxying CONNECT requests when handling HTTP traffic.
    ///
    /// When disabled, CONNECT requests are rejected with 405 by proxy services.
    pub allow_connect_method_proxying: bool,

    #[doc(hidden)]
    pub force_custom: bool,

    /// Maximum number of requests that this connection will handle. This is
    /// equivalent to [Nginx's keepalive requests](https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive_requests)
    /// which says:
    ///
    /// > Closing connections periodically is necessary to free per-connection
    /// > memory allocations. Therefore, using too high maximum number of
    /// > requests could result in excessive memory usage and not recommended.
    ///
    /// Unlike nginx, the default behavior here is _no limit_.
    pub keepalive_request_limit: Option<u32>,

    /// If set, close a downstream HTTP/2 connection that has been idle
    /// for this duration.
    ///
    /// Default: `None`
    pub h2_idle_timeout: Option<Duration>,

    /// If set, the longest an HTTP/1.x client may take to send a whole request header: for a
    /// connection's first request counted from when the connection is handed to this app
    /// (silence included), for later requests from their first byte (the keepalive timeout
    /// limits the silence between requests). A connection past it is closed: quietly when it
    /// has sent nothing of the request, with a `ReadTimedout` error otherwise. Without it,
    /// only each read is limited (by the keepalive or read timeout), so a client sending one
    /// byte just inside that timeout holds its connection for ever ("slowloris").
    ///
    /// Default: `None`
    pub h1_header_read_timeout: Option<Duration>,
}

/// Settings persisted across HTTP/1.x keepalive requests on the same downstream connection.
///
/// In addition to framework-managed keepalive parameters, this struct can carry an optional
/// user-defined context via [`set_user_context`](Self::set_user_context). The proxy layer
/// populates this through `ProxyHttp::persist_connection_context`
/// and delivers it to the next request through `ProxyHttp::on_connection_reuse`.
///
/// Also carries pipelined-prefix bytes when the caller has opted into HTTP/1.1
/// pipelining on the previous session. See
/// [`Self::set_pipelined_prefix`] and the
/// [`HttpSession::set_pipelining_enabled`](crate::protocols::http::v1::server::HttpSession::set_pipelining_enabled)
/// docs for the RFC 9112 §9.3.2 semantics.
#[derive(Debug)]
pub struct HttpPersistentSettings {
    keepalive_timeout: Option<u64>,
    keepalive_reuses_remaining: Option<u32>,
    /// User-defined context to carry to the next request on this connection.
    user_context: Option<Box<dyn Any + Send + Sync>>,
    /// Bytes read past the end of the previous request's body, to be parsed
    /// as the next pipelined request on the reused connection.
    pipelined_prefix: Option<BytesMut>,
    /// Whether HTTP/1.1 pipelining was enabled on the previous session;
    /// propagates to the next session so the proxy-level opt-in sticks
    /// across keepalive reuses without the adopter having to re-enable
    /// it on every request.
    pipelining_enabled: bool,
}

impl HttpPersistentSettings {
    pub fn for_session(session: &ServerSession) -> Self {
        HttpPersistentSettings {
            keepalive_timeout: session.get_keepalive(),
            keepalive_reuses_remaining: session.get_keepalive_reuses_remaining(),
            user_context: None,
            pipelined_prefix: None,
            pipelining_enabled: session.pipelining_enabled(),
        }
    }

    /// Set a user-defined context to be carried to the next request on this connection.
    pub fn set_user_context(&mut self, ctx: Box<dyn Any + Send + Sync>) {
        self.user_context = Some(ctx);
    }

    /// Take the user-defined context, if any.
    pub fn take_user_context(&mut self) -> Option<Box<dyn Any + Send + Sync>> {
        self.user_context.take()
    }

    /// Set pipelined-prefix bytes to be fed to the next session on this
    /// connection. Called by the proxy layer when HTTP/1.1 pipelining is
    /// enabled on the current session and overread bytes were present at
    /// reuse time.
    pub fn set_pipelined_prefix(&mut self, prefix: BytesMut) {
        self.pipelined_prefix = Some(prefix);
    }

    pub fn apply_to_session(self, session: &mut ServerSession) {
        let Self {
            keepalive_timeout,
            mut keepalive_reuses_remaining,
            user_context,
            pipelined_prefix,
            pipelining_enabled,
        } = self;

        // Reduce the number of times the connection for this session can be
        // reused by one. A session with reuse count of zero won't be reused
        if let Some(reuses) = keepalive_reuses_remaining.as_mut() {
            *reuses = reuses.saturating_sub(1);
        }

        session.set_keepalive(keepalive_timeout);
        session.set_keepalive_reuses_remaining(keepalive_reuses_remaining);

        // Carry user context into the session for the proxy layer to consume
        session.set_connection_user_context(user_context);

        // Replay pipelining opt-in so it stays on across keepalive reuses.
        session.set_pipelining_enabled(pipelining_enabled);

        // Feed any pipelined prefix bytes to the new session's request parser
        // so they are treated as the start of the next request.
        if let Some(prefix) = pipelined_prefix {
            session.set_pipelined_prefix(prefix);
        }
    }
}

#[derive(Debug)]
pub struct ReusedHttpStream {
    stream: Stream,
    persistent_settings: Option<HttpPersistentSettings>,
}

impl ReusedHttpStream {
    pub fn new(stream: Stream, persistent_settings: Option<HttpPersistentSettings>) -> Self {
        ReusedHttpStream {
            stream,
            persistent_settings,
        }
    }

    /// Build a reusable HTTP stream from a finished session, preserving any
    /// pipelined prefix bytes in the persistent settings for the next request.
    pub fn from_reusable_stream(
        reusable: ReusableHttpStream,
        mut persistent_settings: HttpPersistentSettings,
    ) -> Self {
        let (stream, pipelined_prefix) = reusable.into_parts();
        if let Some(prefix) = pipelined_prefix {
            persistent_settings.set_pipelined_prefix(prefix);
        }
        Self::new(stream, Some(persistent_settings))
    }

    pub fn consume(self) -> (Stream, Option<HttpPersistentSettings>) {
        (self.stream, self.persistent_settings)
    }
}

/// This trait defines the interface of an HTTP application.
#[async_trait]
pub trait HttpServerApp {
    /// Similar to the [`ServerApp`], this function is called whenever a new HTTP session is established.
    ///
    /// After successful processing, [`ServerSession::finish()`] can be
    /// called to return an optionally reusable connection back to the service.
    /// The caller needs to make sure that the connection is in a reusable state
    /// i.e., no error or incomplete read or write headers or bodies. Otherwise
    /// a `None` should be returned.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        // TODO: make this ShutdownWatch so that all task can await on this event
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream>;

    /// Provide options on how HTTP/2 connection should be established. This function will be called
    /// every time a new HTTP/2 **connection** needs to be established.
    ///
    /// A `None` means to use the built-in default options. See [`server::H2Options`] for more details.
    fn h2_options(&self) -> Option<server::H2Options> {
        None
    }

    /// Provide HTTP server options used to override default behavior. This function will be called
    /// every time a new connection is processed.
    ///
    /// A `None` means no server options will be applied.
    fn server_options(&self) -> Option<&HttpServerOptions> {
        None
    }

    async fn http_cleanup(&self) {}

    #[doc(hidden)]
    async fn process_custom_session(
        self: Arc<Self>,
        _stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        None
    }
}

/// The HTTP/1.x session for the first request of a connection.
fn first_http1_session(
    stream: Stream,
    keepalive: Option<u64>,
    reuses: Option<u32>,
    header_timeout: Option<Duration>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(keepalive);
    session.set_keepalive_reuses_remaining(reuses);
    session.set_header_read_timeout(header_timeout);
    session
}

/// The HTTP/1.x session for the next request of a reused connection.
fn next_http1_session(
    stream: Stream,
    persistent_settings: Option<HttpPersistentSettings>,
    header_timeout: Option<Duration>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    if let Some(persistent_settings) = persistent_settings {
        persistent_settings.apply_to_session(&mut session);
    }
    session.set_header_read_timeout(header_timeout);
    session
}

/// Waits until a keepalive connection has the first bytes of its next request (or EOF or an
/// error, which the session's read then reports), the service starts shutting down, or the
/// stream cannot tell. `false` when the keepalive timeout (`Some(seconds)`, `Some(0)` for none)
/// passed first: the connection is to be closed, as the session's own read would have done.
/// With keepalive off (`None`) it returns at once and the session's read timeout applies.
///
/// tokio may report a socket that has not been read from yet as readable when it is not; the
/// wait then ends at once and the session reads (and waits) as it did without this function.
/// So before a connection's first request the wait often does nothing; between keepalive
/// requests the previous request's read has cleared that readiness.
async fn wait_for_next_request(
    stream: &mut Stream,
    keepalive: Option<u64>,
    shutdown: &ShutdownWatch,
) -> bool {
    let limit = match keepalive {
        None => return true,
        Some(0) => None,
        Some(seconds) => Some(Duration::from_secs(seconds)),
    };
    if *shutdown.borrow() {
        return true;
    }
    let mut shutdown = shutdown.clone();
    let wait = async {
        tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => {}
            // The session handles a shutdown while it waits (the proxy closes idle connections
            // on its own cleanup signal), so hand the connection over to it.
            _ = shutdown.changed() => {}
        }
    };
    match limit {
        Some(limit) => pingora_timeout::timeout(limit, wait).await.is_ok(),
        None => {
            wait.await;
            true
        }
    }
}

#[async_trait]
impl<T> ServerApp for T
where
    T: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut h2c = self.server_options().as_ref().map_or(false, |o| o.h2c);
        let custom = self
            .server_options()
            .as_ref()
            .map_or(false, |o| o.force_custom);

        // h2c is for cleartext connections; on TLS, ALPN handles protocol negotiation.
        // Otherwise, h2c stays true on TLS streams, forcing HTTP/1.1 clients into HTTP/2
        if stream.get_ssl_digest().is_some() {
            h2c = false;
        }
        // try to read h2 preface
        else if h2c && !custom {
            let mut buf = [0u8; H2_PREFACE.len()];
            let peeked = stream
                .try_peek(&mut buf)
                .await
                .map_err(|e| {
                    // this error is normal when h1 reuse and close the connection
                    debug!("Read error while peeking h2c preface {e}");
                    e
                })
                .ok()?;
            // not all streams support peeking
            if peeked {
                // turn off h2c (use h1) if h2 preface doesn't exist
                h2c = buf == H2_PREFACE;
            }
        }
        if h2c || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // create a shared connection digest
            let digest = Arc::new(Digest {
                ssl_digest: stream.get_ssl_digest(),
                // TODO: log h2 handshake time
                timing_digest: stream.get_timing_digest(),
                proxy_digest: stream.get_proxy_digest(),
                socket_digest: stream.get_socket_digest(),
            });

            let h2_options = self.h2_options();
            // The HTTP/2 handshake and accept loop are boxed so that their state does not
            // size this future, which an idle HTTP/1.x connection holds too.
            let h2_conn = match Box::pin(server::handshake(stream, h2_options)).await {
                Err(e) => {
                    error!("H2 handshake error {e}");
                    return None;
                }
                Ok(c) => c,
            };

            // The accept-loop body — including the graceful-shutdown state
            // machine — lives in `server::accept_downstream_sessions` so that
            // the same code path is exercised by tests in `protocols::http::v2`.
            let app = self.clone();
            let shutdown_for_session = shutdown.clone();
            let h2_idle_timeout = self.server_options().and_then(|o| o.h2_idle_timeout);
            Box::pin(server::accept_downstream_sessions(
                h2_conn,
                digest,
                shutdown.clone(),
                h2_idle_timeout,
                |h2_stream, guard| {
                    let app = app.clone();
                    let shutdown = shutdown_for_session.clone();
                    pingora_runtime::current_handle().spawn(async move {
                        // hold `guard` for the session's lifetime so the accept
                        // loop's idle timeout sees this connection as busy.
                        let _guard = guard;
                        // Note, `PersistentSettings` not currently relevant for h2
                        app.process_new_http(ServerSession::new_http2(h2_stream), &shutdown)
                            .await;
                    });
                },
            ))
            .await;
        } else if custom || matches!(stream.selected_alpn_proto(), Some(ALPN::Custom(_))) {
            return self.clone().process_custom_session(stream, shutdown).await;
        } else {
            // No ALPN or ALPN::H1 and h2c was not configured, fallback to HTTP/1.1
            // stop downstream from reusing if this service is shutting down soon, else 60s
            let keepalive = if *shutdown.borrow() { None } else { Some(60) };
            let header_timeout = self
                .server_options()
                .and_then(|opts| opts.h1_header_read_timeout);
            let accepted = std::time::Instant::now();
            // As between keepalive requests below: a connection that sends nothing yet holds
            // only its stream. The first request's header deadline counts this wait too.
            let first = wait_for_next_request(&mut stream, keepalive, shutdown);
            let first = match header_timeout {
                Some(limit) => pingora_timeout::timeout(limit, first)
                    .await
                    .unwrap_or(false),
                None => first.await,
            };
            if !first {
                debug!("keepalive or header read timeout reached before the first request");
                return None;
            }
            let header_timeout_left =
                header_timeout.map(|limit| limit.saturating_sub(accepted.elapsed()));
            // The sessions are built in plain functions, not as locals here, so that this
            // future (held for the connection's whole life) has no room for one.
            let reuses = self
                .server_options()
                .and_then(|opts| opts.keepalive_request_limit);
            let mut result = self
                .process_new_http(
                    first_http1_session(stream, keepalive, reuses, header_timeout_left),
                    shutdown,
                )
                .await;
            while let Some((mut stream, persistent_settings)) = result.map(|r| r.consume()) {
                // Wait for the next request here, holding only the stream, rather than inside
                // `process_new_http`, whose state (the whole request's future) would otherwise
                // stay allocated for as long as the connection is idle.
                let pipelined = persistent_settings
                    .as_ref()
                    .is_some_and(|s| s.pipelined_prefix.as_ref().is_some_and(|p| !p.is_empty()));
                if !pipelined {
                    let keepalive = persistent_settings
                        .as_ref()
                        .and_then(|s| s.keepalive_timeout);
                    if !wait_for_next_request(&mut stream, keepalive, shutdown).await {
                        debug!("keepalive timeout reached while idle");
                        return None;
                    }
                }
                result = self
                    .process_new_http(
                        next_http1_session(stream, persistent_settings, header_timeout),
                        shutdown,
                    )
                    .await;
            }
        }
        None
    }

    async fn cleanup(&self) {
        self.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;
    use tokio_test::io::Builder;

    /// A connected TCP pair as a keepalive connection after its first request: the accepted
    /// side as an L4 stream, whose last read took everything the client had sent, and the
    /// client side. (Before its first read, tokio may report a socket readable that is not.)
    async fn tcp_pair() -> (crate::protocols::l4::stream::Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET /first HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /first HTTP/1.1\r\n\r\n");
        (server.into(), client)
    }

    #[tokio::test]
    async fn wait_for_next_request_returns_when_bytes_arrive_and_consumes_none() {
        let (stream, mut client) = tcp_pair().await;
        let mut stream: Stream = Box::new(stream);
        let (_tx, shutdown) = watch::channel(false);
        let waiter = tokio::spawn(async move {
            let arrived = wait_for_next_request(&mut stream, Some(60), &shutdown).await;
            (arrived, stream)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "returned before any byte arrived");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (arrived, mut stream) = waiter.await.unwrap();
        assert!(arrived);
        let mut buf = [0u8; 16];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn wait_for_next_request_times_out_on_an_idle_connection() {
        let (stream, _client) = tcp_pair().await;
        let mut stream: Stream = Box::new(stream);
        let (_tx, shutdown) = watch::channel(false);
        assert!(!wait_for_next_request(&mut stream, Some(1), &shutdown).await);
    }

    #[tokio::test]
    async fn wait_for_next_request_returns_on_eof() {
        let (stream, client) = tcp_pair().await;
        let mut stream: Stream = Box::new(stream);
        let (_tx, shutdown) = watch::channel(false);
        drop(client);
        assert!(wait_for_next_request(&mut stream, Some(60), &shutdown).await);
        let mut buf = [0u8; 1];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn wait_for_next_request_hands_over_on_shutdown() {
        let (stream, _client) = tcp_pair().await;
        let mut stream: Stream = Box::new(stream);
        let (tx, shutdown) = watch::channel(false);
        let waiter =
            tokio::spawn(
                async move { wait_for_next_request(&mut stream, Some(60), &shutdown).await },
            );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        tx.send(true).unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn wait_for_next_request_sees_rewound_bytes_and_skips_without_keepalive() {
        let (mut stream, _client) = tcp_pair().await;
        stream.rewind(b"GET");
        let mut stream: Stream = Box::new(stream);
        let (_tx, shutdown) = watch::channel(false);
        assert!(wait_for_next_request(&mut stream, Some(60), &shutdown).await);

        let (stream, _client) = tcp_pair().await;
        let mut stream: Stream = Box::new(stream);
        // Keepalive off: the session's read timeout applies, so no wait here.
        assert!(wait_for_next_request(&mut stream, None, &shutdown).await);
    }

    #[tokio::test]
    async fn wait_for_next_request_passes_streams_that_cannot_tell() {
        let mut stream: Stream = Box::new(Builder::new().build());
        let (_tx, shutdown) = watch::channel(false);
        assert!(wait_for_next_request(&mut stream, Some(60), &shutdown).await);
    }

    #[test]
    fn test_persistent_settings_user_context_roundtrip() {
        // Create a mock H1 session
        let mock_io = Builder::new().build();
        let mut session = ServerSession::new_http1(Box::new(mock_io));
        session.set_keepalive(Some(60));

        // Snapshot settings (no user context yet)
        let mut settings = HttpPersistentSettings::for_session(&session);
        assert!(settings.take_user_context().is_none());

        // Set user context
        settings.set_user_context(Box::new(123u64));

        // Apply to a fresh session -- user context should transfer
        let mock_io2 = Builder::new().build();
        let mut session2 = ServerSession::new_http1(Box::new(mock_io2));
        settings.apply_to_session(&mut session2);

        // The user context should now be on the session
        let ctx = session2.take_connection_user_context();
        assert!(ctx.is_some());
        let val = ctx.unwrap().downcast::<u64>().unwrap();
        assert_eq!(*val, 123u64);

        // Keepalive should also have been applied
        assert_eq!(session2.get_keepalive(), Some(60));
    }

    #[test]
    fn test_persistent_settings_no_user_context_by_default() {
        let mock_io = Builder::new().build();
        let mut session = ServerSession::new_http1(Box::new(mock_io));
        session.set_keepalive(Some(30));

        let settings = HttpPersistentSettings::for_session(&session);

        let mock_io2 = Builder::new().build();
        let mut session2 = ServerSession::new_http1(Box::new(mock_io2));
        settings.apply_to_session(&mut session2);

        // No user context should be present
        assert!(session2.take_connection_user_context().is_none());
        // Keepalive should still work
        assert_eq!(session2.get_keepalive(), Some(30));
    }
}
